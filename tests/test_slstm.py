"""SLSTMCell: NX-AI's reference (outputs, states, torch-autograd gradients) within 1e-10; central finite
differences for every gradient on every backend; stacks with LSTMCell, save/load, `.to()`; bad input."""
from __future__ import annotations

import numpy as np
import pytest

import xlstm
from xlstm_backends import nxai_reference
from test_gradients import assert_gradient_close, numeric_gradient

REFERENCE_MISSING = nxai_reference.unavailable_reason()
needs_reference = pytest.mark.skipif(REFERENCE_MISSING is not None, reason=str(REFERENCE_MISSING))


def random_cell_arrays(rng, units: int, inputs: int, heads: int) -> dict[str, np.ndarray]:
    """Weights large enough that both branches of m_t = max(·, ·) and the first-step clamp occur; half the
    forget biases high, so that some m_t follow log σ(f̃) + m_{t-1} for several steps in a row."""
    head_size = units // heads
    weights = rng.normal(size=(4 * units, 1 + inputs))
    weights[units:2 * units:2, 0] += 4.0
    return {"weights": weights,
            "recurrent_weights": rng.normal(size=(heads, 4 * head_size, head_size)) / np.sqrt(head_size)}


def random_state(rng, batch: int, units: int) -> xlstm.SLSTMState:
    """A nonzero state as the recurrence makes them: n_t ≥ 1 after any step from zero, so n > 0 here."""
    return xlstm.SLSTMState(c=rng.normal(size=(batch, units)), n=rng.uniform(0.5, 2.0, size=(batch, units)),
                            m=rng.normal(size=(batch, units)), h=rng.normal(size=(batch, units)))


# --- the reference oracle: NX-AI's slstm_forward with the "slstm" pointwise function, through torch autograd

def reference_run(arrays: dict, x: np.ndarray, state: xlstm.SLSTMState, r_out, r_state):
    """NX-AI's vanilla slstm_forward on our parameters (time-major x [T, B, I]): the outputs, the final
    state and the gradients of Σ r_out·y + Σ r_state·final, by torch autograd, all as numpy."""
    import torch
    vanilla = nxai_reference.reference_module("blocks.slstm.src.vanilla")
    tensor = lambda a: torch.tensor(np.asarray(a), dtype=torch.float64, requires_grad=True)  # noqa: E731
    bias, input_weights = tensor(arrays["weights"][:, 0]), tensor(arrays["weights"][:, 1:])
    recurrent, inputs = tensor(arrays["recurrent_weights"]), tensor(x)
    initial = {name: tensor(getattr(state, name)) for name in ("c", "n", "m", "h")}
    # Their layout: input pre-activations [S, B, 4H] "SBGNH" (gate-major, then heads), bias [4H] the same,
    # R [NH, 4·DH, DH] (our recurrent_weights), states [4, B, H] in the order y (= h), c, n, m.
    states = torch.stack([initial["h"], initial["c"], initial["n"], initial["m"]])
    all_states, _, _ = vanilla.slstm_forward(inputs @ input_weights.T, states, recurrent, bias,
                                             vanilla.slstm_pointwise_function_registry["slstm"])
    y, final = all_states[0, 1:], all_states[:, -1]
    final = xlstm.SLSTMState(c=final[1], n=final[2], m=final[3], h=final[0])
    loss = (y * torch.tensor(r_out)).sum() + sum((part * torch.tensor(r)).sum() for part, r in zip(final, r_state))
    loss.backward()
    grads = {"weights": np.concatenate([bias.grad.numpy()[:, None], input_weights.grad.numpy()], axis=1),
             "recurrent_weights": recurrent.grad.numpy(), "inputs": inputs.grad.numpy(),
             "initial_state": xlstm.SLSTMState(*(initial[name].grad.numpy() for name in ("c", "n", "m", "h")))}
    return y.detach().numpy(), xlstm.SLSTMState(*(part.detach().numpy() for part in final)), grads


@needs_reference
@pytest.mark.parametrize("heads", [1, 3])
@pytest.mark.parametrize("start", ["zero", "nonzero", "n-zero"])
def test_matches_nxai_reference_outputs_states_and_gradients(heads, start):
    B, T, I, H = 3, 5, 4, 6
    rng = np.random.default_rng(heads)
    arrays = random_cell_arrays(rng, H, I, heads)
    x = rng.normal(size=(T, B, I))
    state = xlstm.SLSTMState(*(np.zeros((B, H)),) * 4) if start == "zero" else random_state(rng, B, H)
    if start == "n-zero":  # the first-step rule with c_{t-1} ≠ 0: its clamp on f' binds where log f + m > ĩ
        state = state._replace(n=np.zeros((B, H)))
    r_out, r_state = rng.normal(size=(T, B, H)), xlstm.SLSTMState(*(rng.normal(size=(B, H)) for _ in range(4)))
    cell = xlstm.SLSTMCell(H, I, num_heads=heads, **arrays, dtype="float64", backend="numpy")
    outputs, final, backward = xlstm.dynamic_rnn_vjp(cell, x, state, time_major=True)
    grads = backward(r_out, r_state)
    y, their_final, their_grads = reference_run(arrays, x, state, r_out, r_state)
    np.testing.assert_allclose(outputs, y, rtol=0, atol=1e-10)
    for ours, theirs, name in zip(final, their_final, "cnmh"):
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-10, err_msg=f"final state {name}")
    for name in ("weights", "recurrent_weights", "inputs"):
        np.testing.assert_allclose(grads[name], their_grads[name], rtol=0, atol=1e-10, err_msg=name)
    for ours, theirs, name in zip(grads["initial_state"], their_grads["initial_state"], "cnmh"):
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-10, err_msg=f"initial state {name}")


def test_stabiliser_keeps_float32_finite_where_exp_of_the_input_gate_overflows(backend):
    """ĩ ≈ 100 + noise: exp(ĩ) is inf in float32, yet outputs, states and gradients stay finite and equal
    the float64 run's, because only exponents ≤ 0 are ever taken."""
    B, T, I, H = 2, 6, 3, 4
    rng = np.random.default_rng(10)
    arrays = random_cell_arrays(rng, H, I, 2)
    arrays["weights"][:H, 0] += 100.0
    x, r_out = rng.normal(size=(B, T, I)), rng.normal(size=(B, T, H))
    runs = {}
    for dtype in ("float32", "float64"):
        cell = xlstm.SLSTMCell(H, I, num_heads=2, **arrays, dtype=dtype, backend=backend)
        outputs, final, backward = xlstm.dynamic_rnn_vjp(cell, xlstm.asarray(x, dtype=dtype, backend=backend))
        grads = backward(xlstm.asarray(r_out, dtype=dtype, backend=backend), None)
        runs[dtype] = [xlstm.to_numpy(a) for a in (outputs, final.h, grads["weights"], grads["recurrent_weights"])]
    assert np.min(xlstm.to_numpy(final.m)) > 90.0  # the regime where exp(m) is inf in float32
    for single, double in zip(runs["float32"], runs["float64"]):
        assert np.all(np.isfinite(single))
        np.testing.assert_allclose(single, double, rtol=0, atol=1e-4 * max(1.0, np.abs(double).max()))


# --- central finite differences on every backend

def state_loss(final, r_state) -> float:
    return sum(float(np.sum(xlstm.to_numpy(part) * r)) for part, r in zip(final, r_state))


# (lengths, time-major, initial state given)
CASES = {
    "plain": (None, False, True),
    "lengths-time-major": ([3, 1, 0], True, True),
    "zero-start-lengths": ([2, 3, 1], False, False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_gradients_match_finite_differences(backend, case):
    lengths, time_major, given_state = CASES[case]
    B, T, I, H, heads = 3, 3, 2, 4, 2
    rng = np.random.default_rng(4)
    arrays = {**random_cell_arrays(rng, H, I, heads), "inputs": rng.normal(size=(T, B, I) if time_major else (B, T, I)),
              **random_state(rng, B, H)._asdict()}
    out_shape = (T, B, H) if time_major else (B, T, H)
    r_out, r_state = rng.normal(size=out_shape), [rng.normal(size=(B, H)) for _ in range(4)]
    on = lambda a: xlstm.asarray(a, backend=backend)  # noqa: E731

    def run(values, vjp=False):
        cell = xlstm.SLSTMCell(H, I, num_heads=heads, weights=values["weights"], dtype="float64",
                               recurrent_weights=values["recurrent_weights"], backend=backend)
        state = xlstm.SLSTMState(*(on(values[name]) for name in "cnmh")) if given_state else None
        call = xlstm.dynamic_rnn_vjp if vjp else xlstm.dynamic_rnn
        return call(cell, on(values["inputs"]), state, sequence_length=lengths, time_major=time_major)

    def loss(name):
        def of(array):
            outputs, final = run({**arrays, name: array})
            return float(np.sum(xlstm.to_numpy(outputs) * r_out)) + state_loss(final, r_state)
        return of

    _, _, backward = run(arrays, vjp=True)
    grads = backward(on(r_out), xlstm.SLSTMState(*(on(r) for r in r_state)))
    assert set(grads) == {"weights", "recurrent_weights", "inputs", "initial_state"}
    analytic = {**grads, **grads["initial_state"]._asdict()}
    for name in ["weights", "recurrent_weights", "inputs"] + (list("cnmh") if given_state else []):
        assert tuple(analytic[name].shape) == arrays[name].shape
        assert_gradient_close(analytic[name], numeric_gradient(loss(name), arrays[name]), name)


# --- stacks mixing SLSTMCell and LSTMCell, save/load, .to()

def mixed_stack(values: dict, backend, dtype="float64") -> xlstm.MultiRNNCell:
    """LSTM (I=2 → 3) under sLSTM (3 → 4, two heads) under LSTM (4 → 2), from arrays keyed like parameters()."""
    return xlstm.MultiRNNCell([
        xlstm.LSTMCell(3, 2, weights=values["cell_0/weights"], dtype=dtype, backend=backend),
        xlstm.SLSTMCell(4, 3, num_heads=2, weights=values["cell_1/weights"], dtype=dtype, backend=backend,
                        recurrent_weights=values["cell_1/recurrent_weights"]),
        xlstm.LSTMCell(2, 4, weights=values["cell_2/weights"], dtype=dtype, backend=backend)])


def mixed_stack_arrays(rng) -> dict[str, np.ndarray]:
    slstm = random_cell_arrays(rng, 4, 3, 2)
    return {"cell_0/weights": rng.normal(size=(12, 6)), "cell_1/weights": slstm["weights"],
            "cell_1/recurrent_weights": slstm["recurrent_weights"], "cell_2/weights": rng.normal(size=(8, 7))}


def test_mixed_stack_gradients_match_finite_differences(backend):
    B, T = 2, 3
    rng = np.random.default_rng(5)
    arrays = {**mixed_stack_arrays(rng), "inputs": rng.normal(size=(B, T, 2))}
    r_out = rng.normal(size=(B, T, 2))
    on = lambda a: xlstm.asarray(a, backend=backend)  # noqa: E731

    def run(values, vjp=False):
        call = xlstm.dynamic_rnn_vjp if vjp else xlstm.dynamic_rnn
        return call(mixed_stack(values, backend), on(values["inputs"]), sequence_length=[3, 2])

    def loss(name):
        def of(array):
            outputs, final = run({**arrays, name: array})
            return float(np.sum(xlstm.to_numpy(outputs) * r_out)) + float(np.sum(xlstm.to_numpy(final[1].m)))
        return of

    _, final, backward = run(arrays, vjp=True)
    m_only = xlstm.SLSTMState(*(on(np.zeros((B, 4))),) * 2, on(np.ones((B, 4))), on(np.zeros((B, 4))))
    d_final = (xlstm.LSTMState(on(np.zeros((B, 3))), on(np.zeros((B, 3)))), m_only,
               xlstm.LSTMState(on(np.zeros((B, 2))), on(np.zeros((B, 2)))))
    grads = backward(on(r_out), d_final)
    assert isinstance(grads["initial_state"][1], xlstm.SLSTMState)
    for name in arrays:
        assert_gradient_close(grads[name], numeric_gradient(loss(name), arrays[name], samples=16), name)


def test_mixed_stack_save_load_and_to_keep_every_number(backend, tmp_path):
    rng = np.random.default_rng(6)
    stack = mixed_stack(mixed_stack_arrays(rng), backend)
    x = rng.normal(size=(2, 4, 2))
    outputs, final = xlstm.dynamic_rnn(stack, xlstm.asarray(x, backend=backend))
    xlstm.save(stack, tmp_path / "stack.npz")
    # The same backend gives the same bits; another one (its own LSTM kernels) the same numbers to rounding.
    for copy, tolerance in ((xlstm.load(tmp_path / "stack.npz", backend=backend), 0.0), (stack.to("numpy"), 1e-12)):
        assert isinstance(copy.cells[1], xlstm.SLSTMCell) and copy.cells[1].num_heads == 2
        for name, value in stack.parameters().items():
            np.testing.assert_array_equal(xlstm.to_numpy(copy.parameters()[name]), xlstm.to_numpy(value))
        again, again_final = xlstm.dynamic_rnn(copy, xlstm.asarray(x, backend=copy.backend))
        np.testing.assert_allclose(xlstm.to_numpy(again), xlstm.to_numpy(outputs), rtol=0, atol=tolerance)
        for ours, theirs in zip(again_final[1], final[1]):
            np.testing.assert_allclose(xlstm.to_numpy(ours), xlstm.to_numpy(theirs), rtol=0, atol=tolerance)


def test_bidirectional_and_reversed_slstm_layers_gradients(backend):
    """The sequence layers run SLSTMCells like LSTMCells: a sampled finite-difference check of every array."""
    B, T, rng = 2, 4, np.random.default_rng(9)
    arrays = {"layer_0/fw/weights": random_cell_arrays(rng, 4, 3, 2)["weights"],
              "layer_0/fw/recurrent_weights": random_cell_arrays(rng, 4, 3, 2)["recurrent_weights"],
              "layer_0/bw/weights": random_cell_arrays(rng, 2, 3, 1)["weights"],
              "layer_0/bw/recurrent_weights": random_cell_arrays(rng, 2, 3, 1)["recurrent_weights"],
              "layer_1/weights": random_cell_arrays(rng, 3, 6, 3)["weights"],
              "layer_1/recurrent_weights": random_cell_arrays(rng, 3, 6, 3)["recurrent_weights"],
              "inputs": rng.normal(size=(B, T, 3))}
    r_out = rng.normal(size=(B, T, 3))

    def cell(values, prefix, units, inputs, heads):
        return xlstm.SLSTMCell(units, inputs, num_heads=heads, weights=values[prefix + "weights"], dtype="float64",
                               recurrent_weights=values[prefix + "recurrent_weights"], backend=backend)

    def model(values):
        both_ways = xlstm.Bidirectional(cell(values, "layer_0/fw/", 4, 3, 2), cell(values, "layer_0/bw/", 2, 3, 1))
        return xlstm.LSTM([both_ways, xlstm.Reversed(cell(values, "layer_1/", 3, 6, 3))])

    def loss(name):
        def of(array):
            values = {**arrays, name: array}
            outputs, _ = model(values)(xlstm.asarray(values["inputs"], backend=backend), sequence_length=[4, 2])
            return float(np.sum(xlstm.to_numpy(outputs) * r_out))
        return of

    _, _, backward = model(arrays).vjp(xlstm.asarray(arrays["inputs"], backend=backend), sequence_length=[4, 2])
    grads = backward(xlstm.asarray(r_out, backend=backend), None)
    for name in arrays:
        assert_gradient_close(grads[name], numeric_gradient(loss(name), arrays[name], samples=8), name)


def test_default_initialisation_is_seeded_and_remembers_long():
    cell = xlstm.SLSTMCell(6, 3, num_heads=2, seed=1, dtype="float64", backend="numpy")
    same = xlstm.SLSTMCell(6, 3, num_heads=2, seed=1, dtype="float64", backend="numpy")
    np.testing.assert_array_equal(cell.recurrent_weights, same.recurrent_weights)
    np.testing.assert_array_equal(cell.weights, same.weights)
    forget_bias = cell.weights[6:12, 0]
    np.testing.assert_allclose(forget_bias, [3.0, 4.5, 6.0] * 2)
    assert np.all(cell.weights[:6, 0] == 0) and np.all(cell.weights[12:, 0] == 0)
    assert cell.config() == {"num_units": 6, "input_size": 3, "num_heads": 2, "seed": 1}
    assert cell.to("numpy", dtype="float32").weights.dtype == np.float32


def test_one_step_call_equals_a_one_step_run(backend):
    rng = np.random.default_rng(8)
    cell = xlstm.SLSTMCell(4, 3, num_heads=2, **random_cell_arrays(rng, 4, 3, 2), dtype="float64", backend=backend)
    x = xlstm.asarray(rng.normal(size=(2, 3)), backend=backend)
    h, state = cell(x)
    outputs, final = xlstm.dynamic_rnn(cell, x[:, None, :])
    np.testing.assert_array_equal(xlstm.to_numpy(h), xlstm.to_numpy(outputs[:, 0, :]))
    assert isinstance(state, xlstm.SLSTMState)
    np.testing.assert_array_equal(xlstm.to_numpy(state.n), xlstm.to_numpy(final.n))


# --- bad input, refused by name before any work

def test_bad_settings_and_weights_are_refused_by_name():
    with pytest.raises(ValueError, match="num_heads must divide num_units 6, got 4"):
        xlstm.SLSTMCell(6, 2, num_heads=4)
    with pytest.raises(ValueError, match="num_heads"):
        xlstm.SLSTMCell(6, 2, num_heads=0)
    with pytest.raises(ValueError, match="weights"):
        xlstm.SLSTMCell(4, 2, weights=np.zeros((16, 2)))
    with pytest.raises(ValueError, match="recurrent_weights"):
        xlstm.SLSTMCell(4, 2, num_heads=2, recurrent_weights=np.zeros((2, 8, 4)))


def test_bad_state_is_refused_by_name():
    cell = xlstm.SLSTMCell(4, 2, dtype="float64", backend="numpy")
    x = np.zeros((3, 5, 2))
    with pytest.raises(TypeError, match=r"initial_state must be a SLSTMState\(c, n, m, h\), got LSTMState"):
        xlstm.dynamic_rnn(cell, x, xlstm.LSTMState(np.zeros((3, 4)), np.zeros((3, 4))))
    wrong_batch = xlstm.SLSTMState(*(np.zeros((2, 4)),) * 4)
    with pytest.raises(ValueError, match="initial_state.c"):
        xlstm.dynamic_rnn(cell, x, wrong_batch)
    _, _, backward = xlstm.dynamic_rnn_vjp(cell, x)
    with pytest.raises(TypeError, match="d_final_state"):
        backward(None, (np.zeros((3, 4)),))


# --- weights from NX-AI's sLSTMLayer

@needs_reference
@pytest.mark.parametrize("heads", [1, 2])
def test_from_nxai_slstm_computes_what_their_layer_computes_before_its_group_norm(heads, backend):
    import torch
    layer_module = nxai_reference.reference_module("blocks.slstm.layer")
    B, T, H = 2, 5, 4
    torch.manual_seed(heads)
    config = layer_module.sLSTMLayerConfig(embedding_dim=H, num_heads=heads, conv1d_kernel_size=0,
                                           backend="vanilla")
    layer = layer_module.sLSTMLayer(config).double()
    cell = layer.slstm_cell
    with torch.no_grad():  # their recurrent kernel starts at zero; make every weight count
        cell.recurrent_kernel[:] = torch.randn(cell.recurrent_kernel.shape, dtype=torch.float64) * 0.7
        cell.bias[:] = torch.randn(cell.bias.shape, dtype=torch.float64)
    x = torch.randn(B, T, H, dtype=torch.float64)
    with torch.no_grad():  # the layer's forward up to its group norm (conv1d_kernel_size=0: all gates read x)
        y, _ = cell(torch.cat([layer.fgate(x), layer.igate(x), layer.zgate(x), layer.ogate(x)], dim=-1))
    theirs = y.transpose(1, 2).reshape(B, T, H).numpy()  # [B, NH, T, DH] → [B, T, H]

    weights = layer.state_dict()  # detached tensors
    ours = xlstm.convert.from_nxai_slstm(cell.recurrent_kernel[:], cell.bias[:], weights["igate.weight"],
                                         weights["fgate.weight"], weights["zgate.weight"], weights["ogate.weight"],
                                         backend=backend)
    assert (ours.num_units, ours.input_size, ours.num_heads) == (H, H, heads)
    outputs, _ = xlstm.dynamic_rnn(ours, xlstm.asarray(x.numpy(), backend=backend))
    np.testing.assert_allclose(xlstm.to_numpy(outputs), theirs, rtol=0, atol=1e-10)


def test_from_nxai_slstm_refuses_wrong_shapes_by_name():
    kernel, bias, gate = np.zeros((2, 3, 4, 3)), np.zeros((2, 4, 3)), np.zeros((2, 3, 3))
    with pytest.raises(ValueError, match="recurrent_kernel must be"):
        xlstm.convert.from_nxai_slstm(np.zeros((2, 12, 3)), bias, gate, gate, gate, gate)
    with pytest.raises(ValueError, match="bias"):
        xlstm.convert.from_nxai_slstm(kernel, np.zeros((2, 3, 4)), gate, gate, gate, gate)
    with pytest.raises(ValueError, match="zgate"):
        xlstm.convert.from_nxai_slstm(kernel, bias, gate, gate, np.zeros((2, 2, 3)), gate)
