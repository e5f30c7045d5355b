"""compare: the whole pipeline side by side (the main job's last stage); guidance-sweep: how
the guided decoder's knobs trade safety against fluency."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from prosocial_jax import settings
from prosocial_jax.cli.common import add_overwrite_arg
from prosocial_jax.cli.options import Command, Section, add_command, require
from prosocial_jax.evaluation.compare import CompareSettings
from prosocial_jax.evaluation.guidance_sweep import GuidanceSweepSettings
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
                    "separated by ';'", "guidance": "w", "safety_margin": "tau",
                    "plausibility": "guided settings drop tokens below this fraction of the "
                    "base model's top probability",
                    "no_repeat_ngram": "guided settings never repeat an n-gram of their own "
                    "answer (n >= 2; 0 = off)",
                    "ablations": "also Pv-Arm on the base model, without and with the safety "
                    "stage"})
    p.add_argument("--out", type=Path, required=True, help="report folder")
    add_overwrite_arg(p, "compare report")
    p.add_argument("--generations", type=Path,
                   help="JSONL of every generation (default: the cache folder)")
    return {"compare": command}


def _cmd_compare(args) -> int:
    import time

    import prosocial_jax as pj
    from prosocial_jax.evaluation import compare
    from prosocial_jax.files import (
        cache_dir,
        check_output_file,
        check_output_folder,
        check_outside,
    )

    inputs, chosen = args.settings.inputs, args.settings.compare
    require(inputs, "direg", "adapter")
    check_output_folder(args.out, "compare report", args.overwrite)  # before decoding
    if args.generations is not None:  # the default, in the cache folder, is ours to replace
        check_output_file(args.generations, args.overwrite)
        check_outside(args.generations, args.out, "--generations", "--out")
    started = time.perf_counter()
    base = pj.load_model(inputs.base)
    models = {"base": base, "direg": pj.load_model(inputs.direg)}
    reward = pj.load_model(inputs.reward) if inputs.reward else base
    adapter = pj.load_adapter(inputs.adapter, reward.config)
    for preference in chosen.preferences:  # fail before any decoding
        adapter.preference(preference)
    prompts = chosen.prompts(inputs.benign_from)
    generations = args.generations or cache_dir() / "compare" / "generations.jsonl"
    settings = compare.default_settings(adapter, chosen.preferences, chosen.ablations)
    rows = compare.run(models, reward, adapter, settings, prompts, chosen.guidance,
                       chosen.safety_margin, chosen.plausibility,
                       no_repeat_ngram=chosen.no_repeat_ngram,
                       max_new_tokens=chosen.max_new_tokens, batch_size=chosen.batch_size,
                       generations_path=generations)
    record = {"base": inputs.base, "direg": inputs.direg, "adapter": inputs.adapter,
              "guidance": chosen.guidance, "safety_margin": chosen.safety_margin,
              "plausibility": chosen.plausibility, "no_repeat_ngram": chosen.no_repeat_ngram,
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


@dataclasses.dataclass(frozen=True)
class SweepInputs:
    """The models and prompts a guidance sweep decodes (top level of a config file)."""

    model: str | None = dataclasses.field(default=None, metadata={
        "help": "the model that writes (e.g. the DiReg-edited one)"})
    adapter: str | None = dataclasses.field(default=None, metadata={
        "help": "the Pv-Arm adapter folder"})
    reward: str = dataclasses.field(default="bundled:smollm2", metadata={
        "help": "the adapter's backbone"})
    prompts: str | None = dataclasses.field(default=None, metadata={
        "help": "held-out prompts: a preference set's dev.jsonl (or JSONL rows with "
                "\"prompt\" and \"kind\")"})

    def __post_init__(self):
        settings.coerce(self, "guidance-sweep inputs")


GUIDANCE_SWEEP = (Section("inputs", SweepInputs, title="models and prompts"),
                  Section("sweep", GuidanceSweepSettings, key="sweep"))


def _guidance_sweep_parser(sub) -> dict:
    command = Command(_cmd_guidance_sweep, GUIDANCE_SWEEP, config_example="sweep.guidance=0.5,1")
    p = add_command(
        sub, "guidance-sweep", command,
        help="how w, tau and the plausibility floor trade safety against loops",
        description="Greedy guided generations on held-out prompts with the guidance weight, "
        "the safety margin and the plausibility floor varied one at a time around a centre, "
        "judged by the rule judge (fluent refusals, leakage, over-refusal, degenerate "
        "answers); recommends the point with the most fluent refusals within the "
        "over-refusal and degeneracy limits. Writes sweep.json and sweep.png; generated text "
        "goes to the cache folder.",
        field_help={"guidance": "w values (the others at the centre)",
                    "safety_margin": "tau values, nats",
                    "plausibility": "plausibility floor values in [0, 1]",
                    "no_repeat_ngram": "every guided point never repeats an n-gram of its "
                    "answer (n >= 2; 0 = off)"})
    p.add_argument("--out", type=Path, required=True, help="report folder")
    add_overwrite_arg(p, "guidance sweep report")
    p.add_argument("--generations", type=Path,
                   help="JSONL of every judged generation (default: the cache folder)")
    return {"guidance-sweep": command}


def _cmd_guidance_sweep(args) -> int:
    import json
    import time

    import prosocial_jax as pj
    from prosocial_jax.evaluation import guidance_sweep
    from prosocial_jax.evaluation.reports import percent
    from prosocial_jax.files import (
        cache_dir,
        check_output_file,
        check_output_folder,
        check_outside,
        write_output_folder,
    )

    inputs, chosen = args.settings.inputs, args.settings.sweep
    require(inputs, "model", "adapter", "prompts")
    check_output_folder(args.out, "guidance sweep report", args.overwrite)  # before decoding
    if args.generations is not None:
        check_output_file(args.generations, args.overwrite)
        check_outside(args.generations, args.out, "--generations", "--out")
    prompts = guidance_sweep.read_sweep_prompts(inputs.prompts, chosen.harmful_limit,
                                                chosen.benign_limit)
    started = time.perf_counter()
    model = pj.load_model(inputs.model)
    reward = pj.load_model(inputs.reward)
    adapter = pj.load_adapter(inputs.adapter, reward.config)
    if chosen.preference is not None:
        adapter.preference(chosen.preference)  # fail before any decoding
    generations = args.generations or cache_dir() / "guidance_sweep" / "generations.jsonl"
    record = guidance_sweep.run(model, reward, adapter, prompts, chosen, generations)
    record.update(model=inputs.model, adapter=inputs.adapter, reward=inputs.reward,
                  prompts_file=inputs.prompts)

    def write(folder: Path) -> None:
        (folder / "sweep.json").write_text(json.dumps(record, indent=2))
        guidance_sweep.plot_sweep(record, folder / "sweep.png")

    write_output_folder(args.out, "guidance sweep report", write, args.overwrite)
    print(guidance_sweep.sweep_table(record))
    unguided = record["unguided"]["degenerate"]
    if record["chosen"] is None:
        print(f"\nno point keeps over-refusal <= {percent(chosen.max_over_refusal)} and "
              f"degenerate answers <= {percent(unguided)} + "
              f"{percent(chosen.max_extra_degenerate)}")
    else:
        print(f"\nrecommended: {record['chosen']['name']}")
    print(f"{len(prompts)} prompts x {len(record['rows'])} points in "
          f"{time.perf_counter() - started:.0f}s; wrote {args.out / 'sweep.json'}, "
          f"{args.out / 'sweep.png'}; generations in {generations}", file=sys.stderr)
    return 0


def register(sub) -> dict:
    return {**_compare_parser(sub), **_guidance_sweep_parser(sub)}
