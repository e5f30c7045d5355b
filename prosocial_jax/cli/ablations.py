"""ablate-add-value, ablate-k-scaling, ablate-stages, ablate-overhead, ablate-conflict,
ablate-multi-turn: the ablations of `prosocial_jax.ablations`."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from prosocial_jax import settings as settings_module
from prosocial_jax.ablations.add_value import AddValueSettings
from prosocial_jax.ablations.conflict import ConflictSettings
from prosocial_jax.ablations.k_scaling import KScalingSettings
from prosocial_jax.ablations.multi_turn import MultiTurnSettings
from prosocial_jax.ablations.overhead import OverheadSettings
from prosocial_jax.cli.common import MODEL, add_overwrite_arg
from prosocial_jax.cli.options import (
    Command,
    Section,
    add_command,
    report_given,
    require,
)
from prosocial_jax.cli.pipeline import COMPARE
from prosocial_jax.cli.pvarm import ArmInputs, load_pairs
from prosocial_jax.models.adapters import AdapterConfig
from prosocial_jax.pvarm.train import ArmSettings


def _ablation_command(sub, name: str, run, sections, config_example: str, kind: str, *,
                      help: str, description: str) -> dict:
    """An ablation's command: its settings' flags, --out (the report folder, replaced only
    with --overwrite)."""
    command = Command(run, sections, config_example=config_example)
    p = add_command(sub, name, command, help=help, description=description)
    p.add_argument("--out", type=Path, required=True, help="report folder")
    add_overwrite_arg(p, kind)
    return {name: command}


def _read_pairs(data: ArmInputs, seed: int):
    """(training pairs, held-out pairs) of a train-arm data section; skipped rows reported."""
    pairs, dev_pairs, skipped, dev_skipped = load_pairs(data, seed)
    for source, rows in ((data.train_data, skipped), (data.dev_data or "dev split", dev_skipped)):
        if rows.count:
            print(rows.summary(str(source)), file=sys.stderr)
    return pairs, dev_pairs


ADD_VALUE = (MODEL, Section("data", ArmInputs, title="preference pairs",
                            skip=("out", "checkpoint_dir", "extend", "new_attribute")),
             Section("arm", ArmSettings, key="arm", title="training (every adapter)"),
             Section("adapter", AdapterConfig, key="adapter", prefix="adapter-",
                     skip=("base_model",), title="adapter (all K attributes)"),
             Section("ablation", AddValueSettings, key="ablation", title="the value added"))


def _add_value_parser(sub) -> dict:
    return _ablation_command(
        sub, "ablate-add-value", _cmd_add_value, ADD_VALUE, "arm.steps=60", "add-value ablation",
        help="ablation: add a value to a trained adapter vs retrain all attributes",
        description="Trains an adapter on every attribute but --new-attribute, extends it by "
        "that attribute (only its row of the preference-to-core map trained, on the pairs "
        "labelled for it), and retrains all attributes from scratch, with the same settings "
        "and pairs; reports each training's time and every attribute's held-out accuracy "
        "under its own one-hot (results.json, table.md, add_value.png in --out). Takes "
        "train-arm's config files (configs/pvarm_smollm2.py).")


def _cmd_add_value(args) -> int:
    import prosocial_jax as pj
    from prosocial_jax.ablations.add_value import add_value, table, write_report
    from prosocial_jax.files import check_output_folder

    inputs, data = args.settings.inputs, args.settings.data
    require(inputs, "model")
    require(data, "train_data")
    check_output_folder(args.out, "add-value ablation", args.overwrite)  # before training
    settings = args.settings.arm
    model = pj.load_model(inputs.model, dtype=inputs.dtype, mesh=inputs.mesh)
    pairs, dev_pairs = _read_pairs(data, settings.seed)
    record = add_value(model, args.settings.adapter, pairs, dev_pairs, settings,
                       args.settings.ablation)
    write_report(record, args.out, args.overwrite)
    print(table(record))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


K_SCALING = (MODEL, Section("data", ArmInputs, title="preference pairs (for --train-accuracy)",
                             skip=("out", "checkpoint_dir", "extend", "new_attribute")),
             Section("arm", ArmSettings, key="arm", title="training (for --train-accuracy)"),
             Section("adapter", AdapterConfig, key="adapter", prefix="adapter-",
                     skip=("base_model", "attributes", "safety_attribute"),
                     title="adapter (ranks and targets; the attributes are K's)"),
             Section("ablation", KScalingSettings, key="ablation", title="what is measured"))


def _k_scaling_parser(sub) -> dict:
    return _ablation_command(
        sub, "ablate-k-scaling", _cmd_k_scaling, K_SCALING, "ablation.ks=(2,6,16)",
        "k-scaling ablation",
        help="ablation: adapter size, training and decode step as the attributes grow",
        description="For every K of --ks, an adapter of K attributes (the paper's six first, "
        "then unlabelled extras): its size, one training step with the K gradients from one "
        "backward pass and from K backward passes (PCGrad after both), one guided decode step "
        "with the safety stage, and with --train-accuracy the held-out accuracy of the "
        "labelled attributes after training. Writes results.json, table.md and "
        "k_scaling.png to --out.")


def _cmd_k_scaling(args) -> int:
    import prosocial_jax as pj
    from prosocial_jax.ablations.k_scaling import k_scaling, table, write_report
    from prosocial_jax.files import check_output_folder

    inputs, data, ablation = args.settings.inputs, args.settings.data, args.settings.ablation
    require(inputs, "model")
    if ablation.train_accuracy:
        require(data, "train_data")
    else:
        report_given(args.given, ("data.", "arm."), "without --train-accuracy",
                     "ablate-k-scaling", "give --train-accuracy")
    check_output_folder(args.out, "k-scaling ablation", args.overwrite)
    model = pj.load_model(inputs.model, dtype=inputs.dtype, mesh=inputs.mesh)
    pairs = dev_pairs = ()
    if ablation.train_accuracy:
        pairs, dev_pairs = _read_pairs(data, args.settings.arm.seed)
    record = k_scaling(model, args.settings.adapter, args.settings.arm, ablation, pairs,
                       dev_pairs)
    write_report(record, args.out, args.overwrite)
    print(table(record))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _stages_parser(sub) -> dict:
    return _ablation_command(
        sub, "ablate-stages", _cmd_stages, COMPARE, "compare.safety_margin=2", "stages ablation",
        help="ablation: base, DiReg, Pv-Arm, Pv-Arm + safety, all three",
        description="Decodes the held-out harmful and benign prompts with each stage of the "
        "pipeline alone and together (guided stages under the uniform preference; with "
        "no_repeat_ngram > 0 also all three with the no-repeat rule), judges every answer with "
        "the rule judge and reports leakage, over-refusal, degenerate answers and the "
        "prosocial attribute scores per stage (results.json, table.md, stages.png and "
        "scores.jsonl in --out). Takes compare's config files (configs/demo_smollm2.py); "
        "its preference list is not used.")


def _cmd_stages(args) -> int:
    import prosocial_jax as pj
    from prosocial_jax.ablations.stages import stages, table, write_report
    from prosocial_jax.files import check_output_folder

    inputs, chosen = args.settings.inputs, args.settings.compare
    require(inputs, "direg", "adapter")
    report_given(args.given, ("compare.preferences", "compare.ablations"),  # compare's own
                 "in ablate-stages (it decodes every stage, under the uniform preference)",
                 "ablate-stages", "use compare")
    check_output_folder(args.out, "stages ablation", args.overwrite)  # before decoding
    base = pj.load_model(inputs.base)
    models = {"base": base, "direg": pj.load_model(inputs.direg)}
    reward = pj.load_model(inputs.reward) if inputs.reward else base
    adapter = pj.load_adapter(inputs.adapter, reward.config)
    record, scored = stages(models, reward, adapter, chosen.prompts(inputs.benign_from), chosen)
    record.update(base=inputs.base, direg=inputs.direg, adapter=inputs.adapter)
    write_report(record, scored, args.out, args.overwrite)
    print(table(record))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


@dataclasses.dataclass(frozen=True)
class OverheadInputs:
    """The models the overhead ablation runs (top level of a config file)."""

    model: str = dataclasses.field(default="bundled:smollm2", metadata={
        "help": "the base model"})
    adapter: str | None = dataclasses.field(default=None, metadata={
        "help": "the Pv-Arm adapter folder"})
    reward: str | None = dataclasses.field(default=None, metadata={
        "help": "the adapter's backbone (none: --model)"})
    arms: str | None = dataclasses.field(default=None, metadata={
        "help": "trained single-attribute adapters for multi-ARM (an adapter set folder; "
                "none: untrained ones, timed only)"})
    dtype: str | None = dataclasses.field(default=None, metadata={
        "help": "float32 / bfloat16 (none: the checkpoint's)"})
    benign_from: str | None = dataclasses.field(default=None, metadata={
        "help": "a preference set's dev or test prompts for the quality run (none: aplomb's "
                "benign prompts)"})

    def __post_init__(self):
        settings_module.coerce(self, "overhead inputs")


OVERHEAD = (Section("inputs", OverheadInputs, title="models"),
            Section("ablation", OverheadSettings, key="ablation", title="methods and grid"))


def _overhead_parser(sub) -> dict:
    return _ablation_command(
        sub, "ablate-overhead", _cmd_overhead, OVERHEAD, "ablation.contexts=(256,)",
        "overhead ablation",
        help="ablation: time and memory against plain, multi-ARM and best-of-N decoding",
        description="Times plain decoding, guided decoding by the Pv-Arm with and without the "
        "safety stage, multi-ARM decoding (one adapter per attribute, each run every step) "
        "and best-of-N reranking by the Pv-Arm, at every batch size and context length (each "
        "cell in a fresh process, with its peak memory), then judges each method's answers "
        "on held-out prompts with the rule judge. Writes results.json, table.md, "
        "overhead.png and scores.jsonl to --out.")


def _cmd_overhead(args) -> int:
    from prosocial_jax.ablations.overhead import Models, overhead, table, write_report
    from prosocial_jax.data.prompts import EvaluationPrompts
    from prosocial_jax.files import check_output_folder

    inputs, chosen = args.settings.inputs, args.settings.ablation
    require(inputs, "adapter")
    if not chosen.quality:
        report_given(args.given, ("inputs.benign_from", "ablation.harmful_limit",
                                  "ablation.benign_limit", "ablation.max_new_tokens"),
                     "without the quality run (--quality false)", "ablate-overhead",
                     "leave --quality on")
    check_output_folder(args.out, "overhead ablation", args.overwrite)
    prompts = EvaluationPrompts.held_out("test", chosen.harmful_limit, chosen.benign_limit,
                                         inputs.benign_from) if chosen.quality else None
    models = Models(inputs.model, inputs.adapter, inputs.reward, inputs.arms, inputs.dtype)
    record, scored = overhead(models, chosen, prompts)
    write_report(record, scored, args.out, args.overwrite)
    print(table(record))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


@dataclasses.dataclass(frozen=True)
class SweepPrompts:
    """The held-out prompts every method's sweep answers."""

    prompts_from: str | None = dataclasses.field(default=None, metadata={
        "help": "a preference set's test or dev prompts (JSONL rows with prompt and kind; "
                "their benign and prosocial prompts; none: aplomb's benign prompts)"})

    def __post_init__(self):
        settings_module.coerce(self, "sweep prompts")


CONFLICT = (MODEL, Section("data", ArmInputs, title="preference pairs",
                           skip=("out", "checkpoint_dir", "extend", "new_attribute")),
            Section("arm", ArmSettings, key="arm", title="training (every adapter)"),
            Section("adapter", AdapterConfig, key="adapter", prefix="adapter-",
                    skip=("base_model",), title="adapter (all K attributes)"),
            Section("sweep_prompts", SweepPrompts, title="sweep prompts"),
            Section("ablation", ConflictSettings, key="ablation", title="sweep and reuse"))


def _conflict_parser(sub) -> dict:
    return _ablation_command(
        sub, "ablate-conflict", _cmd_conflict, CONFLICT, "ablation.step=0.25",
        "conflict ablation",
        help="ablation: PCGrad vs weighted sum vs K single-attribute adapters",
        description="Trains a Pv-Arm with PCGrad, one with the plain weighted sum and one "
        "adapter per attribute (same pairs and steps; existing ones may be reused), then "
        "reports each attribute's held-out accuracy and a preference sweep of held-out "
        "prompts decoded by each (the single-attribute adapters as multi-ARM), judged by the "
        "rule judge: MIP, hypervolume and Pareto coverage. Writes results.json, table.md, "
        "conflict.png and scores.jsonl to --out. Takes train-arm's config files.")


def _cmd_conflict(args) -> int:
    import prosocial_jax as pj
    from prosocial_jax.ablations.conflict import conflict, table, write_report
    from prosocial_jax.data.prompts import EvaluationPrompts
    from prosocial_jax.files import check_output_folder

    inputs, data, ablation = args.settings.inputs, args.settings.data, args.settings.ablation
    require(inputs, "model")
    require(data, "train_data")
    check_output_folder(args.out, "conflict ablation", args.overwrite)  # before training
    settings = args.settings.arm
    model = pj.load_model(inputs.model, dtype=inputs.dtype, mesh=inputs.mesh)
    pairs, dev_pairs = _read_pairs(data, settings.seed)
    held_out = EvaluationPrompts.held_out(harmful_limit=0, benign_limit=ablation.prompts,
                                          preference_dev=args.settings.sweep_prompts.prompts_from)
    prompts = list(zip(held_out.benign, held_out.benign_kinds))
    record, scored = conflict(model, args.settings.adapter, pairs, dev_pairs, prompts, settings,
                              ablation)
    write_report(record, scored, args.out, args.overwrite)
    print(table(record))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


MULTI_TURN = (COMPARE[0], Section("ablation", MultiTurnSettings, key="ablation",
                                  title="prompt set and decoding"))


def _multi_turn_parser(sub) -> dict:
    return _ablation_command(
        sub, "ablate-multi-turn", _cmd_multi_turn, MULTI_TURN, "ablation.harmful=60",
        "multi-turn ablation",
        help="ablation: leakage and over-refusal after another turn vs in one turn",
        description="Builds a multi-turn prompt set (HarmBench test behaviours after a plain "
        "or an emotional opener, benign requests after an emotional opener, each opener "
        "answered by the base model) with one-turn controls, answers the final turns with the "
        "base model, DiReg and DiReg + Pv-Arm + safety, and judges them with the rule judge. "
        "Writes results.json (with the prompt set), table.md, multi_turn.png and scores.jsonl "
        "to --out. Takes compare's config files; --benign-from gives the held-out benign and "
        "prosocial prompts.")


def _cmd_multi_turn(args) -> int:
    import prosocial_jax as pj
    from prosocial_jax.ablations import multi_turn as ablation
    from prosocial_jax.data.prompts import harmbench_behaviors
    from prosocial_jax.files import check_output_folder

    inputs, chosen = args.settings.inputs, args.settings.ablation
    require(inputs, "direg", "adapter")
    check_output_folder(args.out, "multi-turn ablation", args.overwrite)
    base = pj.load_model(inputs.base)
    models = {"base": base, "direg": pj.load_model(inputs.direg),
              "reward": pj.load_model(inputs.reward) if inputs.reward else base}
    adapter = pj.load_adapter(inputs.adapter, models["reward"].config)
    finals, plain, emotional = ablation.prompt_pools(inputs.benign_from)
    harmful = [b["Behavior"] for b in harmbench_behaviors("test")][:chosen.harmful]
    conversations = ablation.answer_openers(
        base, ablation.build_conversations(harmful, finals[:chosen.benign], plain, emotional),
        chosen.opener_tokens, chosen.batch_size)
    record, scored = ablation.multi_turn(models, adapter, conversations, chosen)
    record.update(base=inputs.base, direg=inputs.direg, adapter=inputs.adapter)
    ablation.write_report(record, scored, args.out, args.overwrite)
    print(ablation.table(record))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def register(sub) -> dict:
    return {**_add_value_parser(sub), **_k_scaling_parser(sub), **_stages_parser(sub),
            **_overhead_parser(sub), **_conflict_parser(sub), **_multi_turn_parser(sub)}
