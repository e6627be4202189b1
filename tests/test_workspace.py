"""xlstm_backends.workspace: pooled buffers are reused only once nothing refers to them."""
from __future__ import annotations

import numpy as np

import xlstm
from xlstm_backends.workspace import SMALL_BYTES, Workspace

LARGE = (SMALL_BYTES // 4, 2)  # float32 elements: twice the pooling threshold


def test_a_held_array_is_never_handed_out_again():
    pool = Workspace()
    first = pool.empty(LARGE, np.float32)
    first[...] = 1.0
    view = first[3:].T  # a derived view keeps the block alive too
    del first
    second = pool.empty(LARGE, np.float32)
    second[...] = 2.0
    assert np.all(view == 1.0)
    assert not np.shares_memory(view, second)


def test_a_released_block_is_reused_and_the_surplus_released():
    pool = Workspace(keep_free_bytes=0)
    first = pool.empty(LARGE, np.float32)
    address = first.__array_interface__["data"][0]
    del first
    again = pool.empty((SMALL_BYTES // 8, 2), np.float64)[:, :1]  # the same bytes as another dtype, a view
    assert again.__array_interface__["data"][0] == address
    held = pool.held_bytes()
    del again
    pool.empty((SMALL_BYTES // 4 * 5,), np.float32)  # too large for the old block, which is released
    assert pool.held_bytes() < held + SMALL_BYTES * 5


def test_small_arrays_bypass_the_pool():
    pool = Workspace()
    pool.empty((3, 4), np.float32)
    assert pool.held_bytes() == 0


def test_kernel_outputs_survive_later_calls():
    """The outputs of one dynamic_rnn call live in pooled memory: later calls must not touch them."""
    rng = np.random.default_rng(0)
    cell = xlstm.LSTMCell(64, 16, seed=0, backend="numpy")
    x1, x2 = (xlstm.asarray(rng.normal(size=(8, 40, 16)), dtype="float32", backend="numpy") for _ in range(2))
    out1, _ = xlstm.dynamic_rnn(cell, x1)
    kept = np.array(out1, copy=True)
    for _ in range(3):
        _, _, backward = xlstm.dynamic_rnn_vjp(cell, x2)
        backward(xlstm.asarray(np.ones((8, 40, 64)), dtype="float32", backend="numpy"))
    np.testing.assert_array_equal(out1, kept)
