"""Hugging Face safetensors checkpoints <-> the decoder's parameter pytree.

The conversion is one explicit key map with asserted shapes. Loading fails on a missing, extra or
mis-shaped tensor, naming it; afterwards every tensor in the files has been used and every
parameter filled. Pickle checkpoints (`.bin`, `.pt`) are refused: unpickling runs arbitrary code.
Every other failure while reading (a corrupt or truncated file, a header that lies about its
offsets, a shard index that disagrees with its shards, a non-floating dtype, NaN or +-inf in a
weight) is a CheckpointError naming the file and, where known, the tensor.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path

import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from prosocial_jax.models.config import ModelConfig
from prosocial_jax.models.decoder import init_params_shapes
from prosocial_jax.models.projections import FUSED, PROJECTIONS

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
SAFETENSORS_INDEX = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3


class CheckpointError(ValueError):
    """A checkpoint that cannot be read as given: corrupt or truncated files, tensors that do not
    match the architecture its config describes, non-finite weights. The message names the file
    and, where known, the tensor."""


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One HF tensor and where it lives in our pytree (same orientation: linears are [out, in])."""

    hf_name: str  # per-layer names contain "{i}"
    path: tuple[str, ...]
    per_layer: bool


def tensor_specs(config: ModelConfig, lm_head: bool = True) -> list[TensorSpec]:
    """Every tensor of a checkpoint of this architecture, in the order a save writes them.

    `lm_head=False`: the trunk only (a sequence classifier or reward model has a score head
    instead, read by `prosocial_jax.models.classifier`)."""
    specs = [TensorSpec("model.embed_tokens.weight", ("embed", "embedding"), False),
             TensorSpec("model.norm.weight", ("final_norm", "scale"), False)]
    if lm_head and not config.tie_word_embeddings:
        specs.append(TensorSpec("lm_head.weight", ("lm_head", "weight"), False))
    layer = "model.layers.{i}."
    if config.sandwich_norms:  # Gemma 2 / 3: HF's post_attention_layernorm is on the output
        norms = {"input_layernorm": "input_norm", "post_attention_layernorm": "attn_out_norm",
                 "pre_feedforward_layernorm": "post_attn_norm",
                 "post_feedforward_layernorm": "mlp_out_norm"}
    else:
        norms = {"input_layernorm": "input_norm", "post_attention_layernorm": "post_attn_norm"}
    specs += [TensorSpec(f"{layer}{hf}.weight", ("layers", ours, "scale"), True)
              for hf, ours in norms.items()]
    for proj in PROJECTIONS.values():
        parts = ("weight", "bias") if proj.has_bias(config) else ("weight",)
        specs += [TensorSpec(f"{proj.hf_prefix('{i}')}.{part}", (*proj.param_path, part), True)
                  for part in parts]
    if config.qk_norm:
        specs += [TensorSpec(layer + f"self_attn.{name}.weight", ("layers", "attn", name, "scale"),
                             True) for name in ("q_norm", "k_norm")]
    return specs


# Checkpoints that store projections fused, in row order (Phi-3: q, k and v as one qkv_proj,
# gate and up as one gate_up_proj). Loading splits them into the separate projections every
# other part of prosocial_jax uses (adapters, DiReg, sharding); saving fuses them back, so a
# saved folder is the family's own layout and transformers loads it.
FUSED_PROJECTIONS: dict[str, dict[str, tuple[str, ...]]] = {
    "phi3": {"self_attn.qkv_proj": FUSED["qkv_proj"], "mlp.gate_up_proj": FUSED["gate_up_proj"]},
}


def _fused_parts(config: ModelConfig) -> dict[str, tuple[str, list[tuple[str, int, int]]]]:
    """{fused HF tensor name: (the first part's name, [(part name, first row, end row), ...])}
    for every layer of a family that fuses projections."""
    parts = {}
    for module, names in FUSED_PROJECTIONS.get(config.model_type, {}).items():
        for i in range(config.num_layers):
            start, rows = 0, []
            for name in names:
                size = PROJECTIONS[name].shape(config)[0]
                rows.append((f"{PROJECTIONS[name].hf_prefix(i)}.weight", start, start + size))
                start += size
            parts[f"model.layers.{i}.{module}.weight"] = (rows[0][0], rows)
    return parts


def fused_names(config: ModelConfig) -> dict[str, str]:
    """{a part's HF tensor name: the fused tensor it is stored in} (empty for most families):
    what a name pattern written for the checkpoint's own names (DiReg's selections) also
    matches."""
    return {part: name for name, (_, rows) in _fused_parts(config).items()
            for part, _, _ in rows}


def _split_fused(config: ModelConfig, names: set[str], get_tensor: Callable[[str], np.ndarray],
                 source: str) -> tuple[set[str], Callable[[str], np.ndarray]]:
    """The checkpoint's names and getter with each fused projection seen as its parts."""
    fused = _fused_parts(config)
    if not fused:
        return names, get_tensor
    where: dict[str, tuple[str, int, int, int]] = {}  # part -> (fused, start, end, total rows)
    for name, (_, rows) in fused.items():
        if name not in names:
            raise CheckpointError(f"{source}: tensor {name!r} is missing")
        for part, start, end in rows:
            where[part] = (name, start, end, rows[-1][2])
    last: dict[str, np.ndarray] = {}  # the fused tensor being split (read once, not per part)

    def get(name: str) -> np.ndarray:
        if name not in where:
            return get_tensor(name)
        fused_name, start, end, total = where[name]
        if fused_name not in last:
            last.clear()
            tensor = get_tensor(fused_name)
            if tensor.ndim != 2 or tensor.shape[0] != total:
                raise CheckpointError(
                    f"{source}: tensor {fused_name!r} has shape {tuple(tensor.shape)}, expected "
                    f"{total} rows (its parts stacked) from config.json")
            last[fused_name] = tensor
        return last[fused_name][start:end]

    return (names - set(fused)) | set(where), get


def _get_path(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _set_path(tree: dict, path, value):
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def params_from_tensors(config: ModelConfig, names: set[str],
                        get_tensor: Callable[[str], np.ndarray], dtype=None,
                        source: str = "checkpoint", lm_head: bool = True) -> dict:
    """Builds the parameter pytree (numpy) from HF-named tensors, checking every name and shape.

    `dtype=None` keeps the checkpoint's floating dtype. `lm_head=False` builds the trunk only
    (no `lm_head` entry, even for untied configs): `names` must then hold no head tensors.
    """
    shapes = init_params_shapes(config)
    names, get_tensor = _split_fused(config, set(names), get_tensor, source)
    unused = set(names)
    params: dict = {}

    def take(name: str, expected: tuple[int, ...]) -> np.ndarray:
        if name not in unused:
            what = "used twice" if name in names else "missing"
            raise CheckpointError(f"{source}: tensor {name!r} is {what}")
        unused.discard(name)
        tensor = get_tensor(name)
        if tuple(tensor.shape) != expected:
            raise CheckpointError(f"{source}: tensor {name!r} has shape {tuple(tensor.shape)}, "
                                  f"expected {expected} from config.json")
        return tensor

    for spec in tensor_specs(config, lm_head):
        shape = tuple(_get_path(shapes, spec.path).shape)
        if not spec.per_layer:
            value = take(spec.hf_name, shape)
            out_dtype = dtype or value.dtype
            _set_path(params, spec.path, np.ascontiguousarray(value, dtype=out_dtype))
            continue
        stacked = None
        for i in range(config.num_layers):
            value = take(spec.hf_name.format(i=i), shape[1:])
            if stacked is None:  # fill in place: no second copy of the stacked weights
                stacked = np.empty(shape, dtype=dtype or value.dtype)
            stacked[i] = value
        _set_path(params, spec.path, stacked)

    if lm_head and config.tie_word_embeddings and "lm_head.weight" in unused:
        # Some exporters store the tied head anyway; accept it only if it really is the embedding.
        head = get_tensor("lm_head.weight")
        embed = params["embed"]["embedding"]
        if head.shape != embed.shape or not np.array_equal(head.astype(embed.dtype), embed):
            raise CheckpointError(f"{source}: config ties the embeddings but 'lm_head.weight' "
                                  "differs from 'model.embed_tokens.weight'")
        unused.discard("lm_head.weight")
    # Rotary caches that some exporters serialise carry no information.
    unused -= {n for n in unused if n.endswith("rotary_emb.inv_freq")}
    if unused:
        extra = sorted(unused)
        raise CheckpointError(f"{source}: {len(extra)} tensor(s) not used by a "
                              f"{config.model_type} model: {', '.join(extra[:5])}"
                              + (" ..." if len(extra) > 5 else ""))
    return params


def tensors_from_params(config: ModelConfig, params) -> Iterator[tuple[str, np.ndarray]]:
    """HF-named numpy tensors for every parameter (fused projections fused back, each as soon
    as all its parts are read)."""
    fused = {first: (name, [part for part, _, _ in rows])
             for name, (first, rows) in _fused_parts(config).items()}
    held: dict[str, np.ndarray] = {}  # parts of a fused projection, until all are seen
    part_of = {part: first for first, (_, parts) in fused.items() for part in parts}
    for spec in tensor_specs(config):
        value = np.asarray(_get_path(params, spec.path))
        if not spec.per_layer:
            yield spec.hf_name, np.ascontiguousarray(value)
            continue
        for i in range(config.num_layers):
            name, tensor = spec.hf_name.format(i=i), np.ascontiguousarray(value[i])
            if name not in part_of:
                yield name, tensor
                continue
            held[name] = tensor
            fused_name, parts = fused[part_of[name]]
            if all(part in held for part in parts):
                yield fused_name, np.concatenate([held.pop(part) for part in parts])


# ---------------------------------------------------------------------------- reading files
# Floating dtypes a checkpoint tensor may have (safetensors header names). Anything else (ints,
# bools, fp8/fp4 without their scales) would be reinterpreted as weights, so it is refused.
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")

# Exponent-bit masks: a float is NaN or +-inf exactly when all its exponent bits are set.
# Checking the bits (an integer view, no float conversion) is one fast pass for every dtype.
_EXPONENT_BITS = {
    np.dtype(np.float16): (np.uint16, 0x7C00),
    np.dtype(ml_dtypes.bfloat16): (np.uint16, 0x7F80),
    np.dtype(np.float32): (np.uint32, 0x7F800000),
    np.dtype(np.float64): (np.uint64, 0x7FF0000000000000),
}
_FINITE_CHUNK = 1 << 18  # elements per step: bounds the temporaries to ~1 MiB


def count_nonfinite(value: np.ndarray) -> int:
    """How many entries of a floating array are NaN or +-inf, without copying the array."""
    if value.dtype.byteorder not in "=|" and value.dtype.newbyteorder("=") in _EXPONENT_BITS:
        value = value.astype(value.dtype.newbyteorder("="))  # bit masks are for native order
    if value.dtype not in _EXPONENT_BITS:
        # Other floating types (none reach here from the loaders) take the slower generic path.
        return int(value.size - np.count_nonzero(np.isfinite(value))) if (
            np.issubdtype(value.dtype, np.floating)) else 0
    uint, mask = _EXPONENT_BITS[value.dtype]
    flat = np.ascontiguousarray(value).reshape(-1).view(uint)
    exponent = uint(mask)
    return sum(int(np.count_nonzero((flat[i:i + _FINITE_CHUNK] & exponent) == exponent))
               for i in range(0, flat.size, _FINITE_CHUNK))


def check_finite(value: np.ndarray, where: str, name: str, hf_name: str | None = None
                 ) -> np.ndarray:
    """Raises CheckpointError when a tensor holds NaN or +-inf (they poison every logit)."""
    bad = count_nonfinite(value)
    if bad:
        also = f" (HF {hf_name!r})" if hf_name else ""
        raise CheckpointError(f"{where}: tensor {name!r}{also} has {bad} non-finite entr"
                              f"{'y' if bad == 1 else 'ies'} (NaN or +-inf) out of {value.size}")
    return value


def read_json_object(path: Path) -> dict:
    """A checkpoint's JSON file (config.json, generation_config.json) as a dict, or a
    CheckpointError naming the file."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    return raw


def refuse_pickle(path: Path) -> None:
    raise CheckpointError(
        f"{path}: refusing to load a pickle checkpoint ({path.suffix}): unpickling can run "
        "arbitrary code. Convert it to safetensors first (e.g. load it once in a trusted "
        "environment and call save_pretrained(..., safe_serialization=True)).")


@dataclasses.dataclass(frozen=True)
class SafetensorsCheckpoint:
    """The weight files of a folder and, when sharded, the index's tensor -> file map."""

    files: list[Path]
    index: Path | None = None
    weight_map: dict[str, str] | None = None


def safetensors_files(folder: Path) -> SafetensorsCheckpoint:
    """The checkpoint's safetensors files, following the shard index when there is one."""
    index_path = folder / SAFETENSORS_INDEX
    if index_path.exists():
        try:
            weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
            raise CheckpointError(f"{index_path}: not a safetensors index ({err!r})") from None
        if not isinstance(weight_map, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
            raise CheckpointError(f"{index_path}: 'weight_map' is not an object of "
                                  "tensor name -> file name")
        for tensor, shard in weight_map.items():
            # A shard is a file next to the index; "../x" or "/x" would read outside the folder.
            if Path(shard).name != shard:
                raise CheckpointError(f"{index_path}: tensor {tensor!r} points to {shard!r}, "
                                      "which is not a file name in this folder")
        files = [folder / f for f in sorted(set(weight_map.values()))]
        for f in files:
            if not f.is_file():
                raise CheckpointError(f"{index_path}: lists shard {f.name!r}, which is missing")
        return SafetensorsCheckpoint(files, index_path, weight_map)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickles = [p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            refuse_pickle(pickles[0])
        raise CheckpointError(f"{folder}: no *.safetensors weights found")
    return SafetensorsCheckpoint(files)


def _open_error(path: Path, err: Exception) -> CheckpointError:
    # safetensors raises its own SafetensorError (no file name); OSError covers unreadable files.
    return CheckpointError(f"{path}: not a readable safetensors file "
                           f"({type(err).__name__}: {err})")


def read_safetensors(checkpoint: SafetensorsCheckpoint | list[Path], skip: Collection[str] = ()
                     ) -> tuple[set[str], Callable[[str], np.ndarray]]:
    """Names and a lazy getter over several safetensors files (each tensor read when asked).

    Every header is read up front: a corrupt or truncated file, a tensor with a non-floating
    dtype, a tensor in two files, or an index that disagrees with its shards is a CheckpointError
    naming the file and the tensor before any weight is read. Each tensor is checked for NaN and
    +-inf as it is read. Tensors named in `skip` (bookkeeping buffers such as a reward
    model's integer `normalizer.count`) are left out, whatever their dtype.
    """
    if not isinstance(checkpoint, SafetensorsCheckpoint):
        checkpoint = SafetensorsCheckpoint(list(checkpoint))
    where: dict[str, Path] = {}
    for f in checkpoint.files:
        try:
            with safe_open(f, framework="numpy") as handle:
                dtypes = {name: handle.get_slice(name).get_dtype()
                          for name in handle.keys()}  # noqa: SIM118 (safe_open is no dict)
        except Exception as err:  # SafetensorError, OSError
            raise _open_error(f, err) from err
        for name, dtype in dtypes.items():
            if name in skip:
                continue
            if name in where:
                raise CheckpointError(f"tensor {name!r} appears in both {where[name]} and {f}")
            if dtype not in FLOAT_DTYPES:
                raise CheckpointError(f"{f}: tensor {name!r} has dtype {dtype}; checkpoint "
                                      f"weights must be floating ({', '.join(FLOAT_DTYPES)})")
            where[name] = f
    if checkpoint.weight_map is not None:
        _check_index(checkpoint, where, skip)

    def get(name: str) -> np.ndarray:
        path = where[name]
        try:
            with safe_open(path, framework="numpy") as handle:
                value = handle.get_tensor(name)
        except Exception as err:  # SafetensorError, OSError (file changed or cut short since)
            raise CheckpointError(f"{path}: tensor {name!r} could not be read "
                                  f"({type(err).__name__}: {err})") from err
        return check_finite(value, str(path), name)

    return set(where), get


def _check_index(checkpoint: SafetensorsCheckpoint, where: dict[str, Path],
                 skip: Collection[str] = ()) -> None:
    """The index and the shards must agree tensor by tensor; either one alone may be wrong."""
    index, weight_map = checkpoint.index, checkpoint.weight_map or {}
    for tensor, shard in sorted(weight_map.items()):
        if tensor in skip:
            continue
        if tensor not in where:
            raise CheckpointError(f"{index}: lists tensor {tensor!r} in {shard!r}, which has no "
                                  "such tensor")
        if where[tensor].name != shard:
            raise CheckpointError(f"{index}: lists tensor {tensor!r} in {shard!r}, but it is "
                                  f"in {where[tensor].name!r}")
    unlisted = sorted(set(where) - set(weight_map))
    if unlisted:
        raise CheckpointError(f"{index}: does not list tensor {unlisted[0]!r} found in "
                              f"{where[unlisted[0]]}" + (f" (and {len(unlisted) - 1} more)"
                                                         if len(unlisted) > 1 else ""))


# ---------------------------------------------------------------------------- writing files
def _parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    text = size.strip().upper()
    for unit, factor in sorted(units.items(), key=lambda kv: -len(kv[0])):
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


def write_safetensors(tensors: Mapping[str, np.ndarray], folder: Path,
                      max_shard_size: int | str = DEFAULT_MAX_SHARD_BYTES) -> list[str]:
    """Writes model.safetensors, or shards plus an index above `max_shard_size` bytes."""
    limit = _parse_size(max_shard_size)
    shards: list[dict[str, np.ndarray]] = [{}]
    sizes = [0]
    for name, value in tensors.items():
        if sizes[-1] and sizes[-1] + value.nbytes > limit:
            shards.append({})
            sizes.append(0)
        shards[-1][name] = value
        sizes[-1] += value.nbytes
    metadata = {"format": "pt"}  # transformers refuses files without a known format tag
    if len(shards) == 1:
        save_file(shards[0], folder / "model.safetensors", metadata=metadata)
        return ["model.safetensors"]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for file_name, shard in zip(names, shards):
        save_file(shard, folder / file_name, metadata=metadata)
        weight_map.update({tensor: file_name for tensor in shard})
    index = {"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}
    (folder / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2))
    return [*names, SAFETENSORS_INDEX]
