"""How long one gradient allreduce takes (`mpiexec -n N python scripts/bench_allreduce.py`), how
long a rank computes a step on its rows, and what that predicts for N ranks
(`python scripts/bench_scaling.py`).

For each model size it packs the model's parameters (standing in for gradients: same count,
dtype and layout) into one flat buffer and times, with the ranks lined up by a barrier
before each repeat, (a) the communicator's `allreduce_sum` of the buffer and (b) the whole
`average_over_ranks` a training step pays (pack, allreduce, divide, unpack). Every rank runs
the same fixed number of repeats, as collectives require; rank 0 reports medians.
"""
from __future__ import annotations

import math
import random
import statistics
import time
from typing import Any, Callable

from xlstm_backends import Communicator, get_backend
from xlstm import optim
from xlstm.models import CharLM
from xlstm.parallel import average_over_ranks, pack

# name: CharLM settings (vocabulary 96 as the default corpus's)
MODELS: dict[str, dict[str, int]] = {
    "default 1x192": {"vocab_size": 96, "embedding_size": 32, "hidden_size": 192, "num_layers": 1},
    "2x1024": {"vocab_size": 96, "embedding_size": 32, "hidden_size": 1024, "num_layers": 2},
}


def time_collective(run: Callable[[], Any], communicator: Communicator, repeats: int) -> float:
    """Median seconds of `run()` over `repeats` calls, each started together on every rank."""
    run()  # warm-up: buffers allocated, connections set up
    seconds = []
    for _ in range(repeats):
        communicator.barrier()
        started = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def bench_allreduce(communicator: Communicator, repeats: int = 30, backend: Any = None,
                    models: dict[str, dict[str, int]] = MODELS) -> list[dict[str, Any]]:
    """One row per model: parameter count, megabytes, and median ms of allreduce and of the averaging."""
    rows = []
    for name, settings in models.items():
        model = CharLM(**settings, dtype="float32", seed=0, backend=get_backend(backend))
        grads = model.parameters()
        buffer, _ = pack(grads)
        rows.append({
            "model": name,
            "parameters": int(buffer.shape[0]),
            "megabytes": buffer.shape[0] * 4 / 1e6,
            "allreduce_ms": 1e3 * time_collective(lambda: communicator.allreduce_sum(buffer), communicator, repeats),
            "average_ms": 1e3 * time_collective(lambda: average_over_ranks(grads, communicator), communicator,
                                                repeats),
        })
    return rows


def format_rows(rows: list[dict[str, Any]], communicator: Communicator) -> str:
    """A plain-text table of `bench_allreduce`'s rows."""
    lines = [f"allreduce of one flat float32 buffer, {communicator.describe()}",
             f"{'model':<14} {'parameters':>11} {'MB':>7} {'allreduce ms':>13} {'pack+reduce+unpack ms':>22}"]
    lines += [f"{r['model']:<14} {r['parameters']:>11,} {r['megabytes']:>7.2f} {r['allreduce_ms']:>13.3f} "
              f"{r['average_ms']:>22.3f}" for r in rows]
    return "\n".join(lines)


def step_seconds(settings: dict[str, int], rows: int, window: int = 64, repeats: int = 3, backend: Any = None) -> float:
    """Median seconds of a rank's computation in one training step (forward, backward, clipping,
    Adam) on `rows` rows of `window` tokens: what each of N ranks does when the batch is split."""
    target = get_backend(backend)
    model = CharLM(**settings, dtype="float32", seed=0, backend=target)
    draw = random.Random(0)
    xp = target.xp
    ids = xp.asarray([[draw.randrange(settings["vocab_size"]) for _ in range(window + 1)] for _ in range(rows)],
                     dtype=xp.int64, device=target.device)
    optimizer = optim.Adam(learning_rate=1e-3)

    def step() -> None:
        _, grads, _ = model.loss_and_grads(ids[:, :-1], ids[:, 1:])
        grads, _ = optim.clip_by_global_norm(grads, 5.0)
        model.set_parameters(optimizer.step(model.parameters(), grads))

    step()  # warm-up
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def allreduce_seconds(megabytes: float, ranks: int, gigabytes_per_s: float, latency_s: float) -> float:
    """Predicted time of one allreduce of `megabytes` over `ranks` ranks, as MPICH does large ones
    (reduce-scatter then allgather): every rank sends and receives 2(N-1)/N of the buffer, in
    2·log2(N) rounds of `latency_s` each."""
    if ranks == 1:
        return 0.0
    return 2 * (ranks - 1) / ranks * megabytes / (1e3 * gigabytes_per_s) + 2 * math.ceil(math.log2(ranks)) * latency_s


def predict_scaling(batch: int, ranks: tuple[int, ...], networks: dict[str, tuple[float, float]],
                    window: int = 64, models: dict[str, dict[str, int]] = MODELS) -> list[dict[str, Any]]:
    """One row per model and rank count: one rank's measured compute on batch/N rows, plus the
    modelled allreduce of the float32 gradients on each network (GB/s, latency s); tokens/s of the job."""
    rows = []
    for name, settings in models.items():
        megabytes = 4e-6 * sum(math.prod(p.shape) for p in CharLM(**settings, seed=0).parameters().values())
        for n in ranks:
            compute = step_seconds(settings, batch // n, window, repeats=1 if settings["hidden_size"] > 512 else 3)
            steps = {network: compute + allreduce_seconds(megabytes, n, *figures) for network, figures in networks.items()}
            rows.append({"model": name, "megabytes": megabytes, "ranks": n, "rows": batch // n, "compute_s": compute,
                         "tokens_per_s": {network: batch * window / step for network, step in steps.items()}})
    return rows


def format_scaling(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of `predict_scaling`'s rows."""
    networks = list(rows[0]["tokens_per_s"])
    lines = [f"{'model':<14} {'MB':>6} {'ranks':>5} {'rows':>4} {'compute s':>9}  tokens/s on " + " | ".join(networks)]
    lines += [f"{r['model']:<14} {r['megabytes']:>6.1f} {r['ranks']:>5} {r['rows']:>4} {r['compute_s']:>9.3f}  "
              + " | ".join(f"{r['tokens_per_s'][n]:,.0f}" for n in networks) for r in rows]
    return "\n".join(lines)
