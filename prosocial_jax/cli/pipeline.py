"""compare: the whole pipeline side by side (the main job's last stage)."""

from __future__ import annotations

import sys
from pathlib import Path

from prosocial_jax.cli.common import add_overwrite_arg, write_report
from prosocial_jax.data import prompts as prompt_sets
from prosocial_jax.decoding.guidance import DEFAULT_SAFETY_MARGIN


def _compare_parser(sub) -> None:
    p = sub.add_parser(
        "compare", help="base vs DiReg vs Pv-Arm guidance, side by side",
        description="Greedy generations of every setting on held-out harmful and benign "
        "prompts: refusal rates, rule-based attribute scores, safety-stage overrides. Writes "
        "compare.json and compare.png; generated text goes to the cache folder.")
    p.add_argument("--base", default="bundled:smollm2", help="the base model")
    p.add_argument("--direg", required=True, help="the DiReg-edited model (HF folder)")
    p.add_argument("--adapter", required=True, help="the Pv-Arm adapter folder")
    p.add_argument("--reward", help="the adapter's backbone (default: --base)")
    p.add_argument("--preferences", default="empathy=1;truthfulness=1;helpfulness=1",
                   help="preference vectors compared under DiReg + Pv-Arm, separated by ';'")
    p.add_argument("--guidance", type=float, default=1.0, help="w (default 1)")
    p.add_argument("--safety-margin", type=float, default=DEFAULT_SAFETY_MARGIN,
                   help=f"tau (default {DEFAULT_SAFETY_MARGIN:g})")
    p.add_argument("--harmful-split", default="test", choices=prompt_sets.HARMBENCH_SPLITS)
    p.add_argument("--harmful-limit", type=int, help="use only the first N behaviours")
    p.add_argument("--benign-from", type=Path, help="a preference set's dev.jsonl: its benign "
                   "and prosocial prompts (default: aplomb's benign prompts)")
    p.add_argument("--benign-limit", type=int, help="use only the first N benign prompts")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", type=Path, required=True, help="report folder")
    add_overwrite_arg(p, "compare report")
    p.add_argument("--generations", type=Path,
                   help="JSONL of every generation (default: the cache folder)")


def _cmd_compare(args) -> int:
    import time

    import prosocial_jax as pj
    from prosocial_jax.direg import edit as direg
    from prosocial_jax.evaluation import compare
    from prosocial_jax.files import check_output_file, check_output_folder

    check_output_folder(args.out, "compare report", args.overwrite)  # before decoding
    if args.generations is not None:  # the default, in the cache folder, is ours to replace
        check_output_file(args.generations, args.overwrite)
    started = time.perf_counter()
    base = pj.load_model(args.base)
    models = {"base": base, "direg": pj.load_model(args.direg)}
    reward = pj.load_model(args.reward) if args.reward else base
    adapter = pj.load_adapter(args.adapter, reward.config)
    preferences = [p.strip() for p in args.preferences.split(";") if p.strip()]
    for preference in preferences:  # fail before any decoding
        adapter.preference(preference)
    prompts = compare.Prompts.held_out(args.harmful_split, args.harmful_limit, args.benign_from,
                                       args.benign_limit)
    generations = args.generations or direg.cache_dir() / "compare" / "generations.jsonl"
    settings = compare.default_settings(adapter, preferences)
    rows = compare.run(models, reward, adapter, settings, prompts, args.guidance,
                       args.safety_margin, args.max_new_tokens, args.batch_size, generations)
    record = {"base": args.base, "direg": args.direg, "adapter": args.adapter,
              "guidance": args.guidance, "safety_margin": args.safety_margin,
              "harmful_prompts": f"HarmBench {args.harmful_split} standard "
                                 f"({len(prompts.harmful)})",
              "benign_prompts": f"{args.benign_from or 'aplomb'} ({len(prompts.benign)})",
              "max_new_tokens": args.max_new_tokens, "rows": rows}
    wrote = write_report(args.out, "compare", record, compare.plot, compare.format_table(rows),
                         args.overwrite)
    print(f"\n{len(prompts.harmful)} harmful + {len(prompts.benign)} benign prompts, "
          f"{len(settings)} settings in {time.perf_counter() - started:.0f}s; {wrote}; "
          f"generations in {generations}", file=sys.stderr)
    return 0


def register(sub) -> dict:
    _compare_parser(sub)
    return {"compare": _cmd_compare}
