"""Tests of advguard.data: readers of the official formats (on tiny files written here in those
formats), root resolution, the registry, the bundled Fashion-MNIST sample, deterministic subsets,
the in-memory loader and augmentations. CPU, offline."""

from __future__ import annotations

import dataclasses
import gzip
import io
import os
import pickle
import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from advguard.data import (
    DATASETS,
    Compose,
    DatasetInfo,
    HorizontalFlip,
    ImageDataset,
    InMemoryLoader,
    RandomCrop,
    TinyImageNetReader,
    balanced_subset,
    dataset_info,
    find_dataset_dir,
    first_n,
    list_datasets,
    load_dataset,
    resolve_root,
    standard_augmentation,
    train_val_split,
)
from advguard.data.datasets import PACKAGE_DIR
from advguard.errors import ConfigError, DatasetFormatError, DatasetNotFoundError, UnknownNameError

FMNIST_SYSTEM = Path("/usr/share/datasets/fashion-mnist")
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck"]


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------- writers


_PurePythonPickler: Any = pickle._Pickler


class _Py2StylePickler(_PurePythonPickler):
    """Writes bytes as protocol-2 STRING opcodes, as the official (Python 2) CIFAR files do."""

    def save_bytes(self, obj: bytes) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + n.to_bytes(4, "little") + obj)
        self.memoize(obj)

    dispatch: ClassVar[dict[type, Any]] = dict(_PurePythonPickler.dispatch)
    dispatch[bytes] = save_bytes


def _keys(obj: dict[str, Any], as_bytes: bool) -> dict[Any, Any]:
    def conv(v: Any) -> Any:
        if as_bytes and isinstance(v, list) and v and isinstance(v[0], str):
            return [s.encode() for s in v]
        return v
    return {(k.encode() if as_bytes else k): conv(v) for k, v in obj.items()}


def dump_py2(obj: dict[str, Any], path: Path) -> None:
    buf = io.BytesIO()
    _Py2StylePickler(buf, protocol=2).dump(_keys(obj, as_bytes=True))
    path.write_bytes(buf.getvalue().replace(b"cnumpy._core.multiarray\n",
                                            b"cnumpy.core.multiarray\n"))


def dump_py3_bytes_keys(obj: dict[str, Any], path: Path) -> None:  # uses _codecs.encode
    path.write_bytes(pickle.dumps(_keys(obj, as_bytes=True), protocol=2))


def dump_py3_str_keys(obj: dict[str, Any], path: Path) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=4))


PICKLE_WRITERS: dict[str, Callable[[dict[str, Any], Path], None]] = {
    "py2-bytes-keys": dump_py2, "py3-protocol2-bytes-keys": dump_py3_bytes_keys,
    "py3-str-keys": dump_py3_str_keys}


def write_cifar10(folder: Path, dump: Callable[[dict[str, Any], Path], None] = dump_py2,
                  per_batch: int = 4) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Official cifar-10-batches-py layout with 5×per_batch train and 2×per_batch test images."""
    folder.mkdir(parents=True, exist_ok=True)
    r = rng(1)
    out: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"train": [], "test": []}
    files = [(f"data_batch_{i}", "train", per_batch) for i in range(1, 6)]
    files.append(("test_batch", "test", 2 * per_batch))
    for name, split, n in files:
        data = r.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = r.integers(0, 10, n).tolist()
        dump({"batch_label": name, "labels": labels, "data": data,
              "filenames": [f"img{i}.png" for i in range(n)]}, folder / name)
        out[split].append((data, np.array(labels)))
    dump({"label_names": CIFAR10_NAMES, "num_cases_per_batch": per_batch, "num_vis": 3072},
         folder / "batches.meta")
    return {s: (np.concatenate([d for d, _ in v]), np.concatenate([lab for _, lab in v]))
            for s, v in out.items()}


def idx_bytes(array: np.ndarray) -> bytes:
    return (bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
            + array.astype(np.uint8).tobytes())


def write_idx_dataset(folder: Path, *, gz: bool, n_train: int = 12,
                      n_test: int = 6) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder.mkdir(parents=True, exist_ok=True)
    r = rng(2)
    out = {}
    for split, stem, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = r.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = r.integers(0, 10, n, dtype=np.uint8)
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            blob = idx_bytes(arr)
            name = f"{stem}-{kind}-ubyte"
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(blob))
            else:
                (folder / name).write_bytes(blob)
        out[split] = (images, labels.astype(np.int64))
    return out


def write_svhn(folder: Path, split: str = "train", n: int = 7) -> tuple[np.ndarray, np.ndarray]:
    from scipy.io import savemat

    folder.mkdir(parents=True, exist_ok=True)
    r = rng(3)
    X = r.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
    y = r.integers(1, 11, (n, 1)).astype(np.uint8)
    y[0, 0] = 10
    savemat(str(folder / f"{split}_32x32.mat"), {"X": X, "y": y})
    return X, y


def write_tiny_imagenet(folder: Path, wnids: tuple[str, ...] = ("n02", "n01")) -> None:
    from PIL import Image

    r = rng(4)
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (folder / "words.txt").write_text("n01\tgoldfish, Carassius auratus\nn02\tlion, king of "
                                      "beasts\nn99\tunused\n")
    for wnid in wnids:
        img_dir = folder / "train" / wnid / "images"
        img_dir.mkdir(parents=True)
        for i in (0, 2, 10):  # natural order _0, _2, _10 (lexicographic: _0, _10, _2)
            Image.fromarray(r.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
                img_dir / f"{wnid}_{i}.JPEG")
    lines = []
    for i, wnid in enumerate(["n01", "n02", "n02", "n01"]):
        arr = r.integers(0, 256, (64, 64), dtype=np.uint8)  # greyscale: must become RGB
        Image.fromarray(arr, mode="L").save(folder / "val" / "images" / f"val_{i}.JPEG")
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")


def small_reader(num_classes: int = 2, **kw: Any) -> TinyImageNetReader:
    info = dataclasses.replace(dataset_info("tiny-imagenet"), num_classes=num_classes)
    return TinyImageNetReader(info, **kw)


def make_ds(labels: list[int], num_classes: int | None = None) -> ImageDataset:
    """Dataset whose image i is a 1×2×2 image filled with i/1000: images identify examples."""
    n = len(labels)
    images = (torch.arange(n, dtype=torch.float32) / 1000).view(n, 1, 1, 1).expand(n, 1, 2, 2)
    k = num_classes or max(labels) + 1
    return ImageDataset(images.contiguous(), torch.tensor(labels, dtype=torch.int64),
                        tuple(str(c) for c in range(k)), "toy", "train")


def ids(x: torch.Tensor) -> list[int]:
    return [round(v * 1000) for v in x[:, 0, 0, 0].tolist()]


# ----------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("writer", list(PICKLE_WRITERS))
def test_cifar10_reads_official_layout(tmp_path: Path, writer: str) -> None:
    raw = write_cifar10(tmp_path / "cifar-10-batches-py", PICKLE_WRITERS[writer])
    for split, n in (("train", 20), ("test", 8)):
        ds = load_dataset("cifar10", split, root=tmp_path)
        data, labels = raw[split]
        assert (len(ds), ds.image_shape, ds.num_classes) == (n, (3, 32, 32), 10)
        assert ds.images.dtype == torch.float32
        assert ds.labels.dtype == torch.int64
        assert ds.classes == tuple(CIFAR10_NAMES)
        assert (ds.name, ds.split) == ("cifar10", split)
        expected = torch.from_numpy(data.reshape(n, 3, 32, 32).astype(np.float32)) / 255
        assert torch.equal(ds.images, expected)  # exact v/255, channel planes in R, G, B order
        assert torch.equal((ds.images * 255).round().to(torch.uint8).reshape(n, -1),
                           torch.from_numpy(data))
        assert ds.labels.tolist() == labels.tolist()
        assert ds.indices is None


def test_cifar100_fine_and_coarse_labels(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    r = rng(5)
    fine = [f"fine{i}" for i in range(100)]
    coarse = [f"coarse{i}" for i in range(20)]
    dump_py2({"fine_label_names": fine, "coarse_label_names": coarse}, folder / "meta")
    raw = {}
    for split, n in (("train", 10), ("test", 5)):
        data = r.integers(0, 256, (n, 3072), dtype=np.uint8)
        f, c = r.integers(0, 100, n).tolist(), r.integers(0, 20, n).tolist()
        dump_py3_str_keys({"data": data, "fine_labels": f, "coarse_labels": c}, folder / split)
        raw[split] = (data, f, c)
    for split, (data, f, c) in raw.items():
        ds = load_dataset("cifar100", split, root=tmp_path)
        assert ds.num_classes == 100
        assert ds.classes[7] == "fine7"
        assert ds.labels.tolist() == f
        assert torch.equal(ds.images.flatten(1) * 255, torch.from_numpy(data).float())
        ds_c = load_dataset("cifar100-coarse", split, root=tmp_path)
        assert ds_c.num_classes == 20
        assert ds_c.classes[3] == "coarse3"
        assert ds_c.labels.tolist() == c


CORRUPTIONS: dict[str, Callable[[Path], object]] = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
    "garbage": lambda p: p.write_bytes(b"this is not a pickle at all"),
    "wrong-shape": lambda p: dump_py2({"data": np.zeros((4, 3000), np.uint8),
                                       "labels": [0, 1, 2, 3]}, p),
    "wrong-dtype": lambda p: dump_py2({"data": np.zeros((4, 3072), np.float32),
                                       "labels": [0, 1, 2, 3]}, p),
    "label-out-of-range": lambda p: dump_py2({"data": np.zeros((4, 3072), np.uint8),
                                              "labels": [0, 1, 2, 10]}, p),
    "label-count": lambda p: dump_py2({"data": np.zeros((4, 3072), np.uint8),
                                       "labels": [0, 1]}, p),
    "no-labels": lambda p: dump_py2({"data": np.zeros((4, 3072), np.uint8)}, p),
    "not-a-dict": lambda p: dump_py3_str_keys([1, 2, 3], p),  # type: ignore[arg-type]
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_cifar_corrupted_file_names_the_file(tmp_path: Path, corruption: str) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    CORRUPTIONS[corruption](folder / "data_batch_3")
    with pytest.raises(DatasetFormatError, match="data_batch_3"):
        load_dataset("cifar10", "train", root=tmp_path)
    assert len(load_dataset("cifar10", "test", root=tmp_path)) == 8  # other files unaffected


class _Evil:
    def __init__(self, func: Callable[..., Any], arg: str) -> None:
        self.func, self.arg = func, arg

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.func, (self.arg,))


@pytest.mark.parametrize("func", [os.system, eval])
def test_malicious_pickle_is_refused(tmp_path: Path, func: Callable[..., Any]) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    marker = tmp_path / "pwned"
    payload = (f"touch {marker}" if func is os.system
               else f"open({str(marker)!r}, 'w').write('x')")
    (folder / "test_batch").write_bytes(pickle.dumps({"data": _Evil(func, payload)}, protocol=2))
    with pytest.raises(DatasetFormatError, match=r"test_batch.*refused.*(system|eval)"):
        load_dataset("cifar10", "test", root=tmp_path)
    assert not marker.exists()
    # sanity check that the payload is live: an unrestricted load would have run it
    pickle.loads((folder / "test_batch").read_bytes())
    assert marker.exists()


def test_missing_split_file_is_reported(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    (folder / "data_batch_4").unlink()
    with pytest.raises(DatasetNotFoundError, match="data_batch_4"):
        load_dataset("cifar10", "train", root=tmp_path)


def test_py2_numpy_core_globals_load_without_warnings(tmp_path: Path) -> None:
    """Python-2-era files reference numpy.core.multiarray; the allow-list resolves it without
    importing the deprecated numpy.core alias."""
    import warnings

    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder, dump_py2, per_batch=1)
    assert b"cnumpy.core.multiarray\n" in (folder / "test_batch").read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(load_dataset("cifar10", "test", root=tmp_path)) == 2


# ----------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [True, False], ids=["gzipped", "raw"])
def test_idx_reader_mnist(tmp_path: Path, gz: bool) -> None:
    raw = write_idx_dataset(tmp_path / "mnist", gz=gz)
    for split, (images, labels) in raw.items():
        ds = load_dataset("mnist", split, root=tmp_path)
        assert ds.image_shape == (1, 28, 28)
        assert len(ds) == len(labels)
        assert torch.equal(ds.images[:, 0], torch.from_numpy(images).float() / 255)
        assert ds.labels.tolist() == labels.tolist()
        assert ds.classes == tuple("0123456789")


def test_idx_dotted_file_names_are_accepted(tmp_path: Path) -> None:
    raw = write_idx_dataset(tmp_path, gz=False)
    for p in list(tmp_path.iterdir()):
        p.rename(p.with_name(p.name.replace("-idx", ".idx")))
    ds = load_dataset("fashion-mnist", "test", root=tmp_path)  # root is the dataset folder
    assert ds.labels.tolist() == raw["test"][1].tolist()
    assert ds.classes[0] == "T-shirt/top"


def _rewrite(path: Path, fn: Callable[[bytes], bytes]) -> None:
    data = path.read_bytes()
    gz = data[:2] == b"\x1f\x8b"
    out = fn(gzip.decompress(data) if gz else data)
    path.write_bytes(gzip.compress(out) if gz else out)


IDX_CORRUPTIONS: dict[str, tuple[str, Callable[[Path], object]]] = {
    "wrong-magic": ("train-images-idx3-ubyte.gz",
                    lambda p: _rewrite(p, lambda b: b"\x00\x00\x0d\x03" + b[4:])),
    "wrong-ndim": ("train-labels-idx1-ubyte.gz",
                   lambda p: _rewrite(p, lambda b: b"\x00\x00\x08\x03" + b[4:])),
    "truncated": ("train-images-idx3-ubyte.gz", lambda p: _rewrite(p, lambda b: b[:-100])),
    "padded": ("train-labels-idx1-ubyte.gz", lambda p: _rewrite(p, lambda b: b + b"\x00")),
    "bad-gzip": ("train-images-idx3-ubyte.gz",
                 lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])),
    "label-out-of-range": ("train-labels-idx1-ubyte.gz",
                           lambda p: _rewrite(p, lambda b: b[:-1] + b"\x0a")),
    "count-mismatch": ("train-labels-idx1-ubyte.gz",
                       lambda p: p.write_bytes(gzip.compress(idx_bytes(np.zeros(5, np.uint8))))),
}


@pytest.mark.parametrize("corruption", list(IDX_CORRUPTIONS))
def test_idx_corrupted_file_names_the_file(tmp_path: Path, corruption: str) -> None:
    write_idx_dataset(tmp_path / "mnist", gz=True)
    name, corrupt = IDX_CORRUPTIONS[corruption]
    corrupt(tmp_path / "mnist" / name)
    with pytest.raises(DatasetFormatError, match=name.replace(".", r"\.")):
        load_dataset("mnist", "train", root=tmp_path)


# ----------------------------------------------------------------------------- SVHN


def test_svhn_mat_reader(tmp_path: Path) -> None:
    X, y = write_svhn(tmp_path / "svhn", "train")
    write_svhn(tmp_path / "svhn", "extra", n=3)
    ds = load_dataset("svhn", "train", root=tmp_path)
    n = X.shape[3]
    assert (len(ds), ds.image_shape) == (n, (3, 32, 32))
    for i in (0, n - 1):  # X[h, w, c, i] is pixel (c, h, w) of image i
        assert torch.equal(ds.images[i], torch.from_numpy(X[:, :, :, i]).permute(2, 0, 1) / 255)
    expected = y[:, 0].astype(np.int64) % 10
    assert ds.labels.tolist() == expected.tolist()
    assert ds.labels[0] == 0
    assert len(load_dataset("svhn", "extra", root=tmp_path)) == 3
    with pytest.raises(DatasetNotFoundError, match=r"test_32x32\.mat"):
        load_dataset("svhn", "test", root=tmp_path)


def test_svhn_corrupted(tmp_path: Path) -> None:
    from scipy.io import savemat

    folder = tmp_path / "svhn"
    write_svhn(folder, "train")
    (folder / "test_32x32.mat").write_bytes(b"MATLAB 5.0 MAT-file garbage" * 3)
    with pytest.raises(DatasetFormatError, match=r"test_32x32\.mat"):
        load_dataset("svhn", "test", root=tmp_path)
    savemat(str(folder / "test_32x32.mat"), {"X": np.zeros((28, 28, 1, 2), np.uint8),
                                             "y": np.ones((2, 1))})
    with pytest.raises(DatasetFormatError, match=r"test_32x32\.mat.*'X'"):
        load_dataset("svhn", "test", root=tmp_path)
    savemat(str(folder / "test_32x32.mat"), {"X": np.zeros((32, 32, 3, 2), np.uint8),
                                             "y": np.array([[1], [11]])})
    with pytest.raises(DatasetFormatError, match=r"test_32x32\.mat.*labels"):
        load_dataset("svhn", "test", root=tmp_path)


# ----------------------------------------------------------------------------- Tiny ImageNet


def test_tiny_imagenet_reader(tmp_path: Path) -> None:
    from PIL import Image

    write_tiny_imagenet(tmp_path)
    train = small_reader()(tmp_path, "train")
    assert (len(train), train.image_shape) == (6, (3, 64, 64))
    assert train.classes == ("n01", "n02")  # sorted WordNet ids
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    third = tmp_path / "train" / "n01" / "images" / "n01_10.JPEG"  # natural order: _0, _2, _10
    expected = np.array(Image.open(third).convert("RGB"))
    assert torch.equal(train.images[2], torch.from_numpy(expected).permute(2, 0, 1) / 255)
    val = small_reader(class_names="words")(tmp_path, "val")
    assert val.labels.tolist() == [0, 1, 1, 0]
    assert val.classes == ("goldfish", "lion")
    grey = np.array(Image.open(tmp_path / "val" / "images" / "val_1.JPEG"))
    assert grey.ndim == 2  # stored greyscale, read as three equal channels
    assert torch.equal(val.images[1], torch.from_numpy(grey).float().div(255).expand(3, 64, 64))
    with pytest.raises(ConfigError, match="no public labels"):
        small_reader()(tmp_path, "test")


def test_tiny_imagenet_errors(tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "tiny-imagenet-200"
    write_tiny_imagenet(folder)
    with pytest.raises(DatasetFormatError, match=r"wnids\.txt.*200"):  # official: 200 classes
        load_dataset("tiny-imagenet", "val", root=tmp_path)
    Image.new("RGB", (32, 32)).save(folder / "val" / "images" / "val_2.JPEG")
    with pytest.raises(DatasetFormatError, match=r"val_2\.JPEG.*64×64"):
        small_reader()(folder, "val")
    (folder / "val" / "images" / "val_2.JPEG").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetFormatError, match=r"val_2\.JPEG"):
        small_reader()(folder, "val")
    (folder / "val" / "images" / "val_2.JPEG").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"val_2\.JPEG"):
        small_reader()(folder, "val")
    with (folder / "val" / "val_annotations.txt").open("a") as f:
        f.write("val_9.JPEG\tn77\t0\t0\t1\t1\n")
    with pytest.raises(DatasetFormatError, match=r"val_annotations\.txt.*line 5"):
        small_reader()(folder, "val")


# ----------------------------------------------------------------------------- finding data


def test_missing_dataset_lists_every_place_looked(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("cifar10", "train", root=tmp_path / "nowhere")
    msg = str(err.value)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in msg
    assert f"{tmp_path / 'nowhere'}," in msg or f"{tmp_path / 'nowhere'} (" in msg
    assert "unpack.py" in msg
    assert "cifar-10-python.tar.gz" in msg
    assert "root argument" in msg
    assert "\n" not in msg  # one line, as the CLI prints it
    with pytest.raises(DatasetNotFoundError, match=r"svhn.*train_32x32\.mat.*ufldl"):
        find_dataset_dir("svhn", tmp_path)


def test_root_resolution_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_root, arg_root, home = tmp_path / "env", tmp_path / "arg", tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("ADVGUARD_DATA", raising=False)
    assert resolve_root() == home / ".cache" / "advguard" / "data"
    monkeypatch.setenv("ADVGUARD_DATA", "")  # empty means unset
    assert resolve_root() == home / ".cache" / "advguard" / "data"
    monkeypatch.setenv("ADVGUARD_DATA", str(env_root))
    assert resolve_root() == env_root
    assert resolve_root(arg_root) == arg_root
    assert resolve_root(str(arg_root)) == arg_root
    assert resolve_root("~/x") == home / "x"
    # the same precedence decides where datasets are read from
    write_cifar10(env_root / "cifar-10-batches-py", per_batch=1)
    write_cifar10(arg_root / "cifar-10-batches-py", per_batch=2)
    assert len(load_dataset("cifar10", "test")) == 2
    assert len(load_dataset("cifar10", "test", root=arg_root)) == 4
    with pytest.raises(DatasetNotFoundError, match=r"\$ADVGUARD_DATA"):
        load_dataset("mnist", "test")
    monkeypatch.delenv("ADVGUARD_DATA")
    with pytest.raises(DatasetNotFoundError, match=re.escape(str(home / ".cache"))):
        load_dataset("cifar10", "test")


def test_root_may_be_the_dataset_folder(tmp_path: Path) -> None:
    write_cifar10(tmp_path / "cifar-10-batches-py", per_batch=1)
    assert find_dataset_dir("cifar10", tmp_path) == tmp_path / "cifar-10-batches-py"
    assert find_dataset_dir("cifar10", tmp_path / "cifar-10-batches-py") == \
        tmp_path / "cifar-10-batches-py"
    assert len(load_dataset("cifar10", "test", root=tmp_path / "cifar-10-batches-py")) == 2


# ----------------------------------------------------------------------------- registry


def test_registry_names_and_patterns() -> None:
    expected = {"cifar10", "cifar100", "mnist", "fashion-mnist", "svhn", "tiny-imagenet",
                "fashion-mnist-sample"}
    assert expected <= set(list_datasets())
    assert list_datasets("cifar*") == ["cifar10", "cifar100", "cifar100-coarse"]
    assert list_datasets("fashion*") == ["fashion-mnist", "fashion-mnist-sample"]
    with pytest.raises(UnknownNameError, match=r"unknown dataset 'cifar-10'.*'cifar10'"):
        load_dataset("cifar-10")
    with pytest.raises(UnknownNameError, match="'fashion-mnist'"):
        dataset_info("fashion_mnist")
    with pytest.raises(ConfigError, match=r"no split 'val'.*train_val_split"):
        load_dataset("fashion-mnist-sample", "val")


@pytest.mark.parametrize("name", list_datasets())
def test_registry_entries_are_consistent(name: str) -> None:
    info = dataset_info(name)
    assert isinstance(info, DatasetInfo)
    assert info.name == name
    assert DATASETS.metadata(name)["info"] is info
    c = info.image_shape[0]
    assert len(info.mean) == len(info.std) == c
    assert all(0 < m < 1 for m in info.mean)
    assert all(0 < s < 0.5 for s in info.std)
    assert "train" in info.splits
    assert info.how_to_obtain
    assert info.license
    assert info.source
    assert not info.classes or len(info.classes) == info.num_classes
    assert DATASETS.get(name).markers


def test_standard_augmentation_choices() -> None:
    cifar = standard_augmentation("cifar10")
    assert isinstance(cifar, Compose)
    assert cifar.augmentations == (RandomCrop(padding=4), HorizontalFlip(p=0.5))
    svhn = standard_augmentation("svhn")
    assert isinstance(svhn, RandomCrop)
    assert svhn.padding == 4
    assert standard_augmentation("mnist") is None
    assert standard_augmentation("fashion-mnist") == RandomCrop(padding=2)
    with pytest.raises(UnknownNameError):
        standard_augmentation("cifar11")


# ----------------------------------------------------------------------------- sample


def test_embedded_sample() -> None:
    folder = find_dataset_dir("fashion-mnist-sample", "/nonexistent")  # root is irrelevant
    assert folder == PACKAGE_DIR / "sample"
    assert sum(p.stat().st_size for p in folder.iterdir()) <= 3_000_000
    assert "MIT" in (folder / "LICENSE-fashion-mnist.txt").read_text()
    train = load_dataset("fashion-mnist-sample", "train")
    test = load_dataset("fashion-mnist-sample", "test")
    assert len(train) in (4000, 5000)
    assert len(test) == 1000
    per_class = len(train) // 10
    assert train.labels.bincount().tolist() == [per_class] * 10
    assert test.labels.bincount().tolist() == [100] * 10
    assert train.image_shape == (1, 28, 28)
    assert train.classes[9] == "Ankle boot"
    assert 0.2 < float(train.images.mean()) < 0.4
    assert float(train.images.max()) == 1.0


@pytest.mark.skipif(not FMNIST_SYSTEM.is_dir(),
                    reason="real Fashion-MNIST not installed (apt-get install -y "
                           "dataset-fashion-mnist)")
def test_real_fashion_mnist_and_sample_selection(tmp_path: Path) -> None:
    """Found through the Debian fallback from an empty root; the sample is its first k images of
    each class in official order."""
    assert find_dataset_dir("fashion-mnist", tmp_path) == FMNIST_SYSTEM
    for split, k in (("train", None), ("test", 100)):
        full = load_dataset("fashion-mnist", split, root=tmp_path)
        assert len(full) == (60000 if split == "train" else 10000)
        sample = load_dataset("fashion-mnist-sample", split)
        k = k or len(sample) // 10
        keep = torch.cat([(full.labels == c).nonzero().flatten()[:k] for c in range(10)]).sort()
        assert torch.equal(sample.images, full.images[keep.values])
        assert torch.equal(sample.labels, full.labels[keep.values])


# ----------------------------------------------------------------------------- ImageDataset


def test_image_dataset_validation() -> None:
    x, y = torch.rand(4, 1, 2, 2), torch.tensor([0, 1, 2, 0])
    classes = ("a", "b", "c")
    assert len(ImageDataset(x, y, classes, "t", "train")) == 4
    bad: list[tuple[torch.Tensor, torch.Tensor, str]] = [
        (x.double(), y, "float32"), (x[:, 0], y, "float32"), (x, y.int(), "int64"),
        (x, y[:3], "int64"), (x, torch.tensor([0, 1, 3, 0]), r"labels must lie in \[0, 3\)"),
        (x, torch.tensor([0, -1, 2, 0]), "labels must lie"), (x * 255, y, r"\[0, 1\]"),
        (x.clone().fill_(float("nan")), y, r"\[0, 1\]")]
    for xb, yb, match in bad:
        with pytest.raises(DatasetFormatError, match=match):
            ImageDataset(xb, yb, classes, "t", "train")
    with pytest.raises(DatasetFormatError, match="indices"):
        ImageDataset(x, y, classes, "t", "train", indices=torch.arange(3))


def test_subset_keeps_original_indices() -> None:
    ds = make_ds([0, 1, 2, 0, 1, 2, 0, 1])
    a = ds.subset([6, 2, 4, 0])
    assert a.indices is not None
    assert a.indices.tolist() == [6, 2, 4, 0]
    assert ids(a.images) == [
        6, 2, 4, 0]
    b = a.subset(torch.tensor([True, False, True, False]))
    assert b.indices is not None
    assert b.indices.tolist() == [6, 4]
    assert ids(b.images) == [6, 4]
    assert b.labels.tolist() == [0, 1]
    assert b.classes == ds.classes
    assert b.name == "toy"
    assert ds.to("cpu") is ds
    assert ds.original_indices.tolist() == list(range(8))
    with pytest.raises(IndexError):
        ds.subset([8])
    with pytest.raises(IndexError):
        ds.subset([-1])
    assert "n=8" in repr(ds)


# ----------------------------------------------------------------------------- subsets


def test_first_n() -> None:
    ds = make_ds(list(range(10)) * 3)
    assert ids(first_n(ds, 7).images) == list(range(7))
    assert len(first_n(ds, 0)) == 0
    assert len(first_n(ds, 30)) == 30
    with pytest.raises(ConfigError):
        first_n(ds, 31)


def test_balanced_subset() -> None:
    labels = [i % 4 for i in range(200)] + [0] * 50  # class 0 over-represented
    ds = make_ds(labels)
    a = balanced_subset(ds, 10, seed=3)
    assert a.labels.bincount().tolist() == [10] * 4
    chosen = a.original_indices
    assert chosen.tolist() == sorted(chosen.tolist())
    assert torch.equal(chosen, balanced_subset(ds, 10, seed=3).original_indices)  # deterministic
    assert not torch.equal(chosen, balanced_subset(ds, 10, seed=4).original_indices)  # seeded
    assert set(ids(a.images)) == set(chosen.tolist())  # images follow indices
    big = balanced_subset(ds, 20, seed=3)
    assert set(chosen.tolist()) <= set(big.original_indices.tolist())  # nested for one seed
    b = balanced_subset(ds, n=10, seed=0)
    assert b.labels.bincount().tolist() == [3, 3, 2, 2]
    with pytest.raises(ConfigError, match=r"too few.*'1': 50 < 51"):
        balanced_subset(ds, 51, seed=0)
    with pytest.raises(ConfigError, match="exactly one"):
        balanced_subset(ds, 5, n=20, seed=0)


def test_train_val_split() -> None:
    labels = [0] * 60 + [1] * 30 + [2] * 10
    ds = make_ds(labels).subset(torch.arange(99, -1, -1))  # a reversed view: indices compose
    train, val = train_val_split(ds, 20, seed=1)
    assert (len(train), len(val)) == (80, 20)
    assert val.labels.bincount().tolist() == [12, 6, 2]  # stratified
    assert train.indices is not None
    assert val.indices is not None
    ti, vi = set(train.original_indices.tolist()), set(val.original_indices.tolist())
    assert ti.isdisjoint(vi)
    assert ti | vi == set(range(100))
    assert set(ids(val.images)) == vi  # indices point into the original split
    train2, val2 = train_val_split(ds, 20, seed=1)
    assert torch.equal(val.original_indices, val2.original_indices)
    assert torch.equal(train.images, train2.images)
    assert not torch.equal(val.original_indices,
                           train_val_split(ds, 20, seed=2)[1].original_indices)
    assert len(train_val_split(ds, 0.25, seed=0)[1]) == 25
    for bad in (0, 100, 0.0, 1.0, True):
        with pytest.raises(ConfigError):
            train_val_split(ds, bad, seed=0)


def test_subsets_leave_global_rng_alone() -> None:
    ds = make_ds([i % 3 for i in range(30)])
    state = torch.random.get_rng_state()
    balanced_subset(ds, 5, seed=0)
    train_val_split(ds, 0.3, seed=0)
    assert torch.equal(state, torch.random.get_rng_state())


# ----------------------------------------------------------------------------- loader


def test_loader_sequential_batches() -> None:
    ds = make_ds([i % 2 for i in range(23)])
    loader = InMemoryLoader(ds, batch_size=5)
    batches = list(loader)
    assert len(loader) == len(batches) == 5
    assert [len(y) for _, y in batches] == [5, 5, 5, 5, 3]
    assert [i for x, _ in batches for i in ids(x)] == list(range(23))
    assert [len(y) for _, y in InMemoryLoader(ds, batch_size=5, drop_last=True)] == [5] * 4
    assert len(InMemoryLoader(ds, batch_size=23, drop_last=True)) == 1
    with pytest.raises(ConfigError):
        InMemoryLoader(ds, batch_size=0)


def test_loader_shuffle_covers_every_example_once_and_is_reproducible() -> None:
    ds = make_ds([i % 3 for i in range(103)])
    g = torch.Generator().manual_seed(7)
    rng_state = torch.random.get_rng_state()
    loader = InMemoryLoader(ds, batch_size=10, shuffle=True, generator=g,
                            augment=HorizontalFlip(p=0.5))
    start = g.get_state()
    epoch1 = [(x.clone(), y.clone()) for x, y in loader]
    epoch2 = [(x.clone(), y.clone()) for x, y in loader]
    for epoch in (epoch1, epoch2):
        seen = [i for x, _ in epoch for i in ids(x)]
        assert sorted(seen) == list(range(103))  # every example exactly once
        assert all(torch.equal(y, ds.labels[ids(x)]) for x, y in epoch)  # labels stay paired
    assert [i for x, _ in epoch1 for i in ids(x)] != [i for x, _ in epoch2 for i in ids(x)]
    g.set_state(start)  # resume: the same generator state replays the same epoch
    replay = list(loader)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
               for a, b in zip(epoch1, replay))
    fresh = InMemoryLoader(ds, batch_size=10, shuffle=True, augment=HorizontalFlip(p=0.5),
                           generator=torch.Generator().manual_seed(7))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(epoch1, fresh))
    assert torch.equal(rng_state, torch.random.get_rng_state())  # global RNG untouched
    assert len(InMemoryLoader(ds, batch_size=10, shuffle=True, drop_last=True)) == 10
    with pytest.raises(ConfigError, match="CPU"):
        InMemoryLoader(ds, batch_size=4, shuffle=True, generator="cuda")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- augmentations


def test_random_crop_is_a_window_of_the_zero_padded_image() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 8, 8) * 0.9 + 0.1  # no zeros inside: padding is identifiable
    out = RandomCrop(padding=2)(x, g)
    assert out.shape == x.shape
    assert not torch.equal(out, x)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    offsets = set()
    for i in range(len(x)):
        match = [(dy, dx) for dy in range(5) for dx in range(5)
                 if torch.equal(out[i], padded[i, :, dy:dy + 8, dx:dx + 8])]
        assert len(match) == 1, f"image {i} is not a window of its padded image"
        offsets.add(match[0])
    assert len(offsets) > 10  # offsets vary per image
    assert torch.equal(RandomCrop(padding=0)(x, g), x)
    with pytest.raises(ConfigError):
        RandomCrop(padding=-1)


def test_horizontal_flip_is_an_exact_mirror() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(100, 3, 5, 7)
    out = HorizontalFlip(p=0.5)(x, g)
    flipped = [torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x)]
    kept = [torch.equal(o, xi) for o, xi in zip(out, x)]
    assert all(f != k for f, k in zip(flipped, kept))  # each image exactly one of the two
    assert 20 < sum(flipped) < 80
    assert torch.equal(HorizontalFlip(p=1.0)(x, g), x.flip(-1))
    assert torch.equal(HorizontalFlip(p=0.0)(x, g), x)


def test_compose_is_deterministic_given_generator_state() -> None:
    aug = Compose([RandomCrop(padding=4), HorizontalFlip()])
    x = torch.rand(16, 3, 32, 32)
    a = aug(x, torch.Generator().manual_seed(5))
    assert torch.equal(a, aug(x, torch.Generator().manual_seed(5)))
    assert not torch.equal(a, aug(x, torch.Generator().manual_seed(6)))
    with pytest.raises(ConfigError):
        aug(x[0], torch.Generator())
