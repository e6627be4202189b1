"""Every core for one LSTM: the batch rows of a recurrence never meet, so each worker thread
can run the whole time loop for its own block of rows.

The compiled and NumPy kernels release the GIL while they compute, so plain Python threads
run them side by side. `row_blocks` cuts the batch into one block per usable CPU (fewer when
blocks would be smaller than `min_rows`), and `run_on_row_blocks` runs a function on each
block, the calling thread taking the first. XLSTM_THREADS=N caps the number of blocks.
"""
from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

THREADS_VARIABLE = "XLSTM_THREADS"


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def thread_count() -> int:
    """How many threads a kernel may use: XLSTM_THREADS if set, else every usable CPU."""
    asked = os.environ.get(THREADS_VARIABLE, "").strip()
    if not asked:
        return usable_cpus()
    if not asked.isdigit() or int(asked) < 1:
        raise ValueError(f"{THREADS_VARIABLE} must be a positive integer, got {asked!r}")
    return int(asked)


def row_blocks(batch: int, min_rows: int) -> list[tuple[int, int]]:
    """[start, stop) row ranges covering `batch`: one per thread, each at least `min_rows` long
    (a single block when the batch is too small to split)."""
    parts = max(1, min(thread_count(), batch // max(1, min_rows)))
    bounds = [batch * k // parts for k in range(parts + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


@functools.cache
def _pool(workers: int, process_id: int) -> ThreadPoolExecutor:
    """One pool per process: a forked child inherits the parent's pool object but not its threads,
    and would wait on them forever."""
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="xlstm-rows")


def run_on_row_blocks(work: Callable[[int, int], None], blocks: list[tuple[int, int]]) -> None:
    """Call work(start, stop) for every block, concurrently; the first block runs on this thread.

    An exception in any block is raised here, after every block has finished.
    """
    if len(blocks) == 1:
        work(*blocks[0])
        return
    others = [_pool(len(blocks) - 1, os.getpid()).submit(work, *block) for block in blocks[1:]]
    try:
        work(*blocks[0])
    finally:
        for future in others:
            future.exception()  # wait for every block before anything is reused or raised
    for future in others:
        future.result()
