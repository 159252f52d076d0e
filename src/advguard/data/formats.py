"""Parsers for the official on-disk formats of the supported datasets, returning numpy arrays.

* CIFAR-10/100 python pickles (Krizhevsky 2009), read with a *restricted* unpickler;
* IDX files (LeCun et al. 1998; also Fashion-MNIST), gzipped or not;
* SVHN ``*_32x32.mat`` files (Netzer et al. 2011), MATLAB v5, via :func:`scipy.io.loadmat`;
* single RGB images (Tiny ImageNet JPEGs) via Pillow.

Every parser validates structure, shapes, dtypes and label ranges and raises
:class:`~advguard.errors.DatasetFormatError` whose message starts with the offending file's path.
No checksums are checked: local copies may legitimately be reordered (see ``shared/data``).

Security: the CIFAR files are Python pickles, which is their official format, and unpickling
arbitrary data can execute arbitrary code. :func:`load_restricted_pickle` therefore resolves only
the handful of numpy globals needed to rebuild arrays (plus ``_codecs.encode``, which Python 3
protocol-2 pickles use for bytes) and refuses everything else (``os.system``, ``eval``...), so a
malicious file in a data directory raises :class:`~advguard.errors.DatasetFormatError` instead of
running. Still, only read datasets from your own data directory.
"""

from __future__ import annotations

import gzip
import pickle
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from advguard.errors import DatasetFormatError

__all__ = [
    "load_restricted_pickle",
    "read_cifar_batch",
    "read_cifar_meta",
    "read_idx",
    "read_rgb_image",
    "read_svhn_mat",
]


# --------------------------------------------------------------------------- restricted pickles


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """(module, name) → object for the globals that numpy array pickles reference. The objects are
    taken from numpy's own reduce functions, so numpy 1.x and 2.x both work and the deprecated
    ``numpy.core`` alias (written by Python-2-era files) is never imported."""
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    scalar = np.float64(0).__reduce__()[0]
    import _codecs

    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _codecs.encode,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


class RefusedGlobalError(pickle.UnpicklingError):
    """A pickle referenced a global outside the allow-list."""


_ALLOWED_GLOBALS: Mapping[tuple[str, str], Any] = _allowed_globals()


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise RefusedGlobalError(f"{module}.{name}") from None


def load_restricted_pickle(path: Path) -> Any:
    """Unpickle ``path`` with ``encoding='bytes'`` (Python 2 strings become ``bytes``, Python 3
    strings stay ``str``), allowing only numpy-array globals.

    Raises :class:`~advguard.errors.DatasetFormatError` naming ``path`` if the file is truncated,
    not a pickle, or references any other global (``os.system``, ``builtins.eval``...), which is
    refused before anything runs.

    Example::

        batch = load_restricted_pickle(Path("cifar-10-batches-py/data_batch_1"))
        batch[b"data"].shape        # (10000, 3072)
    """
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f, encoding="bytes").load()
    except RefusedGlobalError as e:
        raise DatasetFormatError(
            f"{path}: refused to unpickle: the file references the global {e}, which a dataset "
            "pickle never contains (only numpy arrays, lists, dicts and strings are allowed); "
            "the file may be malicious") from None
    except OSError:
        raise
    except Exception as e:  # truncated / garbage pickles raise many different exception types
        raise DatasetFormatError(
            f"{path}: not a readable python pickle ({type(e).__name__}: {e}); the file is "
            "corrupted or truncated") from e


def _str_keys(obj: Any, path: Path) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise DatasetFormatError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def read_cifar_meta(path: Path, key: str, num_classes: int) -> tuple[str, ...]:
    """Class names stored under ``key`` (``'label_names'`` in CIFAR-10's ``batches.meta``,
    ``'fine_label_names'`` / ``'coarse_label_names'`` in CIFAR-100's ``meta``)."""
    meta = _str_keys(load_restricted_pickle(path), path)
    names = meta.get(key)
    if not isinstance(names, list | tuple) or len(names) != num_classes:
        got = f"{len(names)} entries" if isinstance(names, list | tuple) else repr(type(names))
        raise DatasetFormatError(
            f"{path}: expected {num_classes} class names under {key!r}, got {got}")
    return tuple(_text(n) for n in names)


def read_cifar_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR pickle → ``(data, labels)``: uint8 ``(N, 3072)`` (rows are 1024 red, 1024 green,
    1024 blue values of a 32×32 image, row-major) and int64 ``(N,)`` in ``[0, num_classes)``.
    ``label_key`` is ``'labels'`` (CIFAR-10) or ``'fine_labels'`` / ``'coarse_labels'``
    (CIFAR-100). Keys may be ``bytes`` (official Python 2 files) or ``str``."""
    batch = _str_keys(load_restricted_pickle(path), path)
    data = batch.get("data")
    if not isinstance(data, np.ndarray):
        raise DatasetFormatError(f"{path}: no 'data' array (keys: {sorted(batch)})")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DatasetFormatError(
            f"{path}: 'data' must be uint8 (N, 3072), got {data.dtype} {data.shape}")
    if label_key not in batch:
        raise DatasetFormatError(f"{path}: no {label_key!r} entry (keys: {sorted(batch)})")
    try:
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as e:
        raise DatasetFormatError(f"{path}: {label_key!r} is not a list of integers ({e})") from e
    if labels.shape != (data.shape[0],):
        raise DatasetFormatError(
            f"{path}: {data.shape[0]} images but {label_key!r} has shape {labels.shape}")
    _check_label_range(labels, num_classes, path)
    return data, labels


def _check_label_range(labels: np.ndarray, num_classes: int, path: Path) -> None:
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise DatasetFormatError(
            f"{path}: labels must lie in [0, {num_classes}), got [{int(labels.min())}, "
            f"{int(labels.max())}]")


# --------------------------------------------------------------------------- IDX

_IDX_DTYPES = {0x08: np.dtype(np.uint8)}  # MNIST-style files use unsigned bytes only


def read_idx(path: Path, *, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (``*-idx3-ubyte`` images, ``*-idx1-ubyte`` labels), gzipped or not (detected
    from the content, not the name) → uint8 array of the stored shape (writable).

    Validates the magic number (``0x00 0x00 0x08 ndim``), ``ndim`` if given, and that the payload
    size equals the product of the dimensions (a truncated or padded file is an error).

    Example::

        read_idx(Path("fashion-mnist/t10k-images-idx3-ubyte.gz")).shape   # (10000, 28, 28)
    """
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DatasetFormatError(f"{path}: corrupted or truncated gzip data ({e})") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise DatasetFormatError(
            f"{path}: not an unsigned-byte IDX file (magic bytes {raw[:4].hex() or 'missing'}, "
            "expected 000008 followed by the number of dimensions)")
    dims_n = raw[3]
    if ndim is not None and dims_n != ndim:
        raise DatasetFormatError(f"{path}: expected an IDX file with {ndim} dimensions, "
                                 f"got {dims_n}")
    header = 4 + 4 * dims_n
    if len(raw) < header:
        raise DatasetFormatError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{dims_n}I", raw[4:header])
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        raise DatasetFormatError(
            f"{path}: IDX header says dimensions {dims} ({expected} bytes) but the file has "
            f"{len(raw)} bytes; the file is truncated or corrupted")
    buf = bytearray(memoryview(raw)[header:])  # writable, so torch.from_numpy does not warn
    return np.frombuffer(buf, dtype=_IDX_DTYPES[raw[2]]).reshape(dims)


# --------------------------------------------------------------------------- SVHN .mat


def read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One SVHN cropped-digits file (``train_32x32.mat``...) → ``(images, labels)``: uint8
    ``(N, 3, 32, 32)`` and int64 ``(N,)`` in ``[0, 10)``. The file stores ``X`` as
    ``(32, 32, 3, N)`` and ``y`` as ``(N, 1)`` with digit 0 labelled 10, mapped here to 0."""
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path), variable_names=["X", "y"])
    except FileNotFoundError:
        raise
    except Exception as e:  # scipy raises ValueError, MatReadError, NotImplementedError (v7.3)...
        raise DatasetFormatError(
            f"{path}: not a readable MATLAB v5 file ({type(e).__name__}: {e})") from e
    X, y = mat.get("X"), mat.get("y")
    if not isinstance(X, np.ndarray) or not isinstance(y, np.ndarray):
        raise DatasetFormatError(f"{path}: missing variables 'X' and/or 'y'")
    if X.dtype != np.uint8 or X.ndim != 4 or X.shape[:3] != (32, 32, 3):
        raise DatasetFormatError(
            f"{path}: 'X' must be uint8 (32, 32, 3, N), got {X.dtype} {X.shape}")
    n = X.shape[3]
    if y.size != n or y.ndim not in (1, 2) or (y.ndim == 2 and 1 not in y.shape):
        raise DatasetFormatError(f"{path}: 'y' must have shape ({n}, 1), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) and not np.issubdtype(y.dtype, np.floating):
        raise DatasetFormatError(f"{path}: 'y' must be numeric, got {y.dtype}")
    labels = y.reshape(n).astype(np.int64)
    if y.size and not np.array_equal(labels, y.reshape(n)):
        raise DatasetFormatError(f"{path}: 'y' contains non-integer labels")
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) > 10):
        raise DatasetFormatError(
            f"{path}: labels must lie in 1..10 (10 = digit 0), got [{int(labels.min())}, "
            f"{int(labels.max())}]")
    labels[labels == 10] = 0
    images = np.ascontiguousarray(X.transpose(3, 2, 0, 1))  # (H, W, C, N) → (N, C, H, W)
    return images, labels


# --------------------------------------------------------------------------- images


def read_rgb_image(path: Path, size: tuple[int, int]) -> np.ndarray:
    """Decode one image file with Pillow, convert to RGB (greyscale JPEGs exist in Tiny ImageNet)
    → uint8 ``(H, W, 3)``; ``size`` is the required ``(width, height)``; images of another size
    are an error, never resized."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            got = im.size
            pixels = np.asarray(im.convert("RGB"), dtype=np.uint8) if got == size else None
    except FileNotFoundError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DatasetFormatError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e
    if pixels is None:
        raise DatasetFormatError(
            f"{path}: expected a {size[0]}×{size[1]} image, got {got[0]}×{got[1]}")
    return pixels
