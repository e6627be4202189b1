"""How long one gradient allreduce takes: `mpiexec -n N python scripts/bench_allreduce.py`.

For each model size it packs the model's parameters (standing in for gradients: same count,
dtype and layout) into one flat buffer and times, with the ranks lined up by a barrier
before each repeat, (a) the communicator's `allreduce_sum` of the buffer and (b) the whole
`average_over_ranks` a training step pays (pack, allreduce, divide, unpack). Every rank runs
the same fixed number of repeats, as collectives require; rank 0 reports medians.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

from xlstm_backends import Communicator, get_backend
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
