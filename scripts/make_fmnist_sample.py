#!/usr/bin/env python3
"""Regenerate advguard's embedded Fashion-MNIST sample (``src/advguard/data/sample/``).

Selection rule: the first ``k`` images of each class in the official file order, kept in that
order (train: k = 500 → 5,000 images; test: k = 100 → 1,000 images). If the four gzipped files
would exceed 3 MB in total, the train part is reduced to k = 400 (4,000 images). Files are
written in the official IDX format, gzipped with level 9 and mtime 0, so the output is
byte-for-byte reproducible (given the same zlib).

Usage (from the repository root; needs ``apt-get install -y dataset-fashion-mnist``)::

    python3 scripts/make_fmnist_sample.py [--source /usr/share/datasets/fashion-mnist]
                                          [--dest src/advguard/data/sample]
"""

from __future__ import annotations

import argparse
import gzip
import struct
import sys
from pathlib import Path

import numpy as np

from advguard.data.formats import read_idx

SOURCE = Path("/usr/share/datasets/fashion-mnist")
DEST = Path(__file__).resolve().parents[1] / "src" / "advguard" / "data" / "sample"
PER_CLASS = {"train": 500, "test": 100}
REDUCED_TRAIN_PER_CLASS = 400
MAX_BYTES = 3_000_000
STEMS = {"train": "train", "test": "t10k"}

LICENSE = """\
Fashion-MNIST sample bundled with advguard
==========================================

The files in this folder are a subset of Fashion-MNIST
(https://github.com/zalandoresearch/fashion-mnist; H. Xiao, K. Rasul, R. Vollgraf,
"Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning Algorithms",
arXiv:1708.07747, 2017), redistributed under its MIT license, reproduced below.

Which images: the first {train_k} images of each of the 10 classes of the official training
file ({train_n} images) and the first {test_k} images of each class of the official test file
({test_n} images), "first" meaning lowest position in the official files; the selected images
keep their official relative order. Pixels and labels are unchanged. The files are in the
official IDX format (gzipped) under the official file names. They were generated from the
official files (as installed by the Debian package dataset-fashion-mnist) by
scripts/make_fmnist_sample.py in the advguard repository, which reproduces them byte for byte.

Positions of the selected images in the official files:
  train: for each class c, the first {train_k} indices i with train_label[i] == c
  test:  for each class c, the first {test_k} indices i with test_label[i] == c

-------------------------------------------------------------------------------

The MIT License (MIT)

Copyright (c) 2017 Zalando SE, https://tech.zalando.com

Permission is hereby granted, free of charge, to any person obtaining a copy of this software and
associated documentation files (the "Software"), to deal in the Software without restriction,
including without limitation the rights to use, copy, modify, merge, publish, distribute,
sublicense, and/or sell copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or
substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT
NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND
NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM,
DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT
OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
"""


def idx_bytes(array: np.ndarray) -> bytes:
    """Serialize a uint8 array in IDX format: magic 0x00 0x00 0x08 ndim, big-endian dims, data."""
    assert array.dtype == np.uint8
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array).tobytes()


def first_k_per_class(labels: np.ndarray, k: int) -> np.ndarray:
    """Sorted positions of the first ``k`` examples of every class."""
    picked = [np.flatnonzero(labels == c)[:k] for c in range(10)]
    if any(len(p) < k for p in picked):
        raise SystemExit(f"a class has fewer than {k} examples")
    return np.sort(np.concatenate(picked))


def build(source: Path, per_class: dict[str, int]) -> dict[str, bytes]:
    out = {}
    for split, k in per_class.items():
        stem = STEMS[split]
        images = read_idx(source / f"{stem}-images-idx3-ubyte.gz", ndim=3)
        labels = read_idx(source / f"{stem}-labels-idx1-ubyte.gz", ndim=1)
        keep = first_k_per_class(labels, k)
        for kind, arr in (("images-idx3", images[keep]), ("labels-idx1", labels[keep])):
            out[f"{stem}-{kind}-ubyte.gz"] = gzip.compress(idx_bytes(arr), compresslevel=9,
                                                           mtime=0)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--dest", type=Path, default=DEST)
    args = parser.parse_args(argv)
    per_class = dict(PER_CLASS)
    files = build(args.source, per_class)
    if sum(len(b) for b in files.values()) > MAX_BYTES:
        per_class["train"] = REDUCED_TRAIN_PER_CLASS
        files = build(args.source, per_class)
    args.dest.mkdir(parents=True, exist_ok=True)
    for name, blob in sorted(files.items()):
        (args.dest / name).write_bytes(blob)
        print(f"wrote {args.dest / name} ({len(blob):,} bytes)")
    license_text = LICENSE.format(train_k=per_class["train"], train_n=10 * per_class["train"],
                                  test_k=per_class["test"], test_n=10 * per_class["test"])
    (args.dest / "LICENSE-fashion-mnist.txt").write_text(license_text, encoding="utf-8")
    total = sum(len(b) for b in files.values())
    print(f"total {total:,} bytes; per class: train {per_class['train']}, "
          f"test {per_class['test']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
