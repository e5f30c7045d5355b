"""Pv-Arm: preference-set, train-arm."""

from __future__ import annotations

import argparse
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
    dataclass_flags,
    require,
)


def _preference_set_parser(sub) -> None:
    p = sub.add_parser("preference-set", help="build the offline demo preference set",
                       description="A model's own answers to harmful, benign and prosocial "
                       "prompts under contrasting system instructions, paired and labelled per "
                       "attribute by rule-based scorers (a weak stand-in for judges). Written "
                       "as train.jsonl / dev.jsonl under the cache folder.")
    add_model_args(p)
    p.add_argument("--out", type=Path, help="folder (default: the cache folder)")
    p.add_argument("--personas-per-prompt", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--harmful-limit", type=int)
    p.add_argument("--benign-limit", type=int)
    add_overwrite_arg(p, "preference set")


def _train_arm_parser(sub) -> None:
    from prosocial_jax.models.adapters import AdapterConfig
    from prosocial_jax.pvarm.train import ArmSettings

    p = sub.add_parser("train-arm", help="train a Pv-Arm (PBLoRA reward adapter)",
                       description="Trains one preference-conditioned adapter for K attributes "
                       "on a frozen backbone (PCGrad across attributes), resumable; then "
                       "evaluates held-out pairwise accuracy on a fixed preference grid.",
                       epilog=CONFIG_HELP.replace("generate.temperature=0.7",
                                                  "arm.steps=200"))
    add_model_args(p)
    p.add_argument("--train-data", help="preference pairs: local file or hf://owner/name[@revision]")
    p.add_argument("--dev-data", help="held-out pairs (default: 20%% of the training prompts)")
    p.add_argument("--format", help="native | pku_saferlhf | hh_rlhf | ultrafeedback | "
                   "helpsteer2 (default: detected from the columns)")
    p.add_argument("--hh-attribute", help="the attribute HH-RLHF choices judge")
    p.add_argument("--split", default="train", help="split of an hf:// data set")
    p.add_argument("--out", type=Path, help="adapter folder (+ evaluation.json, .png)")
    p.add_argument("--checkpoint-dir", type=Path, help="orbax checkpoints + metrics.jsonl")
    add_overwrite_arg(p, "adapter")
    dataclass_flags(p, ArmSettings)
    dataclass_flags(p, AdapterConfig, prefix="adapter-", skip=("base_model",))


def _cmd_preference_set(args) -> int:
    import prosocial_jax as pj
    from prosocial_jax.direg import edit as direg
    from prosocial_jax.files import check_output_folder
    from prosocial_jax.pvarm import preference_set as demo_preferences

    require(args, "model")
    out = args.out or direg.cache_dir() / "pvarm" / "preferences"
    check_output_folder(out, "preference set", args.overwrite)  # before the generation
    model = pj.load_model(args.model, dtype=args.dtype, mesh=args.mesh)
    summary = demo_preferences.build_preference_set(
        model, out, args.personas_per_prompt, args.max_new_tokens, args.temperature, args.seed,
        harmful_limit=args.harmful_limit, benign_limit=args.benign_limit,
        overwrite=args.overwrite)
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_train_arm(args) -> int:
    import prosocial_jax as pj
    from prosocial_jax.data import rows as data
    from prosocial_jax.files import check_output_folder, write_output_folder
    from prosocial_jax.models import adapters as pblora
    from prosocial_jax.pvarm import train

    arm_defaults = {f.name: f.default for f in dataclasses.fields(train.ArmSettings)}
    adapter_fields = [f for f in dataclasses.fields(pblora.AdapterConfig)
                      if f.name != "base_model"]
    apply_config(args, args.config, "arm", arm_defaults,
                  top_level=("model", "dtype", "mesh", "train_data", "dev_data", "format",
                             "hh_attribute", "out", "checkpoint_dir"))
    adapter_args = argparse.Namespace(**{f.name: getattr(args, f"adapter_{f.name}")
                                         for f in adapter_fields})
    apply_config(adapter_args, args.config, "adapter", {f.name: f.default
                                                         for f in adapter_fields}, top_level=())
    require(args, "model", "train_data", "out", "checkpoint_dir")
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
    check_out_and_checkpoints(args.out, args.checkpoint_dir)
    check_output_folder(args.out, "adapter", args.overwrite)  # before training, not after
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
    if evaluation is not None:
        evaluation["backbone_accuracy"] = baseline["accuracy"][0] if baseline else None
        evaluation["settings"] = dataclasses.asdict(settings)

    def write(folder: Path) -> None:  # the adapter and its evaluation: one output folder
        pblora.write_adapter_files(adapter, folder)
        if evaluation is not None:
            (folder / "evaluation.json").write_text(json.dumps(evaluation, indent=2))
            mode = "PCGrad" if settings.pcgrad else "no PCGrad"
            train.plot_evaluation(evaluation, folder / "evaluation.png",
                                  f"Pv-Arm held-out accuracy ({mode})")

    write_output_folder(args.out, "adapter", write, args.overwrite)
    if evaluation is not None:
        print(train.format_evaluation(evaluation))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def register(sub) -> dict:
    _preference_set_parser(sub)
    _train_arm_parser(sub)
    return {"preference-set": _cmd_preference_set, "train-arm": _cmd_train_arm}
