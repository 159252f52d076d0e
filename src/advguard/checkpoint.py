"""Checkpoints: tensors in ``safetensors``, everything else as a JSON record — never a pickle.

A model checkpoint is one ``.safetensors`` file whose header carries a JSON metadata record under
the key ``"advguard"``: the architecture and its arguments (:class:`~advguard.models.ModelSpec`,
which includes the input normalization), dataset, training recipe and hyper-parameters, seed,
metrics, advguard version and git commit. :func:`load_checkpoint` rebuilds the model from that
record; no Python object is ever unpickled, so a checkpoint from an untrusted source cannot run
code. Foreign ``.pt``/``.pth`` weight files are accepted by :func:`load_state_dict_file` only
through ``torch.load(weights_only=True)``.

Training state (optimizer, scheduler, generator states, partial metrics) uses the same container:
:func:`save_state` flattens any nest of dicts/lists/tuples/scalars/tensors into a tensor table plus
a JSON skeleton, and :func:`load_state` restores the nest exactly (int dict keys and tuples
included).

Example::

    save_checkpoint("model.safetensors", model, metadata={"dataset": "cifar10"})
    model, meta = load_checkpoint("model.safetensors")
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from advguard.errors import CheckpointError

FORMAT = "advguard-checkpoint/1"
STATE_FORMAT = "advguard-state/1"
_META_KEY = "advguard"


# ------------------------------------------------------------------ nested (de)serialization
def _encode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().to("cpu").clone().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        return {"__float__": repr(obj)}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors) for v in obj]
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, tensors) for k, v in obj.items()}
        return {"__items__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, torch.device):
        return {"__device__": str(obj)}
    if isinstance(obj, torch.dtype):
        return {"__dtype__": str(obj).removeprefix("torch.")}
    raise CheckpointError(f"cannot store an object of type {type(obj).__name__} in a checkpoint")


def _decode(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        try:
            return tensors[obj["__tensor__"]]
        except KeyError:
            raise CheckpointError(f"checkpoint lacks tensor {obj['__tensor__']!r}") from None
    if "__float__" in obj:
        return float(obj["__float__"])
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {_hashable(_decode(k, tensors)): _decode(v, tensors) for k, v in obj["__items__"]}
    if "__device__" in obj:
        return torch.device(obj["__device__"])
    if "__dtype__" in obj:
        dtype = getattr(torch, obj["__dtype__"], None)
        if not isinstance(dtype, torch.dtype):
            raise CheckpointError(f"unknown dtype {obj['__dtype__']!r} in checkpoint")
        return dtype
    return {k: _decode(v, tensors) for k, v in obj.items()}


def _json_only(meta: Mapping[str, Any]) -> Any:
    stray: dict[str, torch.Tensor] = {}
    encoded = _encode(dict(meta), stray)
    if stray:
        raise CheckpointError("checkpoint metadata must be JSON data, not tensors")
    return encoded


def _hashable(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


def _atomic_save(path: Path, tensors: dict[str, torch.Tensor], header: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={_META_KEY: json.dumps(header, sort_keys=True)})
        os.replace(tmp, path)  # atomic on POSIX: a crash leaves the old file or the new one
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_header(path: str | Path, expected_format: str) -> dict[str, Any]:
    """The advguard record of a checkpoint or training-state file, read from its safetensors
    header alone (no tensor is loaded); a :class:`CheckpointError` otherwise."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    try:
        with safe_open(str(p), framework="pt") as f:
            raw = (f.metadata() or {}).get(_META_KEY)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{p} is not a readable safetensors file: {exc}") from None
    if raw is None:
        raise CheckpointError(f"{p} is a safetensors file but not an advguard checkpoint "
                              "(no 'advguard' metadata); use load_state_dict_file for raw weights")
    try:
        header = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{p}: corrupted metadata record ({exc})") from None
    if header.get("format") != expected_format:
        raise CheckpointError(
            f"{p}: expected format {expected_format!r}, found {header.get('format')!r}")
    return header


def _read(path: str | Path, expected_format: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    header = _read_header(path, expected_format)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from None
    return tensors, header


def is_advguard_file(path: str | Path, expected_format: str) -> dict[str, Any] | None:
    """The advguard record of ``path`` when it is an advguard file of ``expected_format``
    (:data:`FORMAT` or :data:`STATE_FORMAT`), else None — never raises."""
    try:
        return _read_header(path, expected_format)
    except CheckpointError:
        return None


# --------------------------------------------------------------------------- training state
def save_state(path: str | Path, state: Mapping[str, Any]) -> Path:
    """Write a nest of dicts/lists/tuples/scalars/tensors atomically (no pickle)."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _encode(dict(state), tensors)
    p = Path(path)
    _atomic_save(p, tensors, {"format": STATE_FORMAT, "state": skeleton})
    return p


def load_state(path: str | Path) -> dict[str, Any]:
    """Inverse of :func:`save_state`. Tensors come back on the CPU."""
    tensors, header = _read(path, STATE_FORMAT)
    state = _decode(header["state"], tensors)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: state is not a mapping")
    return state


# --------------------------------------------------------------------------- model checkpoints
class LoadedCheckpoint(NamedTuple):
    """A model rebuilt from a checkpoint, with its metadata record (unpacks as a pair)."""

    model: nn.Module
    metadata: dict[str, Any]


def save_checkpoint(path: str | Path, model: nn.Module, *,
                    metadata: Mapping[str, Any] | None = None) -> Path:
    """Save ``model`` (a :class:`~advguard.models.Normalized` carrying its ``spec``) with a JSON
    metadata record. Written atomically. Returns the path."""
    from advguard.models import ModelSpec
    from advguard.utils import environment_info

    spec = getattr(model, "spec", None)
    if not isinstance(spec, ModelSpec):
        raise CheckpointError("save_checkpoint needs a model built by advguard.models.create_model "
                              "(it carries the architecture spec needed to rebuild it)")
    meta: dict[str, Any] = dict(metadata or {})
    meta.setdefault("environment", environment_info())
    header = {"format": FORMAT, "model": spec.to_dict(), "metadata": _json_only(meta)}
    tensors = {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}
    p = Path(path)
    _atomic_save(p, tensors, header)
    return p


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata record (and model spec under ``"model"``) of a checkpoint, without building
    the model."""
    header = _read_header(path, FORMAT)
    meta = _decode(header.get("metadata", {}), {})
    return {"model": header["model"], **meta}


def load_checkpoint(path: str | Path, *, device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Rebuild the model saved by :func:`save_checkpoint`, in eval mode, on ``device``."""
    from advguard.models import create_model_from_spec

    tensors, header = _read(path, FORMAT)
    try:
        model = create_model_from_spec(header["model"])
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: invalid model spec in metadata ({exc})") from None
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).strip().splitlines()[1:] if ln.strip()]
        detail = "; ".join(lines[:3]) + (f"; ... ({len(lines) - 3} more)" if len(lines) > 3
                                         else "")
        raise CheckpointError(f"{path}: weights do not match the recorded architecture "
                              f"{header['model'].get('name')!r}: {detail}") from None
    model.to(device).eval()
    meta = _decode(header.get("metadata", {}), {})
    if isinstance(meta.get("dataset"), str):  # what it was trained on, for resource checks
        model.dataset_name = meta["dataset"]  # (advguard.defenses.resources.input_facts)
    return LoadedCheckpoint(model, {"model": header["model"], **meta})


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read raw weights from ``.safetensors`` or, for foreign files, ``.pt``/``.pth``/``.bin`` with
    ``torch.load(weights_only=True)`` (which refuses arbitrary pickled objects)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"weights file not found: {p}")
    if p.suffix == ".safetensors":
        try:
            return load_file(str(p))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{p} is not a readable safetensors file: {exc}") from None
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError/RuntimeError for unsafe content
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"refusing to load {p}: not a plain weights file ({first})") from None
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{p} does not contain a mapping of names to tensors")
    return dict(obj)
