"""compare: the whole pipeline side by side (the main job's last stage)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from prosocial_jax import settings
from prosocial_jax.cli.common import add_overwrite_arg
from prosocial_jax.cli.options import Command, Section, add_command, require
from prosocial_jax.evaluation.compare import CompareSettings
from prosocial_jax.evaluation.reports import write_report


@dataclasses.dataclass(frozen=True)
class CompareInputs:
    """The models `compare` runs side by side (top level of a config file)."""

    base: str = dataclasses.field(default="bundled:smollm2", metadata={
        "help": "the base model"})
    direg: str | None = dataclasses.field(default=None, metadata={
        "help": "the DiReg-edited model (HF folder)"})
    adapter: str | None = dataclasses.field(default=None, metadata={
        "help": "the Pv-Arm adapter folder"})
    reward: str | None = dataclasses.field(default=None, metadata={
        "help": "the adapter's backbone (none: --base)"})
    benign_from: str | None = dataclasses.field(default=None, metadata={
        "help": "a preference set's dev.jsonl: its benign and prosocial prompts (none: "
                "aplomb's benign prompts)"})

    def __post_init__(self):
        settings.coerce(self, "compare inputs")


COMPARE = (Section("inputs", CompareInputs, title="models"),
           Section("compare", CompareSettings, key="compare"))


def _compare_parser(sub) -> dict:
    command = Command(_cmd_compare, COMPARE, config_example="compare.guidance=0.5")
    p = add_command(
        sub, "compare", command, help="base vs DiReg vs Pv-Arm guidance, side by side",
        description="Greedy generations of every setting on held-out harmful and benign "
        "prompts: refusal rates, rule-based attribute scores, safety-stage overrides. Writes "
        "compare.json and compare.png; generated text goes to the cache folder.",
        field_help={"preferences": "preference vectors compared under DiReg + Pv-Arm, "
                    "separated by ';'", "guidance": "w", "safety_margin": "tau"})
    p.add_argument("--out", type=Path, required=True, help="report folder")
    add_overwrite_arg(p, "compare report")
    p.add_argument("--generations", type=Path,
                   help="JSONL of every generation (default: the cache folder)")
    return {"compare": command}


def _cmd_compare(args) -> int:
    import time

    import prosocial_jax as pj
    from prosocial_jax.evaluation import compare
    from prosocial_jax.files import cache_dir, check_output_file, check_output_folder

    inputs, chosen = args.settings.inputs, args.settings.compare
    require(inputs, "direg", "adapter")
    check_output_folder(args.out, "compare report", args.overwrite)  # before decoding
    if args.generations is not None:  # the default, in the cache folder, is ours to replace
        check_output_file(args.generations, args.overwrite)
    started = time.perf_counter()
    base = pj.load_model(inputs.base)
    models = {"base": base, "direg": pj.load_model(inputs.direg)}
    reward = pj.load_model(inputs.reward) if inputs.reward else base
    adapter = pj.load_adapter(inputs.adapter, reward.config)
    for preference in chosen.preferences:  # fail before any decoding
        adapter.preference(preference)
    prompts = chosen.prompts(inputs.benign_from)
    generations = args.generations or cache_dir() / "compare" / "generations.jsonl"
    settings = compare.default_settings(adapter, chosen.preferences)
    rows = compare.run(models, reward, adapter, settings, prompts, chosen.guidance,
                       chosen.safety_margin, chosen.max_new_tokens, chosen.batch_size,
                       generations)
    record = {"base": inputs.base, "direg": inputs.direg, "adapter": inputs.adapter,
              "guidance": chosen.guidance, "safety_margin": chosen.safety_margin,
              "harmful_prompts": f"HarmBench {chosen.harmful_split} standard "
                                 f"({len(prompts.harmful)})",
              "benign_prompts": f"{inputs.benign_from or 'aplomb'} ({len(prompts.benign)})",
              "max_new_tokens": chosen.max_new_tokens, "rows": rows}
    wrote = write_report(args.out, "compare", record, compare.plot_comparison,
                         compare.comparison_table(rows), args.overwrite)
    print(f"\n{len(prompts.harmful)} harmful + {len(prompts.benign)} benign prompts, "
          f"{len(settings)} settings in {time.perf_counter() - started:.0f}s; {wrote}; "
          f"generations in {generations}", file=sys.stderr)
    return 0


def register(sub) -> dict:
    return _compare_parser(sub)
