"""DiReg: harmful-data, finetune, harm-vector."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from prosocial_jax import settings
from prosocial_jax.cli.common import (
    MODEL,
    add_distributed_flag,
    add_overwrite_arg,
    add_restart_flag,
    check_hf_split,
    check_out_and_checkpoints,
    initialize_distributed,
)
from prosocial_jax.cli.options import (
    Command,
    Section,
    add_command,
    report_given,
    require,
)
from prosocial_jax.direg.edit import EditSettings
from prosocial_jax.direg.finetune import FinetuneSettings
from prosocial_jax.direg.harmful_data import HarmfulDataSettings
from prosocial_jax.evaluation.reports import write_report
from prosocial_jax.evaluation.sweeps import SweepSettings


@dataclasses.dataclass(frozen=True)
class FinetuneInputs:
    """What `finetune` reads and writes (top level of a config file)."""

    data: str | None = dataclasses.field(default=None, metadata={
        "help": "local JSONL/Parquet/CSV file or hf://owner/name[@revision]"})
    split: str = dataclasses.field(default="train", metadata={
        "help": "split of an hf:// data set"})
    out: str | None = dataclasses.field(default=None, metadata={
        "help": "HF folder for the fine-tuned model"})
    checkpoint_dir: str | None = dataclasses.field(default=None, metadata={
        "help": "orbax checkpoints + metrics.jsonl"})

    def __post_init__(self):
        settings.coerce(self, "finetune inputs")


@dataclasses.dataclass(frozen=True)
class HarmVectorInputs:
    """The two checkpoints of `harm-vector` (top level of a config file)."""

    base: str | None = dataclasses.field(default=None, metadata={"help": "base checkpoint"})
    harmful: str | None = dataclasses.field(default=None, metadata={
        "help": "harmful fine-tune of the base"})
    dtype: str | None = dataclasses.field(default=None, metadata={
        "help": "load both models in this dtype (none: the checkpoints')"})

    def __post_init__(self):
        settings.coerce(self, "harm-vector inputs")


HARMFUL_DATA = (MODEL, Section("harmful_data", HarmfulDataSettings, key="harmful_data"))
FINETUNE = (MODEL, Section("data", FinetuneInputs, title="data and outputs"),
            Section("finetune", FinetuneSettings, key="finetune"))
HARM_VECTOR = (Section("inputs", HarmVectorInputs, title="checkpoints"),
               Section("edit", EditSettings, key="edit"),
               Section("sweep", SweepSettings, key="sweep",
                       title="sweep (with --sweep): prompts and decoding budget"))


def _harmful_data_parser(sub) -> dict:
    command = Command(_cmd_harmful_data, HARMFUL_DATA, config_example="harmful_data.samples=2")
    p = add_command(sub, "harmful-data", command,
                    help="the model's own answers to HarmBench behaviours",
                    description="Generates SFT rows from a model's compliant answers to "
                    "HarmBench behaviours (refusals dropped). Written outside the repository.")
    p.add_argument("--out", type=Path, help="JSONL path (default: the cache folder)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return {"harmful-data": command}


def _finetune_parser(sub) -> dict:
    command = Command(_cmd_finetune, FINETUNE, config_example="finetune.steps=200")
    p = add_command(sub, "finetune", command,
                    help="supervised fine-tuning (full or LoRA, merged back)",
                    description="Fine-tunes on (prompt, response) rows through the chat "
                    "template, loss on response tokens only; resumes from --checkpoint-dir.")
    add_overwrite_arg(p, "model")
    add_restart_flag(p)
    add_distributed_flag(p)
    return {"finetune": command}


def _harm_vector_parser(sub) -> dict:
    command = Command(_cmd_harm_vector, HARM_VECTOR, config_example="edit.scale=[1.0,2.0]")
    p = add_command(sub, "harm-vector", command,
                    help="DiReg: subtract a trimmed harm vector, or sweep it",
                    description="theta' = base - scale * top_k(harmful - base). Writes an HF "
                    "folder plus harm_vector.json; with --sweep, evaluates many settings on "
                    "HarmBench and benign prompts and plots the trade-off.")
    p.add_argument("--out", type=Path, required=True,
                   help="edited HF folder; with --sweep, the report folder")
    add_overwrite_arg(p, "harm-vector output (an edited model, or with --sweep a report)")
    p.add_argument("--sweep", action="store_true", help="evaluate every (top-k, scale) setting")
    p.add_argument("--generations-dir", type=Path,
                   help="where the sweep's generations go (default: the cache folder)")
    return {"harm-vector": command}


def _cmd_harmful_data(args) -> int:
    import prosocial_jax as pj
    from prosocial_jax.direg.harmful_data import build_harmful_data
    from prosocial_jax.files import cache_dir, check_output_file

    inputs, harmful_data = args.settings.inputs, args.settings.harmful_data
    require(inputs, "model")
    out = args.out or cache_dir() / "direg" / f"harmful_{harmful_data.split}.jsonl"
    check_output_file(out, args.overwrite)
    model = pj.load_model(inputs.model, dtype=inputs.dtype, mesh=inputs.mesh)
    summary = build_harmful_data(model, out, harmful_data)
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_finetune(args) -> int:
    import prosocial_jax as pj
    from prosocial_jax.data.sft import load_sft
    from prosocial_jax.direg.finetune import finetune, training_examples_summary
    from prosocial_jax.files import check_output_folder

    inputs, data, finetune_settings = (args.settings.inputs, args.settings.data,
                                       args.settings.finetune)
    require(inputs, "model")
    require(data, "data", "out", "checkpoint_dir")
    if finetune_settings.lora_rank == 0:
        report_given(args.given, ("finetune.lora_alpha", "finetune.lora_targets"),
                     "in a full fine-tune (lora_rank 0)", "finetune", "give --lora-rank above 0")
    check_hf_split(args, "data.split", [data.data], "finetune")
    out, checkpoint_dir = Path(data.out), Path(data.checkpoint_dir)
    check_out_and_checkpoints(out, checkpoint_dir)
    check_output_folder(out, "model", args.overwrite)  # before training, not after
    initialize_distributed(args)
    model = pj.load_model(inputs.model, dtype=inputs.dtype, mesh=inputs.mesh)
    examples, skipped = load_sft(data.data, model.tokenizer, finetune_settings.max_len,
                                 data.split)
    if skipped.count:
        print(skipped.summary(str(data.data)), file=sys.stderr)
    print(f"training data: {json.dumps(training_examples_summary(examples))}", file=sys.stderr)
    tuned, history = finetune(model, examples, finetune_settings, checkpoint_dir,
                              restart_on_change=args.restart_on_change)
    pj.save_model(tuned, out, overwrite=args.overwrite)
    if history:
        print(f"loss {history[0]['loss']:.3f} (step {history[0]['step']}) -> "
              f"{history[-1]['loss']:.3f} (step {history[-1]['step']}); wrote {out}",
              file=sys.stderr)
    return 0


def _cmd_harm_vector(args) -> int:
    import prosocial_jax as pj
    from prosocial_jax.direg.edit import edit, editor
    from prosocial_jax.evaluation import sweeps
    from prosocial_jax.files import cache_dir, check_output_folder

    inputs, edit_settings = args.settings.inputs, args.settings.edit
    require(inputs, "base", "harmful")
    include = edit_settings.include or None  # none given: every floating-point parameter
    exclude = edit_settings.exclude
    top_ks, scales = edit_settings.top_k, edit_settings.scale
    if not args.sweep and (len(top_ks) != 1 or len(scales) != 1):
        raise ValueError("--top-k and --scale take one value each (lists need --sweep)")
    if not args.sweep:
        given = {**args.given, **({"generations_dir": "--generations-dir"}
                                  if args.generations_dir is not None else {})}
        report_given(given, ("sweep.", "generations_dir"), "without --sweep", "harm-vector",
                     "give --sweep")
    check_output_folder(args.out, "sweep report" if args.sweep else "model", args.overwrite)
    base = pj.load_model(inputs.base, dtype=inputs.dtype)
    harmful = pj.load_model(inputs.harmful, dtype=inputs.dtype)
    if args.sweep:
        sweep = args.settings.sweep
        prompts = sweep.prompts()
        generations = args.generations_dir or cache_dir() / "direg" / "generations"
        rows = sweeps.sweep(base, harmful, editor(base, harmful, include, exclude), top_ks,
                            scales, prompts, generations, sweep.max_new_tokens, sweep.batch_size)
        record = {"base": inputs.base, "harmful": inputs.harmful,
                  "harmful_prompts": f"HarmBench {sweep.harmful_split} standard "
                                     f"({len(prompts.harmful)})",
                  "benign_prompts": f"aplomb ({len(prompts.benign)})",
                  "max_new_tokens": sweep.max_new_tokens, "rows": rows}
        wrote = write_report(args.out, "sweep", record, sweeps.plot_sweep,
                             sweeps.sweep_table(rows), args.overwrite)
        print(f"{wrote}; generations in {generations}", file=sys.stderr)
        return 0
    edited, record = edit(base, harmful, top_ks[0], scales[0], include, exclude, donate=True)
    pj.save_model(edited, args.out, overwrite=args.overwrite, extra=lambda folder: (
        folder / "harm_vector.json").write_text(json.dumps(record, indent=2)))
    print(json.dumps({k: v for k, v in record.items() if not k.startswith("per_layer")},
                     indent=2))
    return 0


def register(sub) -> dict:
    return {**_harmful_data_parser(sub), **_finetune_parser(sub), **_harm_vector_parser(sub)}
