"""DiReg: harmful-data, finetune, harm-vector."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from prosocial_jax.cli.common import (
    CONFIG_HELP,
    add_model_args,
    add_overwrite_arg,
    apply_config,
    check_out_and_checkpoints,
    floats,
    require,
    write_report,
)
from prosocial_jax.data import prompts as prompt_sets


def _harmful_data_parser(sub) -> None:
    p = sub.add_parser("harmful-data", help="the model's own answers to HarmBench behaviours",
                       description="Generates SFT rows from a model's compliant answers to "
                       "HarmBench behaviours (refusals dropped). Written outside the repository.")
    add_model_args(p)
    p.add_argument("--split", default="val", choices=prompt_sets.HARMBENCH_SPLITS)
    p.add_argument("--samples", type=int, default=3,
                   help="answers per behaviour: one greedy, the rest sampled (default 3)")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--max-new-tokens", type=int, default=160)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="JSONL path (default: the cache folder)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def _finetune_parser(sub) -> None:
    from prosocial_jax.direg.finetune import FinetuneSettings

    p = sub.add_parser("finetune", help="supervised fine-tuning (full or LoRA, merged back)",
                       description="Fine-tunes on (prompt, response) rows through the chat "
                       "template, loss on response tokens only; resumes from --checkpoint-dir.",
                       epilog=CONFIG_HELP.replace("generate.temperature=0.7",
                                                  "finetune.steps=200"))
    add_model_args(p)
    p.add_argument("--data", help="local JSONL/Parquet/CSV file or hf://owner/name[@revision]")
    p.add_argument("--split", default="train", help="split of an hf:// data set")
    p.add_argument("--out", type=Path, help="HF folder for the fine-tuned model")
    p.add_argument("--checkpoint-dir", type=Path, help="orbax checkpoints + metrics.jsonl")
    add_overwrite_arg(p, "model")
    for field in dataclasses.fields(FinetuneSettings):  # one flag per setting
        is_list = isinstance(field.default, tuple)
        default = ",".join(field.default) if is_list else field.default
        p.add_argument(f"--{field.name.replace('_', '-')}",
                       type=str if is_list else type(field.default), help=f"default {default}")


def _harm_vector_parser(sub) -> None:
    p = sub.add_parser("harm-vector", help="DiReg: subtract a trimmed harm vector, or sweep it",
                       description="theta' = base - scale * top_k(harmful - base). Writes an HF "
                       "folder plus harm_vector.json; with --sweep, evaluates many settings on "
                       "HarmBench and benign prompts and plots the trade-off.")
    p.add_argument("--base", required=True, help="base checkpoint")
    p.add_argument("--harmful", required=True, help="harmful fine-tune of the base")
    p.add_argument("--out", type=Path, required=True,
                   help="edited HF folder; with --sweep, the report folder")
    p.add_argument("--top-k", default="0.1",
                   help="fraction of |tau| entries kept (comma list with --sweep)")
    p.add_argument("--scale", default="3.0",
                   help="lambda (comma list with --sweep, e.g. 0.5,1,2,3)")
    p.add_argument("--include", action="append", help="fnmatch pattern over HF tensor names "
                   "(repeatable; default: every floating-point parameter)")
    p.add_argument("--exclude", action="append", help="fnmatch pattern to leave out")
    p.add_argument("--dtype", default=None, help="load both models in this dtype")
    add_overwrite_arg(p, "harm-vector output (an edited model, or with --sweep a report)")
    p.add_argument("--sweep", action="store_true", help="evaluate every (top-k, scale) setting")
    p.add_argument("--harmful-split", default="test", choices=prompt_sets.HARMBENCH_SPLITS)
    p.add_argument("--harmful-limit", type=int, help="use only the first N behaviours")
    p.add_argument("--benign-limit", type=int, help="use only the first N benign prompts")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--generations-dir", type=Path,
                   help="where the sweep's generations go (default: the cache folder)")


def _cmd_harmful_data(args) -> int:
    import prosocial_jax as pj
    from prosocial_jax.direg import edit as direg
    from prosocial_jax.files import check_output_file

    require(args, "model")
    out = args.out or direg.cache_dir() / "direg" / f"harmful_{args.split}.jsonl"
    check_output_file(out, args.overwrite)
    model = pj.load_model(args.model, dtype=args.dtype, mesh=args.mesh)
    summary = direg.build_harmful_data(model, out, args.split, args.samples, args.temperature,
                                       args.max_new_tokens, args.seed)
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_finetune(args) -> int:
    import prosocial_jax as pj
    from prosocial_jax.data import rows as data
    from prosocial_jax.direg.finetune import FinetuneSettings, finetune, training_examples_summary
    from prosocial_jax.files import check_output_folder

    defaults = {f.name: f.default for f in dataclasses.fields(FinetuneSettings)}
    apply_config(args, args.config, "finetune", defaults,
                  top_level=("model", "dtype", "mesh", "data", "out", "checkpoint_dir"))
    require(args, "model", "data", "out", "checkpoint_dir")
    args.out, args.checkpoint_dir = Path(args.out), Path(args.checkpoint_dir)
    if isinstance(args.lora_targets, str):
        args.lora_targets = tuple(t.strip() for t in args.lora_targets.split(",") if t.strip())
    settings = FinetuneSettings(**{k: getattr(args, k) for k in defaults})
    check_out_and_checkpoints(args.out, args.checkpoint_dir)
    check_output_folder(args.out, "model", args.overwrite)  # before training, not after
    if args.distributed:
        import jax
        jax.distributed.initialize()
    model = pj.load_model(args.model, dtype=args.dtype, mesh=args.mesh)
    examples, skipped = data.load_sft(args.data, model.tokenizer, settings.max_len, args.split)
    if skipped.count:
        print(skipped.summary(str(args.data)), file=sys.stderr)
    print(f"training data: {json.dumps(training_examples_summary(examples))}", file=sys.stderr)
    tuned, history = finetune(model, examples, settings, args.checkpoint_dir)
    pj.save_model(tuned, args.out, overwrite=args.overwrite)
    if history:
        print(f"loss {history[0]['loss']:.3f} (step {history[0]['step']}) -> "
              f"{history[-1]['loss']:.3f} (step {history[-1]['step']}); wrote {args.out}",
              file=sys.stderr)
    return 0


def _cmd_harm_vector(args) -> int:
    import prosocial_jax as pj
    from prosocial_jax.direg import edit as direg
    from prosocial_jax.files import check_output_folder

    top_ks, scales = floats(args.top_k, "top-k"), floats(args.scale, "scale")
    check_output_folder(args.out, "sweep report" if args.sweep else "model", args.overwrite)
    base = pj.load_model(args.base, dtype=args.dtype)
    harmful = pj.load_model(args.harmful, dtype=args.dtype)
    if args.sweep:
        prompts = direg.SweepPrompts.standard(args.harmful_split, args.harmful_limit,
                                              args.benign_limit)
        generations = args.generations_dir or direg.cache_dir() / "direg" / "generations"
        rows = direg.sweep(base, harmful, top_ks, scales, prompts, generations,
                           args.max_new_tokens, args.batch_size, args.include, args.exclude)
        record = {"base": args.base, "harmful": args.harmful,
                  "harmful_prompts": f"HarmBench {args.harmful_split} standard "
                                     f"({len(prompts.harmful)})",
                  "benign_prompts": f"aplomb ({len(prompts.benign)})",
                  "max_new_tokens": args.max_new_tokens, "rows": rows}
        wrote = write_report(args.out, "sweep", record, direg.plot_sweep,
                             direg.format_table(rows), args.overwrite)
        print(f"{wrote}; generations in {generations}", file=sys.stderr)
        return 0
    if len(top_ks) != 1 or len(scales) != 1:
        raise ValueError("--top-k and --scale take one value each (lists need --sweep)")
    edited, record = direg.edit(base, harmful, top_ks[0], scales[0], args.include,
                                args.exclude, donate=True)
    pj.save_model(edited, args.out, overwrite=args.overwrite, extra=lambda folder: (
        folder / "harm_vector.json").write_text(json.dumps(record, indent=2)))
    print(json.dumps({k: v for k, v in record.items() if not k.startswith("per_layer")},
                     indent=2))
    return 0


def register(sub) -> dict:
    _harmful_data_parser(sub)
    _finetune_parser(sub)
    _harm_vector_parser(sub)
    return {"harmful-data": _cmd_harmful_data, "finetune": _cmd_finetune,
            "harm-vector": _cmd_harm_vector}
