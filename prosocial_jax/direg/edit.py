"""The DiReg edit: theta' = base - scale * trim_top_k(harmful - base).

The arithmetic (harm vector, selection, trim, apply) lives in `prosocial_jax.direg.harm`; this
module applies it to two loaded models. `edit` makes one edited model and the record written
beside it (`harm_vector.json`); `editor` makes many, for the strength sweep of
`prosocial_jax.evaluation.sweeps`, computing the harm vector once and each top-k trim once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from prosocial_jax import settings
from prosocial_jax.direg import harm
from prosocial_jax.models.model import Model


@dataclasses.dataclass(frozen=True)
class EditSettings:
    """The DiReg edit: which entries of the harm vector are kept, and how strongly it is
    subtracted. One value each for an edit; a grid of values for a sweep."""

    top_k: tuple[float, ...] = dataclasses.field(default=(0.1,), metadata={
        "help": "fraction of |tau| entries kept, in [0, 1] (a list with --sweep)"})
    scale: tuple[float, ...] = dataclasses.field(default=(3.0,), metadata={
        "help": "lambda (a list with --sweep, e.g. 0.5,1,2,3)"})
    include: tuple[str, ...] = dataclasses.field(default=(), metadata={
        "repeatable": True, "help": "fnmatch pattern over HF tensor names (repeatable; "
        "none: every floating-point parameter)"})
    exclude: tuple[str, ...] = dataclasses.field(default=(), metadata={
        "repeatable": True, "help": "fnmatch pattern to leave out (repeatable)"})

    def __post_init__(self):
        settings.coerce(self, "edit settings")
        if not self.top_k or not self.scale:
            raise ValueError("edit settings: top_k and scale need at least one value each")


def edit(base: Model, harmful: Model, top_k: float, scale: float,
         include: Sequence[str] | None = None, exclude: Sequence[str] | None = None,
         donate: bool = False) -> tuple[Model, dict[str, Any]]:
    """theta' = base - scale * trim_top_k(harmful - base); returns the edited model and a record.

    With `donate=True` both input models are consumed: the harm vector reuses the harmful
    model's buffers and the edit the base model's, so peak memory stays at two models.
    """
    if base.config != harmful.config:
        raise harm.HarmVectorError("base and harmful checkpoints have different architectures: "
                                   f"{_config_difference(base.config, harmful.config)}")
    tau = harm.task_vector(base.params, harmful.params, donate_harmful=donate,
                           config=base.config)
    mask = harm.selection_mask(base.config, tau, include, exclude)
    full_norm = harm.global_norm(tau)
    trimmed, result = harm.trim(tau, top_k, mask, donate=True, config=base.config)
    record = {"base": base.source, "harmful": harmful.source, "top_k": top_k, "scale": scale,
              "include": list(include) if include else None,
              "exclude": list(exclude) if exclude else None,
              **harm.statistics(base.config, None, trimmed, result), "norm_full": full_norm}
    edited = dataclasses.replace(
        base, params=harm.apply(base.params, trimmed, scale, donate_base=donate,
                                config=base.config),
        source=f"DiReg({base.source}, k={top_k}, lambda={scale})")
    return edited, record


def _config_difference(a, b) -> str:
    for field in dataclasses.fields(a):
        if getattr(a, field.name) != getattr(b, field.name):
            return f"{field.name}: {getattr(a, field.name)!r} vs {getattr(b, field.name)!r}"
    return "none"


def editor(base: Model, harmful: Model, include: Sequence[str] | None = None,
           exclude: Sequence[str] | None = None) -> Callable[[float, float], Model]:
    """`edited(top_k, scale)`: the DiReg edit of `base` for any point of a sweep's grid.

    The harm vector and its selection are computed here, once; each top_k's trimmed vector on
    first use, then reused for every scale. Nothing is donated: `base` stays usable, and every
    edited model holds its own parameters.
    """
    tau = harm.task_vector(base.params, harmful.params, config=base.config)
    mask = harm.selection_mask(base.config, tau, include, exclude)
    trimmed_by_k: dict[float, Any] = {}

    def edited(top_k: float, scale: float) -> Model:
        if top_k not in trimmed_by_k:
            trimmed_by_k[top_k] = harm.trim(tau, top_k, mask, config=base.config)[0]
        return dataclasses.replace(base, params=harm.apply(
            base.params, trimmed_by_k[top_k], scale, config=base.config))

    return edited
