"""MLSTMCell: NX-AI's reference as the oracle, the two forms against each other, finite differences everywhere."""
from __future__ import annotations

import math

import numpy as np
import pytest

import xlstm
from test_gradients import assert_gradient_close, numeric_gradient
from xlstm.mlstm_parallel import parallel_form
from xlstm.mlstm_recurrent import MLSTMState, recurrent_form
from xlstm_backends import nxai_reference

FORMS = {"recurrent": recurrent_form, "parallel": parallel_form}
needs_reference = pytest.mark.skipif(nxai_reference.unavailable_reason() is not None,
                                     reason=str(nxai_reference.unavailable_reason()))


def core_arrays(rng: np.random.Generator, T: int, B: int, NH: int, DH: int) -> dict[str, np.ndarray]:
    """Random q, k, v [T, B, NH, DH] and gate pre-activations [T, B, NH] (float64), spread enough that both
    branches of every max are taken."""
    return {"q": rng.normal(size=(T, B, NH, DH)), "k": rng.normal(size=(T, B, NH, DH)),
            "v": rng.normal(size=(T, B, NH, DH)), "i": rng.normal(scale=2.0, size=(T, B, NH)),
            "f": rng.normal(loc=1.0, scale=2.0, size=(T, B, NH))}


def random_state(rng: np.random.Generator, B: int, NH: int, DH: int) -> MLSTMState:
    """A nonzero state: what a window after the first one starts from."""
    return MLSTMState(rng.normal(size=(B, NH, DH, DH)), rng.normal(size=(B, NH, DH)), rng.normal(size=(B, NH)))


def run_core(form: str, arrays: dict, state: MLSTMState, valid=None, backend="numpy", with_backward=False):
    """One of our two forms on `backend`, from numpy arrays."""
    on = lambda a: xlstm.asarray(a, backend=backend)  # noqa: E731
    return FORMS[form](*(on(arrays[name]) for name in ("q", "k", "v", "i", "f")), MLSTMState(*map(on, state)),
                       None if valid is None else on(valid), 1e-6, with_backward)


def zero_state(B: int, NH: int, DH: int) -> MLSTMState:
    return MLSTMState(np.zeros((B, NH, DH, DH)), np.zeros((B, NH, DH)), np.zeros((B, NH)))


def heads_first(torch, a: np.ndarray):
    """[T, B, NH, ...] numpy → [B, NH, T, ...] torch (the reference's layout), a leaf that records gradients."""
    order = (1, 2, 0) + tuple(range(3, a.ndim))
    return torch.tensor(np.ascontiguousarray(a.transpose(order)), requires_grad=True)


# ---------------------------------------------------------------- the reference as the oracle


@needs_reference
@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("NH", [1, 3])
def test_zero_state_equals_parallel_stabilized_simple_with_gradients(form, NH):
    torch = pytest.importorskip("torch")
    backends_ref = nxai_reference.reference_module("blocks.mlstm.backends")
    T, B, DH = 7, 2, 4
    rng = np.random.default_rng(NH)
    arrays = core_arrays(rng, T, B, NH, DH)
    r = rng.normal(size=(T, B, NH, DH))
    h, _, backward = run_core(form, arrays, zero_state(B, NH, DH), with_backward=True)
    leaves = {name: heads_first(torch, a[..., None] if name in "if" else a) for name, a in arrays.items()}
    ref = backends_ref.parallel_stabilized_simple(leaves["q"], leaves["k"], leaves["v"], leaves["i"], leaves["f"])
    np.testing.assert_allclose(xlstm.to_numpy(h), ref.detach().numpy().transpose(2, 0, 1, 3), rtol=0, atol=1e-10)
    (ref * torch.tensor(r.transpose(1, 2, 0, 3))).sum().backward()
    grads = backward(xlstm.asarray(r), None)
    for name, leaf in leaves.items():
        expected = leaf.grad.numpy().reshape(leaf.shape[:3] + (-1,)).transpose(2, 0, 1, 3)
        np.testing.assert_allclose(xlstm.to_numpy(grads[name]), expected.reshape(grads[name].shape),
                                   rtol=0, atol=1e-10, err_msg=name)


@needs_reference
@pytest.mark.parametrize("form", list(FORMS))
def test_nonzero_state_equals_recurrent_step_stabilized_simple_with_gradients(form):
    torch = pytest.importorskip("torch")
    backends_ref = nxai_reference.reference_module("blocks.mlstm.backends")
    T, B, NH, DH = 5, 2, 2, 3
    rng = np.random.default_rng(7)
    arrays, state = core_arrays(rng, T, B, NH, DH), random_state(rng, B, NH, DH)
    r_h, r_state = rng.normal(size=(T, B, NH, DH)), random_state(rng, B, NH, DH)
    h, final, backward = run_core(form, arrays, state, with_backward=True)

    leaves = {name: torch.tensor(a, requires_grad=True) for name, a in arrays.items()}
    initial = [torch.tensor(a, requires_grad=True) for a in state]
    C, n, m = initial[0], initial[1][..., None], initial[2][..., None, None]
    loss = 0.0
    for t in range(T):
        one = {name: leaves[name][t][:, :, None].clone() for name in ("q", "k", "v")}  # the step squeezes in place
        h_t, (C, n, m) = backends_ref.recurrent_step_stabilized_simple(
            C, n, m, one["q"], one["k"], one["v"], leaves["i"][t][..., None, None], leaves["f"][t][..., None, None])
        np.testing.assert_allclose(xlstm.to_numpy(h)[t], h_t.detach().numpy()[:, :, 0, :], rtol=0, atol=1e-10)
        loss = loss + (h_t[:, :, 0, :] * torch.tensor(r_h[t])).sum()
    for ours, theirs, r in zip(final, (C, n[..., 0], m[..., 0, 0]), r_state):
        np.testing.assert_allclose(xlstm.to_numpy(ours), theirs.detach().numpy(), rtol=0, atol=1e-10)
        loss = loss + (theirs * torch.tensor(r)).sum()
    loss.backward()
    grads = backward(xlstm.asarray(r_h), MLSTMState(*map(xlstm.asarray, r_state)))
    for name, leaf in leaves.items():
        np.testing.assert_allclose(xlstm.to_numpy(grads[name]), leaf.grad.numpy(), rtol=0, atol=1e-10, err_msg=name)
    for part, ours, leaf in zip(MLSTMState._fields, grads["initial_state"], initial):
        np.testing.assert_allclose(xlstm.to_numpy(ours), leaf.grad.numpy(), rtol=0, atol=1e-10, err_msg=part)


@needs_reference
@pytest.mark.parametrize("chunk_size", [8, 4])
def test_nonzero_state_equals_chunkwise_simple(chunk_size):
    """chunkwise_simple keeps C and n with unscaled keys (it scales q instead): ours times √DH."""
    torch = pytest.importorskip("torch")
    backends_ref = nxai_reference.reference_module("blocks.mlstm.backends")
    T, B, NH, DH = 8, 2, 2, 4
    rng = np.random.default_rng(11)
    arrays, state = core_arrays(rng, T, B, NH, DH), random_state(rng, B, NH, DH)
    h, final, _ = run_core("parallel", arrays, state)
    tensors = {name: torch.tensor(np.ascontiguousarray(np.moveaxis(a, 0, 2))) for name, a in arrays.items()}
    ref_h, (C, n, m) = backends_ref.chunkwise_simple(
        tensors["q"], tensors["k"], tensors["v"], tensors["i"], tensors["f"],
        initial_C=torch.tensor(state.C * math.sqrt(DH)), initial_n=torch.tensor(state.n * math.sqrt(DH)),
        initial_m=torch.tensor(state.m), chunk_size=chunk_size, return_last_state=True)
    np.testing.assert_allclose(xlstm.to_numpy(h), ref_h.numpy().transpose(2, 0, 1, 3), rtol=0, atol=1e-10)
    for ours, theirs in zip(final, (C / math.sqrt(DH), n / math.sqrt(DH), m.reshape(B, NH))):
        np.testing.assert_allclose(xlstm.to_numpy(ours), theirs.numpy(), rtol=0, atol=1e-10)
