"""Data parallelism without MPI: packing, row blocks, carried states, shared evaluation.

The ranks are simulated in one process; tests/test_mpi.py runs the same functions under mpiexec.
Oracles: NumPy concatenation, Python ranges, and one process computing on the whole batch.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest

import xlstm
import xlstm_backends as backends
from xlstm.cell import LSTMState
from xlstm.models import CharLM
from xlstm.parallel_bench import allreduce_seconds, bench_allreduce, format_rows, format_scaling, predict_scaling
from xlstm.parallel import (
    concat_states,
    local_loss_sum,
    mean_over_ranks,
    pack,
    row_block,
    share_rows,
    split_state,
    unpack,
)
from xlstm_backends.communicator import CommunicatorError, SingleProcess, get_communicator, launched_size

SHAPES = {"kernel": (3, 4), "scalar": (), "bias": (5,), "cube": (2, 1, 3)}


def host_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape) for name, shape in SHAPES.items()}


def test_pack_then_unpack_gives_back_every_array(backend):
    host = host_arrays()
    arrays = {name: xlstm.asarray(value, dtype="float64", backend=backend) for name, value in host.items()}
    buffer, slots = pack(arrays)
    assert buffer.shape == (3 * 4 + 1 + 5 + 2 * 1 * 3,)
    np.testing.assert_array_equal(xlstm.to_numpy(buffer), np.concatenate([v.ravel() for v in host.values()]))
    back = unpack(buffer, slots)
    assert list(back) == list(host)
    for name, value in back.items():
        assert backends.library_of(value).name == backend.name
        assert xlstm.to_numpy(value).dtype == np.float64
        np.testing.assert_array_equal(xlstm.to_numpy(value), host[name])


def test_pack_and_unpack_refuse_what_cannot_travel_in_one_buffer():
    arrays = {"a": xlstm.asarray(np.ones(2), dtype="float64"), "b": xlstm.asarray(np.ones(2), dtype="float32")}
    with pytest.raises(TypeError, match="one dtype"):
        pack(arrays)
    with pytest.raises(ValueError, match="non-empty dict"):
        pack({})
    buffer, slots = pack({"a": arrays["a"]})
    with pytest.raises(ValueError, match="flat with 2 elements"):
        unpack(xlstm.asarray(np.ones(3), dtype="float64"), slots)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 6, 12])
def test_row_blocks_cover_the_batch_in_rank_order(size):
    blocks = [row_block(12, rank, size) for rank in range(size)]
    assert [row for block in blocks for row in range(12)[block]] == list(range(12))
    assert {len(range(12)[block]) for block in blocks} == {12 // size}


def test_a_batch_that_does_not_divide_among_the_ranks_is_refused():
    with pytest.raises(ValueError, match=r"--batch-size 10 .* among 4 ranks"):
        row_block(10, 0, 4)
    with pytest.raises(ValueError, match="rank must be an integer in 0..1"):
        row_block(4, 2, 2)


@pytest.mark.parametrize("rows,size", [(10, 3), (2, 4), (7, 7), (5, 1)])
def test_shared_rows_cover_every_row_once_in_near_equal_blocks(rows, size):
    blocks = [range(rows)[share_rows(rows, rank, size)] for rank in range(size)]
    assert [row for block in blocks for row in block] == list(range(rows))
    assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


def make_state(backend, batch: int = 8, layers: int = 2) -> tuple[LSTMState, ...]:
    rng = np.random.default_rng(3)
    return tuple(LSTMState(xlstm.asarray(rng.standard_normal((batch, 3)), dtype="float64", backend=backend),
                           xlstm.asarray(rng.standard_normal((batch, 3)), dtype="float64", backend=backend))
                 for _ in range(layers))


def assert_same_state(state, expected):
    assert type(state) is type(expected) and len(state) == len(expected)
    for layer, expected_layer in zip(state, expected):
        assert isinstance(layer, LSTMState)
        for x, y in zip(layer, expected_layer):
            np.testing.assert_array_equal(xlstm.to_numpy(x), xlstm.to_numpy(y))


def test_a_state_saved_on_two_ranks_resumes_on_one_or_four(backend):
    whole = make_state(backend)
    on_two = [split_state(whole, row_block(8, rank, 2)) for rank in range(2)]
    saved = concat_states(on_two)  # what rank 0 writes into the checkpoint
    assert_same_state(saved, whole)
    for size in (1, 4):
        parts = [split_state(saved, row_block(8, rank, size)) for rank in range(size)]
        for rank, part in enumerate(parts):
            rows = slice(rank * 8 // size, (rank + 1) * 8 // size)
            expected = tuple(LSTMState(*(xlstm.asarray(xlstm.to_numpy(x)[rows], backend=backend) for x in layer))
                             for layer in whole)
            assert_same_state(part, expected)
    assert split_state(None, slice(0, 4)) is None
    assert concat_states([None, on_two[1]]) is None  # a new epoch: no state carried


def small_model(backend) -> CharLM:
    return CharLM(7, embedding_size=4, hidden_size=5, num_layers=2, dtype="float64", seed=1, backend=backend)


def token_rows(backend, batch: int = 6, length: int = 13) -> object:
    return xlstm.asarray(np.random.default_rng(5).integers(0, 7, (batch, length)), backend=backend)


def test_the_mean_of_row_block_gradients_is_the_whole_batch_gradient(backend):
    model, rows = small_model(backend), token_rows(backend)
    inputs, targets = rows[:, :6], rows[:, 1:7]
    state = small_model(backend).loss_and_grads(rows[:, 6:12], rows[:, 7:13]).state  # some carried state
    whole = model.loss_and_grads(inputs, targets, state)
    size = 3
    buffers = []
    for rank in range(size):
        block = row_block(6, rank, size)
        local = model.loss_and_grads(inputs[block, :], targets[block, :], split_state(state, block))
        buffer, slots = pack({"loss": local.loss, **local.grads})
        buffers.append(xlstm.to_numpy(buffer))
        np.testing.assert_allclose(xlstm.to_numpy(local.state[-1].h), xlstm.to_numpy(whole.state[-1].h)[block],
                                   rtol=1e-12)  # rows are independent: the carried state splits too
    averaged = unpack(xlstm.asarray(sum(buffers) / size, backend=backend), slots)
    np.testing.assert_allclose(xlstm.to_numpy(averaged["loss"]), xlstm.to_numpy(whole.loss), rtol=1e-12)
    for name, value in whole.grads.items():
        np.testing.assert_allclose(xlstm.to_numpy(averaged[name]), xlstm.to_numpy(value), rtol=1e-9, atol=1e-15,
                                   err_msg=name)


@pytest.mark.parametrize("size", [1, 3, 5])
def test_shared_evaluation_equals_one_process_evaluating_every_row(backend, size):
    model, rows = small_model(backend), token_rows(backend, batch=4, length=19)
    windows = [(rows[:, k * 6:(k + 1) * 6], rows[:, k * 6 + 1:(k + 1) * 6 + 1]) for k in range(3)]
    one_process, state = 0.0, None  # what training.evaluate computes: the mean of per-window mean losses
    for inputs, targets in windows:
        loss, state = model.loss(inputs, targets, state)
        one_process += float(xlstm.to_numpy(loss)) / len(windows)
    shares = [local_loss_sum(model.loss, windows, share_rows(4, rank, size)) for rank in range(size)]
    shared = sum(total for total, _ in shares) / sum(count for _, count in shares)
    assert shared == pytest.approx(one_process, rel=1e-9)
    assert mean_over_ranks(*shares[-1], SingleProcess()) == pytest.approx(shares[-1][0] / shares[-1][1], rel=1e-15)


def test_single_process_collectives_are_the_identity():
    one = SingleProcess()
    value = {"x": [1, 2]}
    assert (one.rank, one.size, one.local_rank) == (0, 1, 0)
    assert one.allreduce_sum(value) is value and one.broadcast(value) is value and one.gather(value) == [value]
    one.barrier()
    with pytest.raises(SystemExit) as stopped:
        one.abort(3)
    assert stopped.value.code == 3
    with pytest.raises(ValueError, match="root must be a rank in 0..0"):
        one.gather(value, root=1)


@pytest.mark.parametrize("environ,size", [({}, 1), ({"PMI_SIZE": "4", "PMI_RANK": "2"}, 4),
                                          ({"OMPI_COMM_WORLD_SIZE": "3"}, 3), ({"PMI_SIZE": "1"}, 1),
                                          ({"MV2_COMM_WORLD_SIZE": "2"}, 2)])
def test_the_launcher_announces_the_number_of_ranks(environ, size):
    assert launched_size(environ) == size


def test_one_process_needs_no_mpi(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # as if not installed
    assert isinstance(get_communicator({}), SingleProcess)
    assert isinstance(get_communicator({"PMI_SIZE": "1"}), SingleProcess)


def test_several_ranks_without_mpi4py_say_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    monkeypatch.delitem(sys.modules, "xlstm_backends.mpi_communicator", raising=False)
    with pytest.raises(CommunicatorError, match=r"launched on 2 ranks .* pip install 'xlstm-array\[mpi\]'"):
        get_communicator({"PMI_SIZE": "2"})


def test_cpu_devices_are_kept_for_every_rank():
    assert backends.device_for_rank("numpy", None, 3) is None
    assert backends.device_for_rank("array_api_strict", "device1", 1) == "device1"
    assert backends.device_for_rank("torch", "cpu", 1) == "cpu"


def test_the_allreduce_benchmark_counts_every_parameter():
    tiny = {"tiny": {"vocab_size": 7, "embedding_size": 3, "hidden_size": 4, "num_layers": 2}}
    [row] = bench_allreduce(SingleProcess(), repeats=2, models=tiny)
    # embedding 7·3, layers 4H(1+I+H) with I = 3 then 4, dense 4·7 + 7
    assert row["parameters"] == 7 * 3 + 16 * (1 + 3 + 4) + 16 * (1 + 4 + 4) + 4 * 7 + 7
    assert row["allreduce_ms"] >= 0 and row["average_ms"] >= 0
    assert "tiny" in format_rows([row], SingleProcess())


def test_the_allreduce_model_sends_2_n_minus_1_over_n_of_the_buffer():
    # 100 MB at 1 GB/s: 2·(1/2)·0.1 s on 2 ranks; on 64, 2·(63/64)·0.1 s plus 2·6 latencies of 1 ms.
    assert allreduce_seconds(100.0, 1, 1.0, 1e-3) == 0.0
    assert allreduce_seconds(100.0, 2, 1.0, 0.0) == pytest.approx(0.1)
    assert allreduce_seconds(100.0, 64, 1.0, 1e-3) == pytest.approx(2 * 63 / 64 * 0.1 + 12e-3)


def test_the_scaling_prediction_splits_the_batch_among_the_ranks():
    tiny = {"tiny": {"vocab_size": 5, "embedding_size": 2, "hidden_size": 3, "num_layers": 1}}
    rows = predict_scaling(8, (1, 4), {"net": (1.0, 0.0)}, window=4, models=tiny)
    assert [(r["ranks"], r["rows"]) for r in rows] == [(1, 8), (4, 2)]
    assert rows[0]["megabytes"] == pytest.approx(4e-6 * (5 * 2 + 4 * 3 * (1 + 2 + 3) + 3 * 5 + 5))
    assert all(r["compute_s"] > 0 for r in rows) and "tokens/s on net" in format_scaling(rows)
