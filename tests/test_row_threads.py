"""backends/row_threads.py: the batch split that lets the LSTM kernels use every core."""
import os
import threading
import time

import pytest

from xlstm_backends import row_threads


@pytest.mark.parametrize("threads", ["1", "2", "3", "8"])
@pytest.mark.parametrize("batch", [1, 2, 7, 32, 33])
def test_row_blocks_cover_the_batch_once_in_order(monkeypatch, threads, batch):
    monkeypatch.setenv(row_threads.THREADS_VARIABLE, threads)
    blocks = row_threads.row_blocks(batch, min_rows=2)
    rows = [row for start, stop in blocks for row in range(start, stop)]
    assert rows == list(range(batch))
    assert len(blocks) <= int(threads)
    assert len(blocks) == 1 or all(stop - start >= 2 for start, stop in blocks)


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_a_bad_thread_count_is_named(monkeypatch, value):
    monkeypatch.setenv(row_threads.THREADS_VARIABLE, value)
    with pytest.raises(ValueError, match="XLSTM_THREADS must be a positive integer"):
        row_threads.row_blocks(32, 1)


def test_blocks_run_on_separate_threads_and_errors_surface(monkeypatch):
    monkeypatch.setenv(row_threads.THREADS_VARIABLE, "2")
    seen = {}
    row_threads.run_on_row_blocks(lambda start, stop: seen.update({start: threading.get_ident()}),
                                  row_threads.row_blocks(8, 1))
    assert sorted(seen) == [0, 4] and len(set(seen.values())) == 2

    def failing(start, stop):
        if start:
            raise RuntimeError("block failed")

    with pytest.raises(RuntimeError, match="block failed"):
        row_threads.run_on_row_blocks(failing, [(0, 4), (4, 8)])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_gets_threads_of_its_own():
    """After the parent's pool has run, a forked child's split call must not wait on threads
    that the fork did not copy (it would hang)."""
    row_threads.run_on_row_blocks(lambda start, stop: None, [(0, 1), (1, 2)])  # the parent's pool exists
    child = os.fork()
    if child == 0:
        try:
            row_threads.run_on_row_blocks(lambda start, stop: None, [(0, 1), (1, 2)])
        finally:
            os._exit(0)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        finished, status = os.waitpid(child, os.WNOHANG)
        if finished:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(child, 9)
    os.waitpid(child, 0)
    pytest.fail("the forked child's split call hung")
