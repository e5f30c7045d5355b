"""Per-device memory of one Pv-Arm training step, from shapes alone (no weights).

The frozen backbone (sharded by the model rules), the PBLoRA adapter and its optimiser state
(replicated: small), one batch of preference pairs (rows over "data") and, on a mesh of real
devices, XLA's accounting of the compiled step, whose temporaries hold the activations kept for
the backward pass and the per-attribute gradients PCGrad combines.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AbstractMesh, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from prosocial_jax.models import sharding
from prosocial_jax.models.adapters import AdapterConfig, init_adapter
from prosocial_jax.models.config import ModelConfig
from prosocial_jax.models.decoder import init_params_shapes
from prosocial_jax.pvarm.train import ArmSettings, _ArmObjective
from prosocial_jax.training.loop import initial_state, jit_train_step_on_mesh


def arm_training_plan(backbone: ModelConfig, adapter: AdapterConfig, settings: ArmSettings,
                      mesh: Mesh | AbstractMesh | str, dtype=jnp.bfloat16,
                      compile: bool = False) -> dict[str, Any]:
    """Bytes per device of training `adapter` on `backbone` with `settings` (batch_size pairs
    of max_len tokens) on `mesh`; `compile=True` (real devices) adds XLA's accounting of one
    compiled step ("xla")."""
    if isinstance(mesh, str):
        mesh = sharding.abstract_mesh(mesh)
    replicated = NamedSharding(mesh, P())
    objective = _ArmObjective(backbone, adapter, settings)
    frozen = init_params_shapes(backbone, dtype)
    frozen_shardings = sharding.param_shardings(backbone, frozen, mesh)
    state = jax.eval_shape(lambda: initial_state(
        objective.optimizer(), init_adapter(backbone, adapter, jax.random.key(0)).params,
        jax.random.key(1)))
    state_shardings = jax.tree.map(lambda _: replicated, state)
    pairs, length = settings.batch_size, settings.max_len
    batch = {"tokens": jax.ShapeDtypeStruct((pairs, 2, length), jnp.int32),
             "attention": jax.ShapeDtypeStruct((pairs, 2, length), jnp.bool_),
             "response": jax.ShapeDtypeStruct((pairs, 2, length), jnp.bool_),
             "labels": jax.ShapeDtypeStruct((pairs, adapter.num_attributes), jnp.int8)}
    batch_shardings = {name: sharding.batch_sharding(mesh, x.shape) for name, x in batch.items()}
    size = sharding.per_device_bytes
    per_device = {"backbone": size(frozen, frozen_shardings),
                  "adapter": size(state.params, jax.tree.map(lambda _: replicated,
                                                             state.params)),
                  "optimizer_state": size(state.opt_state, jax.tree.map(lambda _: replicated,
                                                                       state.opt_state)),
                  "batch": size(batch, batch_shardings)}
    plan = {"mesh": f"{mesh.shape['data']}x{mesh.shape['model']}", "pairs": pairs,
            "max_len": length, "dtype": str(np.dtype(dtype)), "bytes_per_device": per_device,
            "total_bytes_per_device": sum(per_device.values())}
    if compile:
        if not isinstance(mesh, Mesh):
            raise ValueError("compile=True needs a mesh of real devices")

        def typed(shapes, shardings):
            return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                shapes, shardings)

        layout = (jax.tree.structure(state), tuple(jax.tree.leaves(state_shardings)))
        step = jit_train_step_on_mesh(layout)
        compiled = step.lower(typed(state, state_shardings), typed(frozen, frozen_shardings),
                              typed(batch, batch_shardings), objective=objective).compile()
        analysis = compiled.memory_analysis()
        plan["xla"] = {name: int(getattr(analysis, f"{name}_size_in_bytes"))
                       for name in ("argument", "output", "alias", "temp")}
    return plan
