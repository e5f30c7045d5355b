"""K scaling: what one preference-conditioned adapter costs as the number of attributes grows.

For every K (default 2, 4, 6, 8, 12, 16), an adapter of K attributes on the same backbone: the
first six are the paper's (harmlessness first, so the safety stage exists), the rest are extra
attributes `extra_7`, ... that no pair labels (any labelled attribute would do; their cost does
not depend on what they mean). Measured per K:

- the adapter's size (float32 bytes): only zeta, [K, r2 * r2] per layer and target, grows;
- one training step on a fixed random batch, the K attribute gradients from one backward pass
  with PCGrad (what `train_arm` runs), and from K separate backward passes (the naive way),
  each compiled first and then timed (median);
- one guided decode step with the safety stage, `decode_rows` rows (time per token from two
  lengths, as the decode benchmarks do);
- with labelled pairs (optional): the held-out accuracy of the labelled attributes after
  training `arm.steps` steps at that K.
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from prosocial_jax import settings as settings_module
from prosocial_jax.ablations.report import write_ablation_report
from prosocial_jax.data.preferences import PreferencePair, encode_pairs
from prosocial_jax.decoding.decode import generate
from prosocial_jax.evaluation import reports
from prosocial_jax.evaluation.likelihood import pair_margins
from prosocial_jax.evaluation.preference_accuracy import evaluate_adapter
from prosocial_jax.models.adapters import DEFAULT_ATTRIBUTES, AdapterConfig, init_adapter
from prosocial_jax.models.model import Model
from prosocial_jax.pvarm.objective import attribute_losses, per_attribute_gradients
from prosocial_jax.pvarm.pcgrad import pcgrad
from prosocial_jax.pvarm.train import ArmSettings, sample_held_out, train_arm


@dataclasses.dataclass(frozen=True)
class KScalingSettings:
    ks: tuple[int, ...] = dataclasses.field(default=(2, 4, 6, 8, 12, 16), metadata={
        "help": "numbers of attributes measured"})
    pairs: int = dataclasses.field(default=4, metadata={
        "help": "preference pairs of the timed training step"})
    length: int = dataclasses.field(default=128, metadata={
        "help": "tokens per sequence of the timed training step (a quarter prompt)"})
    repeats: int = dataclasses.field(default=3, metadata={
        "help": "timed runs of each measurement (the median is kept)"})
    decode_rows: int = dataclasses.field(default=16, metadata={
        "help": "rows of the timed guided decode step"})
    decode_tokens: int = dataclasses.field(default=32, metadata={
        "help": "new tokens of the longer timed decode (the shorter: a quarter)"})
    train_accuracy: bool = dataclasses.field(default=False, metadata={
        "help": "also train arm.steps steps at every K on the pairs and report held-out "
                "accuracy of the labelled attributes"})

    def __post_init__(self):
        settings_module.coerce(self, "k-scaling settings")
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"k-scaling settings: ks must be numbers >= 1, got {self.ks}")
        for name in ("pairs", "length", "repeats", "decode_rows", "decode_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"k-scaling settings: {name} must be >= 1, got "
                                 f"{getattr(self, name)}")
        if self.decode_tokens < 4:
            raise ValueError("k-scaling settings: decode_tokens must be >= 4")


def attributes_for(k: int) -> tuple[str, ...]:
    """The paper's attributes (harmlessness first) up to K, then extra_7, extra_8, ..."""
    return (*DEFAULT_ATTRIBUTES[:k], *(f"extra_{i}" for i in range(7, k + 1)))


def _median_seconds(fn, repeats: int) -> tuple[float, float]:
    """(first call, with compiling; median of `repeats` calls after it)."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def _training_steps(model: Model, config: AdapterConfig, ablation: KScalingSettings
                    ) -> dict[str, float]:
    """Seconds of one step, one backward (+ PCGrad) and K backwards (+ PCGrad)."""
    k = config.num_attributes
    rng = np.random.default_rng(k)
    shape = (ablation.pairs, 2, ablation.length)
    response = np.zeros(shape, bool)
    response[..., ablation.length // 4:] = True
    batch = {"tokens": jnp.asarray(rng.integers(3, model.config.vocab_size, shape), jnp.int32),
             "attention": jnp.ones(shape, bool), "response": jnp.asarray(response)}
    labels = jnp.asarray(rng.choice([-1, 0, 1], (ablation.pairs, k)), jnp.int8)
    betas = jnp.full((k,), 0.05)
    alpha = jnp.asarray(rng.dirichlet(np.ones(k)), jnp.float32)
    params = init_adapter(model.config, config, jax.random.key(0)).params
    tx = optax.chain(pcgrad(k), optax.adamw(1e-3))
    state = tx.init(params)

    @jax.jit
    def one_backward(params, state, frozen, batch):
        stacked, _ = per_attribute_gradients(model.config, frozen, config, params, batch,
                                             labels, betas, alpha)
        updates, state = tx.update(stacked, state, params, preference=alpha)
        return optax.apply_updates(params, updates), state

    @jax.jit
    def attribute_gradient(params, frozen, batch, i):  # i traced: one compile for every i
        def loss(p):
            margins = pair_margins(model.config, frozen, batch, config, p, alpha)
            return attribute_losses(margins, labels, betas)["loss"][i]
        return jax.grad(loss)(params)

    apply = jax.jit(lambda params, state, stacked: tx.update(stacked, state, params,
                                                             preference=alpha))

    def k_backwards():
        grads = [attribute_gradient(params, model.params, batch, i) for i in range(k)]
        updates, _ = apply(params, state, jax.tree.map(lambda *g: jnp.stack(g), *grads))
        return optax.apply_updates(params, updates)

    first_one, one = _median_seconds(lambda: one_backward(params, state, model.params, batch),
                                     ablation.repeats)
    first_k, many = _median_seconds(k_backwards, ablation.repeats)
    return {"train_step_one_backward_s": one, "train_step_k_backwards_s": many,
            "compile_and_first_step_one_backward_s": first_one,
            "compile_and_first_step_k_backwards_s": first_k}


def _decode_step(model: Model, config: AdapterConfig, ablation: KScalingSettings) -> float:
    """Seconds per guided decode step (safety stage on), from two lengths."""
    adapter = init_adapter(model.config, config, jax.random.key(0))
    rows = [[5 + (i % 7), 17, 33, 8 + i] for i in range(ablation.decode_rows)]
    uniform = np.full(config.num_attributes, 1.0 / config.num_attributes, np.float32)

    def run(tokens: int) -> float:
        start = time.perf_counter()
        generate(model, rows, max_new_tokens=tokens, stop_tokens=[], adapter=adapter,
                 preference=uniform, safety_margin=3.0, batch_size=ablation.decode_rows)
        return time.perf_counter() - start

    long_, short = ablation.decode_tokens, max(1, ablation.decode_tokens // 4)
    run(short), run(long_)  # compile both chunk lengths
    spans = [run(long_) - run(short) for _ in range(ablation.repeats)]
    return statistics.median(spans) / (long_ - short)


def k_scaling(model: Model, adapter_config: AdapterConfig, settings: ArmSettings,
              ablation: KScalingSettings | None = None,
              train: Sequence[PreferencePair] = (), dev: Sequence[PreferencePair] = (),
              progress: bool = True) -> dict[str, Any]:
    """Every measurement of the module docstring at every K of `ablation.ks`; the adapter's
    ranks and targets come from `adapter_config` (its attributes are replaced)."""
    ablation = ablation or KScalingSettings()
    if ablation.train_accuracy and not (train and dev):
        raise ValueError("k-scaling: train_accuracy needs training and held-out pairs")
    held_out = sample_held_out(list(dev), settings.eval_limit, settings.seed)  # same at every K
    rows = []
    for k in ablation.ks:
        config = dataclasses.replace(adapter_config, attributes=attributes_for(k),
                                     safety_attribute=DEFAULT_ATTRIBUTES[0])
        adapter = init_adapter(model.config, config, jax.random.key(0))
        row: dict[str, Any] = {
            "k": k, "attributes": list(config.attributes),
            "adapter_bytes": sum(int(x.size) * 4 for x in jax.tree.leaves(adapter.params)),
            **_training_steps(model, config, ablation),
            "decode_step_s": _decode_step(model, config, ablation)}
        if ablation.train_accuracy:
            k_settings = dataclasses.replace(settings, betas=(), winner_nlls=())
            with tempfile.TemporaryDirectory(prefix="k-scaling-") as checkpoints:
                trained, _, _ = train_arm(model, config, encode_pairs(
                    train, model.tokenizer, config.attributes, settings.max_len), [],
                    k_settings, checkpoints, progress=progress)
            evaluation = evaluate_adapter(
                model, trained, encode_pairs(held_out, model.tokenizer, config.attributes,
                                             settings.max_len),
                np.eye(k, dtype=np.float32), settings.max_len, settings.eval_batch_size)
            accuracy = np.asarray(evaluation["accuracy"])
            row["accuracy"] = {a: float(accuracy[i, i]) for i, a in enumerate(config.attributes)
                               if evaluation["labelled_pairs"][i]}
        rows.append(row)
        if progress:
            print(f"K = {k}: one backward {row['train_step_one_backward_s']:.2f} s, "
                  f"K backwards {row['train_step_k_backwards_s']:.2f} s, decode step "
                  f"{1e3 * row['decode_step_s']:.1f} ms")
    return {"settings": dataclasses.asdict(ablation), "rows": rows,
            "adapter": {"r1": adapter_config.r1, "r2": adapter_config.r2,
                        "targets": list(adapter_config.target_modules)}}


def table(record: dict[str, Any]) -> str:
    labelled = sorted({a for row in record["rows"] for a in row.get("accuracy", {})},
                      key=lambda a: (a not in DEFAULT_ATTRIBUTES, a))
    header = ["K", "adapter size", "training step, one backward", "K backwards",
              "ratio", "guided decode step", *labelled]
    cells = []
    for row in record["rows"]:
        one, many = row["train_step_one_backward_s"], row["train_step_k_backwards_s"]
        cells.append([str(row["k"]), f"{row['adapter_bytes'] / 1024:.1f} KiB", f"{one:.2f} s",
                      f"{many:.2f} s", f"{many / one:.1f}x",
                      f"{1e3 * row['decode_step_s']:.1f} ms",
                      *(reports.number(row.get("accuracy", {}).get(a), 2) for a in labelled)])
    return reports.markdown_table(header, cells)


def plot(record: dict[str, Any], path: str | Path) -> None:
    rows = record["rows"]
    ks = [row["k"] for row in rows]
    figure = reports.new_figure(12, 4)
    train_ax, decode_ax, size_ax = figure.subplots(1, 3)
    train_ax.plot(ks, [r["train_step_one_backward_s"] for r in rows], "o-",
                  label="one backward + PCGrad")
    train_ax.plot(ks, [r["train_step_k_backwards_s"] for r in rows], "s--",
                  label="K backwards + PCGrad")
    train_ax.set(xlabel="attributes K", ylabel="seconds per step", title="Training step")
    train_ax.legend(fontsize=8)
    decode_ax.plot(ks, [1e3 * r["decode_step_s"] for r in rows], "o-")
    decode_ax.set(xlabel="attributes K", ylabel="ms per step", ylim=(0, None),
                  title="Guided decode step (safety stage on)")
    size_ax.plot(ks, [r["adapter_bytes"] / 1024 for r in rows], "o-")
    size_ax.set(xlabel="attributes K", ylabel="KiB", ylim=(0, None), title="Adapter size")
    figure.tight_layout()
    reports.save_figure(figure, path)


def write_report(record: dict[str, Any], out_dir: str | Path, overwrite: bool = False) -> Path:
    """results.json, table.md and k_scaling.png in one output folder."""
    return write_ablation_report(out_dir, "k-scaling ablation", record, table, plot,
                                 "k_scaling.png", overwrite)
