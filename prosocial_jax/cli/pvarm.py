"""Pv-Arm: preference-set, train-arm."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from prosocial_jax import settings as settings_module
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
    report_ignored,
    require,
)
from prosocial_jax.models.adapters import AdapterConfig
from prosocial_jax.pvarm.preference_set import PreferenceSetSettings
from prosocial_jax.pvarm.train import ArmSettings


@dataclasses.dataclass(frozen=True)
class ArmInputs:
    """What `train-arm` reads and writes (top level of a config file)."""

    train_data: str | None = dataclasses.field(default=None, metadata={
        "help": "preference pairs: local file or hf://owner/name[@revision]"})
    dev_data: str | None = dataclasses.field(default=None, metadata={
        "help": "held-out pairs (none: 20%% of the training prompts)"})
    format: str = dataclasses.field(default="auto", metadata={
        "help": "native | pku_saferlhf | hh_rlhf | ultrafeedback | helpsteer2 | auto (detected "
                "from the columns)"})
    hh_attribute: str | None = dataclasses.field(default=None, metadata={
        "help": "the attribute HH-RLHF choices judge"})
    split: str = dataclasses.field(default="train", metadata={
        "help": "split of an hf:// data set"})
    out: str | None = dataclasses.field(default=None, metadata={
        "help": "adapter folder (+ evaluation.json, .png)"})
    checkpoint_dir: str | None = dataclasses.field(default=None, metadata={
        "help": "orbax checkpoints + metrics.jsonl"})
    extend: str | None = dataclasses.field(default=None, metadata={
        "help": "a trained adapter folder to add --new-attribute to: only the new attribute's "
                "row of the preference-to-core map is trained, everything else is kept (the "
                "adapter settings are that adapter's)"})
    new_attribute: str | None = dataclasses.field(default=None, metadata={
        "help": "with --extend: the attribute added (its label in the pairs)"})

    def __post_init__(self):
        settings_module.coerce(self, "train-arm inputs")
        if (self.extend is None) != (self.new_attribute is None):
            raise ValueError("train-arm inputs: --extend and --new-attribute go together")


PREFERENCE_SET = (MODEL, Section("preference_set", PreferenceSetSettings,
                                 key="preference_set"))
TRAIN_ARM = (MODEL, Section("data", ArmInputs, title="data and outputs"),
             Section("arm", ArmSettings, key="arm"),
             Section("adapter", AdapterConfig, key="adapter", prefix="adapter-",
                     skip=("base_model",), title="adapter"))


def _preference_set_parser(sub) -> dict:
    command = Command(_cmd_preference_set, PREFERENCE_SET,
                      config_example="preference_set.max_new_tokens=32")
    p = add_command(sub, "preference-set", command,
                    help="build the offline demo preference set",
                    description="A model's own answers to harmful, benign and prosocial "
                    "prompts under personas that embody or violate each attribute; the "
                    "contrast labels the pair. Written as train.jsonl / dev.jsonl (pairs) and "
                    "test_prompts.jsonl (held-out prompts, never answered) under the cache "
                    "folder.")
    p.add_argument("--out", type=Path, help="folder (default: the cache folder)")
    add_overwrite_arg(p, "preference set")
    return {"preference-set": command}


def _train_arm_parser(sub) -> dict:
    command = Command(_cmd_train_arm, TRAIN_ARM, config_example="arm.steps=200")
    p = add_command(sub, "train-arm", command, help="train a Pv-Arm (PBLoRA reward adapter)",
                    description="Trains one preference-conditioned adapter for K attributes "
                    "on a frozen backbone (PCGrad across attributes), resumable; then "
                    "evaluates held-out pairwise accuracy on a fixed preference grid.")
    add_overwrite_arg(p, "adapter")
    add_restart_flag(p)
    add_distributed_flag(p)
    return {"train-arm": command}


def _cmd_preference_set(args) -> int:
    import prosocial_jax as pj
    from prosocial_jax.files import cache_dir, check_output_folder
    from prosocial_jax.pvarm.preference_set import build_preference_set

    inputs = args.settings.inputs
    require(inputs, "model")
    out = args.out or cache_dir() / "pvarm" / "preferences"
    check_output_folder(out, "preference set", args.overwrite)  # before the generation
    model = pj.load_model(inputs.model, dtype=inputs.dtype, mesh=inputs.mesh)
    summary = build_preference_set(model, out, args.settings.preference_set,
                                   overwrite=args.overwrite)
    print(json.dumps(summary, indent=2))
    return 0


def check_ignored_data_flags(args, command: str) -> None:
    """The split of local files, and the HH-RLHF attribute of another format, do nothing."""
    data = args.settings.data
    check_hf_split(args, "data.split", [data.train_data, data.dev_data], command)
    how = args.given.get("data.hh_attribute")
    if how is not None and data.format not in ("hh_rlhf", "auto"):
        report_ignored(how, f"with --format {data.format} (it names what HH-RLHF choices "
                       "judge)", command, "give --format hh_rlhf")


def load_pairs(data: ArmInputs, seed: int):
    """(train pairs, dev pairs, their skipped-row reports) of --train-data and --dev-data, or
    a seeded 20% of the training prompts held out when there is no --dev-data."""
    from prosocial_jax.data.preferences import load_preference_pairs
    from prosocial_jax.data.rows import SkippedRows
    from prosocial_jax.pvarm import train

    pairs, skipped = load_preference_pairs(data.train_data, data.format, data.split,
                                           data.hh_attribute)
    if data.dev_data:
        dev_pairs, dev_skipped = load_preference_pairs(data.dev_data, data.format, data.split,
                                                       data.hh_attribute)
    else:
        pairs, dev_pairs = train.split_by_prompt(pairs, 0.2, seed)
        dev_skipped = SkippedRows()
    return pairs, dev_pairs, skipped, dev_skipped


def _cmd_train_arm(args) -> int:
    import jax

    import prosocial_jax as pj
    from prosocial_jax import processes
    from prosocial_jax.data.preferences import encode_pairs
    from prosocial_jax.evaluation import preference_accuracy
    from prosocial_jax.files import check_output_folder, write_output_folder
    from prosocial_jax.models import adapters
    from prosocial_jax.pvarm import train

    inputs, data = args.settings.inputs, args.settings.data
    settings, adapter_config = args.settings.arm, args.settings.adapter
    require(inputs, "model")
    require(data, "train_data", "out", "checkpoint_dir")
    check_ignored_data_flags(args, "train-arm")
    if data.extend is not None:
        report_given(args.given, ("adapter.",), "with --extend (the extended adapter's "
                     "settings are kept)", "train-arm", "drop --extend")
    out, checkpoint_dir = Path(data.out), Path(data.checkpoint_dir)
    check_out_and_checkpoints(out, checkpoint_dir)
    check_output_folder(out, "adapter", args.overwrite)  # before training, not after
    initialize_distributed(args)
    model = pj.load_model(inputs.model, dtype=inputs.dtype, mesh=inputs.mesh)
    extend = None
    if data.extend is not None:
        extend = adapters.load_adapter(data.extend, model.config)
        adapter_config = dataclasses.replace(
            extend.config, attributes=(*extend.config.attributes, data.new_attribute))
        print(f"extending {data.extend} ({', '.join(extend.config.attributes)}) with "
              f"{data.new_attribute!r}; its r1, r2, targets and scale are kept", file=sys.stderr)
    attributes = adapter_config.attributes

    pairs, dev_pairs, skipped, dev_skipped = load_pairs(data, settings.seed)
    train_examples = encode_pairs(pairs, model.tokenizer, attributes, settings.max_len,
                                  skipped)
    dev_examples = train.sample_held_out(
        encode_pairs(dev_pairs, model.tokenizer, attributes, settings.max_len, dev_skipped),
        settings.eval_limit, settings.seed)
    for source, rows in ((data.train_data, skipped), (data.dev_data or "dev split", dev_skipped)):
        if rows.count:
            print(rows.summary(str(source)), file=sys.stderr)
    print(f"{len(train_examples)} training pairs, {len(dev_examples)} held-out pairs",
          file=sys.stderr)
    baseline = None
    if dev_examples:  # the backbone alone (a fresh adapter changes nothing)
        fresh = (adapters.init_adapter(model.config, adapter_config, jax.random.key(settings.seed))
                 if extend is None else adapters.extend_adapter(
                     extend, data.new_attribute, jax.random.key(settings.seed)))
        baseline = preference_accuracy.evaluate_adapter(
            model, fresh, dev_examples, preference_accuracy.simplex_grid(len(attributes))[-1:],
            settings.max_len, settings.eval_batch_size)
    adapter, _, evaluation = train.train_arm(model, adapter_config, train_examples,
                                             dev_examples, settings, checkpoint_dir,
                                             restart_on_change=args.restart_on_change,
                                             extend=extend)
    if evaluation is not None:
        evaluation["backbone_accuracy"] = baseline["accuracy"][0] if baseline else None
        if extend is not None:  # the baseline is the extended adapter before training
            evaluation["baseline_name"] = "before training (uniform)"
        evaluation["settings"] = dataclasses.asdict(settings)

    def write(folder: Path) -> None:  # the adapter and its evaluation: one output folder
        adapters.write_adapter_files(adapter, folder)
        if evaluation is not None:
            (folder / "evaluation.json").write_text(json.dumps(evaluation, indent=2))
            mode = "PCGrad" if settings.pcgrad else "no PCGrad"
            preference_accuracy.plot_evaluation(evaluation, folder / "evaluation.png",
                                                f"Pv-Arm held-out accuracy ({mode})")

    if not processes.is_writer():
        print(f"process {jax.process_index()} writes nothing (process 0 writes {out})",
              file=sys.stderr)
        return 0
    write_output_folder(out, "adapter", write, args.overwrite)
    if evaluation is not None:
        print(preference_accuracy.format_evaluation(evaluation))
    print(f"wrote {out}", file=sys.stderr)
    return 0


def register(sub) -> dict:
    return {**_preference_set_parser(sub), **_train_arm_parser(sub)}
