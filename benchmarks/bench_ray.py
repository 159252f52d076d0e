"""Benchmark: the Ray executor vs the in-process (local) executor on the same evaluation.

One evaluation (``--n`` examples of ``--dataset``'s test split, chunks of ``--batch-size``, the
cascade adaptive PGD-``--steps``), run side by side in one process:

1. local executor, this process, torch's default threads;
2. Ray: a local instance with ``--workers`` CPUs (one 1-thread worker per chunk slot) — the
   start-up (``ray.init``), then the evaluation twice into fresh stores: "cold" (workers start,
   import torch and advguard, build the model) and "warm" (the same workers, the next run).

Records of all runs are compared (example outcomes, distances, queries: must be identical).
Per-chunk scheduling overhead: ``o = (W_warm · workers − Σ chunk seconds on the workers) / C`` —
the wall time the workers did not spend computing chunks, per chunk. Expected wall time with N
warm workers: ``ceil(C / N) · (t + o)``, where ``t`` is the mean chunk time on one worker; add the
start-up and the cold workers' first run for a fresh instance.

    python benchmarks/bench_ray.py                      # 1,000 sample images, PGD-20, 2 workers
    python benchmarks/bench_ray.py --workers 8 --n 5000 --dataset fashion-mnist \
        --model runs/scale_s/standard/model.safetensors

Without ``--model``, a LeNet-5 is trained for 3 epochs on the embedded sample (seconds).
Results: --output (default benchmarks/results/ray_executor.md).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from _common import write_report
from advguard.evaluation import EvalConfig, RecordStore, evaluate
from advguard.evaluation.executors import RayExecutor
from advguard.utils import environment_info


def records(path: Path, eval_id: str) -> tuple[list[Any], list[Any]]:
    with RecordStore(path) as store:
        return store.examples(eval_id), store.outcomes(eval_id)


def chunk_seconds(path: Path, eval_id: str) -> float:
    """Seconds spent in chunks where they ran (the evaluation runs no probes: checks off)."""
    with RecordStore(path) as store:
        return float(store.evaluation(eval_id)["seconds"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="fashion-mnist-sample")
    ap.add_argument("--model", help="checkpoint (default: train a LeNet-5 on the sample)")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--output", default="benchmarks/results/ray_executor.md")
    args = ap.parse_args()

    model = None
    if args.model is None:
        from advguard.training import TrainConfig, train

        model = train(TrainConfig(dataset="fashion-mnist-sample", model="lenet5", epochs=3,
                                  batch_size=64, lr=0.05, schedule="onecycle", augment="none",
                                  device="cpu", test_size=0, seed=0), progress=False).model
    config = EvalConfig(name="bench-ray", dataset=args.dataset, n=args.n, model=args.model or "",
                        batch_size=args.batch_size, eps=args.eps, device="cpu", checks=False,
                        steps=[{"setting": "adaptive", "attack": "pgd", "steps": args.steps,
                                "alpha": args.eps / 4}])
    chunks = math.ceil(args.n / args.batch_size)
    tmp = Path(tempfile.mkdtemp(prefix="bench-ray-"))

    def run(store: Path, executor: RayExecutor | None) -> tuple[float, str]:
        started = time.perf_counter()
        summary = evaluate(config, store=store, model=model, progress=False, executor=executor)
        return time.perf_counter() - started, summary.eval_id

    local_s, eval_id = run(tmp / "local.sqlite", None)
    started = time.perf_counter()
    executor = RayExecutor(num_cpus=args.workers)
    executor.connect()
    startup = time.perf_counter() - started
    try:
        cold_s, _ = run(tmp / "cold.sqlite", executor)
        warm_s, _ = run(tmp / "warm.sqlite", executor)
        describe = executor.describe()
    finally:
        executor.close()
    same = [records(tmp / f"{k}.sqlite", eval_id) == records(tmp / "local.sqlite", eval_id)
            for k in ("cold", "warm")]
    with RecordStore(tmp / "local.sqlite") as db:
        robust = sum(e.fooled_by is None for e in db.examples(eval_id)) / args.n
    worker_total = chunk_seconds(tmp / "warm.sqlite", eval_id)
    t = worker_total / chunks
    overhead = (warm_s * args.workers - worker_total) / chunks
    local_chunk = chunk_seconds(tmp / "local.sqlite", eval_id) / chunks
    env = environment_info(torch.device("cpu"))

    def expected(n: int) -> float:  # warm workers, start-up excluded
        return math.ceil(chunks / n) * (t + overhead)

    lines = [
        "# Ray executor vs in-process executor",
        "",
        f"Command: `python benchmarks/bench_ray.py{''.join(' ' + a for a in sys.argv[1:])}`",
        f"Machine: {env['platform']}, {torch.get_num_threads()} torch threads in the driver; "
        f"torch {env['torch']}, ray {describe['ray']}; commit {env['git_commit']}.",
        f"Evaluation: {args.n} images of {args.dataset} (test), chunks of {args.batch_size} "
        f"({chunks} chunks), clean + adaptive PGD-{args.steps} at ε = {args.eps}; robust accuracy "
        f"{100 * robust:.1f}%. One run of each, side by side in one process.",
        "",
        "| executor | wall s | vs local | records identical to local |",
        "|---|---|---|---|",
        f"| local (in-process, {torch.get_num_threads()} threads) | {local_s:.1f} | 1.00 | — |",
        f"| Ray start-up (`ray.init`, local instance, {args.workers} CPUs) | {startup:.1f} "
        "| — | — |",
        f"| Ray, {args.workers} workers × 1 thread, cold (workers start) | {cold_s:.1f} | "
        f"{cold_s / local_s:.2f} | {'yes' if same[0] else 'NO'} |",
        f"| Ray, {args.workers} workers × 1 thread, warm | {warm_s:.1f} | {warm_s / local_s:.2f} | "
        f"{'yes' if same[1] else 'NO'} |",
        "",
        f"Mean chunk time: {local_chunk:.2f} s in-process, {t:.2f} s on a 1-thread Ray worker. "
        f"Scheduling overhead per chunk (warm): {overhead:.3f} s "
        f"({100 * overhead / t:.1f}% of a chunk).",
        "",
        "Expected wall time with N warm workers, ceil(C/N)·(t + o) with the numbers above "
        f"(C = {chunks}, t = {t:.2f} s, o = {overhead:.3f} s; chunks of equal cost, no data or "
        "checkpoint transfer costs beyond this machine's), and with the start-up and the cold "
        f"workers' first run added (+ {startup:.1f} s + {cold_s - warm_s:.1f} s, as measured "
        "here; on a cluster, workers also load the checkpoints once each):",
        "",
        "| N | expected wall s, warm | vs local | cold, with start-up |",
        "|---|---|---|---|",
        *[f"| {n} | {expected(n):.1f} | {expected(n) / local_s:.2f} | "
          f"{expected(n) + startup + cold_s - warm_s:.1f} |" for n in (1, 2, 4, 8, 16)
          if n <= chunks],
    ]
    return write_report(lines, args.output)


if __name__ == "__main__":
    raise SystemExit(main())
