"""MLSTMCell: NX-AI's reference as the oracle, the two forms against each other, finite differences everywhere."""
from __future__ import annotations

import functools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import xlstm
from test_gradients import assert_gradient_close, numeric_gradient
from xlstm.mlstm_parallel import chunkwise_form, parallel_form
from xlstm.mlstm_recurrent import MLSTMState, recurrent_form
from xlstm_backends import dtype_name, numpy_mlstm, nxai_reference

FORMS = {"recurrent": recurrent_form, "parallel": parallel_form,
         "chunkwise": functools.partial(chunkwise_form, chunk_size=3),
         "numpy-kernel": numpy_mlstm.parallel_form}  # NumPy's fused parallel form (run_core's default backend)
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


def reference_backends():
    """torch and NX-AI's `blocks.mlstm.backends` (the tests that use them skip without the reference)."""
    return pytest.importorskip("torch"), nxai_reference.reference_module("blocks.mlstm.backends")


@needs_reference
@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("NH", [1, 3])
def test_zero_state_equals_parallel_stabilized_simple_with_gradients(form, NH):
    torch, backends_ref = reference_backends()
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
    torch, backends_ref = reference_backends()
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
    torch, backends_ref = reference_backends()
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


# ---------------------------------------------------------------- the cell on every backend

# (form, output gate, sequence lengths, time-major, initial state: "random" or None (zero, fresh))
CELL_CASES = {
    "recurrent": ("recurrent", True, None, False, "random"),
    "parallel": ("parallel", True, None, False, "random"),
    "recurrent-lengths-time-major": ("recurrent", True, [4, 0, 2], True, "random"),
    "parallel-lengths-time-major": ("parallel", True, [4, 0, 2], True, "random"),
    "parallel-zero-state-lengths": ("parallel", False, [1, 4, 0], False, None),
    "recurrent-zero-state": ("recurrent", False, None, True, None),
    "auto-in-chunks-lengths": ("auto", True, [4, 0, 2], False, "random"),
}
B, T, I, H, NH = 3, 4, 3, 4, 2


def cell_arrays(rng: np.random.Generator, output_gate: bool, time_major: bool) -> dict[str, np.ndarray]:
    rows = 3 * H + 2 * NH + (H if output_gate else 0)
    return {"weights": rng.normal(scale=0.7, size=(rows, 1 + I)),
            "inputs": rng.normal(size=(T, B, I) if time_major else (B, T, I)),
            **dict(zip(("C", "n", "m"), random_state(rng, B, NH, H // NH)))}


def run_cell(backend, arrays: dict, form: str, output_gate: bool, lengths, time_major: bool, with_state: bool,
             vjp: bool = False):
    on = lambda a: xlstm.asarray(a, backend=backend)  # noqa: E731
    cell = xlstm.MLSTMCell(H, I, num_heads=NH, output_gate=output_gate, form=form, weights=arrays["weights"],
                           dtype="float64", backend=backend)
    state = xlstm.MLSTMState(on(arrays["C"]), on(arrays["n"]), on(arrays["m"])) if with_state else None
    call = xlstm.dynamic_rnn_vjp if vjp else xlstm.dynamic_rnn
    return call(cell, on(arrays["inputs"]), state, sequence_length=lengths, time_major=time_major)


@pytest.mark.parametrize("case", list(CELL_CASES))
def test_cell_gradients_match_finite_differences(backend, case, monkeypatch):
    monkeypatch.setattr(xlstm.mlstm, "CHUNK_SIZE", 3)  # form="auto": chunks of 3 + 1 steps
    form, output_gate, lengths, time_major, initial = CELL_CASES[case]
    rng = np.random.default_rng(len(case))
    arrays = cell_arrays(rng, output_gate, time_major)
    with_state = initial is not None
    if not with_state:  # the zero state's gradient, where the state stays fresh (n = 0) under the perturbation
        arrays.update(C=np.zeros_like(arrays["C"]), n=np.zeros_like(arrays["n"]), m=np.zeros_like(arrays["m"]))
    r_out = rng.normal(size=(T, B, H) if time_major else (B, T, H))
    r_state = random_state(rng, B, NH, H // NH)
    settings = (form, output_gate, lengths, time_major, True)

    def loss(name):
        def of(array):
            outputs, final = run_cell(backend, {**arrays, name: array}, *settings)
            return float(np.sum(xlstm.to_numpy(outputs) * r_out)
                         + sum(np.sum(xlstm.to_numpy(part) * r) for part, r in zip(final, r_state)))
        return of

    _, _, backward = run_cell(backend, arrays, *settings, vjp=True)
    grads = backward(xlstm.asarray(r_out, backend=backend),
                     xlstm.MLSTMState(*(xlstm.asarray(r, backend=backend) for r in r_state)))
    assert set(grads) == {"weights", "inputs", "initial_state"}
    analytic = {"weights": grads["weights"], "inputs": grads["inputs"], **grads["initial_state"]._asdict()}
    for name in ("weights", "inputs", "C", "m") + (("n",) if with_state else ()):
        assert tuple(analytic[name].shape) == arrays[name].shape
        assert_gradient_close(analytic[name], numeric_gradient(loss(name), arrays[name], samples=12), name)


@pytest.mark.parametrize("case", list(CELL_CASES))
def test_forms_agree_in_outputs_states_and_gradients(backend, case, monkeypatch):
    monkeypatch.setattr(xlstm.mlstm, "CHUNK_SIZE", 3)
    _, output_gate, lengths, time_major, initial = CELL_CASES[case]
    rng = np.random.default_rng(3)
    arrays = cell_arrays(rng, output_gate, time_major)
    r_out = xlstm.asarray(rng.normal(size=(T, B, H) if time_major else (B, T, H)), backend=backend)
    r_state = xlstm.MLSTMState(*(xlstm.asarray(r, backend=backend) for r in random_state(rng, B, NH, H // NH)))
    results = {}
    for form in ("recurrent", "parallel", "auto"):
        outputs, final, backward = run_cell(backend, arrays, form, output_gate, lengths, time_major,
                                            initial is not None, vjp=True)
        grads = backward(r_out, r_state)
        results[form] = [outputs, *final, grads["weights"], grads["inputs"], *grads["initial_state"]]
    for form in ("parallel", "auto"):
        for ours, theirs in zip(results["recurrent"], results[form]):
            np.testing.assert_allclose(xlstm.to_numpy(ours), xlstm.to_numpy(theirs), rtol=0, atol=1e-12)


def test_long_window_of_large_gates_stays_finite_and_forms_agree():
    """The stabiliser at work: gate pre-activations of ±60 over 40 steps would overflow exp() unstabilised."""
    rng = np.random.default_rng(5)
    arrays = core_arrays(rng, 40, 2, 2, 3)
    arrays["i"] *= 30.0
    results = [[h, *final] for h, final, _ in (run_core(form, arrays, zero_state(2, 2, 3)) for form in FORMS)]
    for other in results[1:]:
        for ours, theirs in zip(results[0], other):
            assert np.all(np.isfinite(xlstm.to_numpy(theirs)))
            np.testing.assert_allclose(xlstm.to_numpy(ours), xlstm.to_numpy(theirs), rtol=1e-12, atol=1e-12)


def test_step_by_step_equals_unrolled_and_the_forms_chosen(backend):
    rng = np.random.default_rng(2)
    cell = xlstm.MLSTMCell(H, I, num_heads=NH, seed=1, dtype="float64", backend=backend)
    x = xlstm.asarray(rng.normal(size=(B, T, I)), backend=backend)
    outputs, final = xlstm.dynamic_rnn(cell, x)
    state = None
    for t in range(T):
        h, state = cell(x[:, t, :], state)
        np.testing.assert_allclose(xlstm.to_numpy(h), xlstm.to_numpy(outputs[:, t, :]), rtol=0, atol=1e-12)
    for ours, theirs in zip(state, final):
        np.testing.assert_allclose(xlstm.to_numpy(ours), xlstm.to_numpy(theirs), rtol=0, atol=1e-12)
    assert cell.form_for(T).func is chunkwise_form and cell.form_for(0) is recurrent_form
    assert xlstm.MLSTMCell(H, I, form="recurrent").form_for(T) is recurrent_form
    kernels = backend.library.mlstm_kernels()
    assert xlstm.MLSTMCell(H, I, form="parallel", backend=backend).form_for(T) is (
        parallel_form if kernels is None else kernels.parallel_form)


def test_stack_of_mlstm_and_lstm_cells_matches_finite_differences(backend):
    rng = np.random.default_rng(4)
    w_m, w_l = rng.normal(scale=0.7, size=(3 * H + 2 * NH + H, 1 + I)), rng.normal(size=(4 * 5, 1 + H + 5))
    x, r = rng.normal(size=(B, T, I)), rng.normal(size=(B, T, 5))

    def outputs_of(wm, wl, inputs, vjp=False):
        stack = xlstm.MultiRNNCell([xlstm.MLSTMCell(H, I, num_heads=NH, weights=wm, dtype="float64", backend=backend),
                                    xlstm.LSTMCell(5, H, weights=wl, dtype="float64", backend=backend)])
        call = xlstm.dynamic_rnn_vjp if vjp else xlstm.dynamic_rnn
        return call(stack, xlstm.asarray(inputs, backend=backend), sequence_length=[4, 2, 3])

    _, _, backward = outputs_of(w_m, w_l, x, vjp=True)
    grads = backward(xlstm.asarray(r, backend=backend), None)
    losses = {"mlstm": lambda a: outputs_of(a, w_l, x), "lstm": lambda a: outputs_of(w_m, a, x),
              "inputs": lambda a: outputs_of(w_m, w_l, a)}
    for name, value, analytic in (("mlstm", w_m, grads["cell_0/weights"]), ("lstm", w_l, grads["cell_1/weights"]),
                                  ("inputs", x, grads["inputs"])):
        numeric = numeric_gradient(lambda a: float(np.sum(xlstm.to_numpy(losses[name](a)[0]) * r)), value, samples=12)
        assert_gradient_close(analytic, numeric, name)


def test_save_load_and_to_keep_the_cell(backend, tmp_path):
    cell = xlstm.MLSTMCell(H, I, num_heads=NH, output_gate=False, eps=1e-5, form="parallel", seed=3,
                           dtype="float64", backend=backend)
    x = xlstm.asarray(np.random.default_rng(0).normal(size=(B, T, I)), backend=backend)
    expected = xlstm.to_numpy(xlstm.dynamic_rnn(cell, x)[0])
    xlstm.save(cell, tmp_path / "cell.npz")
    loaded = xlstm.load(tmp_path / "cell.npz", backend=backend)
    moved = cell.to("numpy")
    assert loaded.config() == moved.config() == cell.config()
    np.testing.assert_array_equal(xlstm.to_numpy(xlstm.dynamic_rnn(loaded, x)[0]), expected)
    np.testing.assert_allclose(xlstm.to_numpy(xlstm.dynamic_rnn(moved, xlstm.to_numpy(x))[0]), expected,
                               rtol=0, atol=1e-12)


def test_bad_input_is_refused_by_name():
    cases = {
        "num_heads must divide num_units 6": dict(num_units=6, input_size=2, num_heads=4),
        "num_heads must be a positive": dict(num_units=6, input_size=2, num_heads=0),
        "output_gate must be": dict(num_units=6, input_size=2, output_gate="yes"),
        "eps must be a positive finite number": dict(num_units=6, input_size=2, eps=-1.0),
        "form must be one of": dict(num_units=6, input_size=2, form="chunkwise"),
        r"weights must .*\[3H \+ 2NH \+ H, 1 \+ I\]": dict(num_units=6, input_size=2, weights=np.zeros((5, 3))),
        "input_size must be a positive": dict(num_units=6, input_size=0),
    }
    for message, arguments in cases.items():
        with pytest.raises((TypeError, ValueError), match=message):
            xlstm.MLSTMCell(**arguments)
    cell = xlstm.MLSTMCell(4, 2, num_heads=2, dtype="float64")
    with pytest.raises(ValueError, match=r"initial_state.C must have shape"):
        xlstm.dynamic_rnn(cell, np.zeros((1, 3, 2)), xlstm.MLSTMState(np.zeros((1, 2, 3, 3)), np.zeros((1, 2, 2)),
                                                                     np.zeros((1, 2))))
    with pytest.raises(TypeError, match="initial_state must be a MLSTMState"):
        xlstm.dynamic_rnn(cell, np.zeros((1, 3, 2)), (np.zeros((1, 2, 2, 2)),))


# ---------------------------------------------------------------- weights from the reference


@needs_reference
@pytest.mark.parametrize("bias", [True, False])
def test_convert_from_reference_modules_computes_their_h_tilde(bias):
    torch = pytest.importorskip("torch")
    cell_module = nxai_reference.reference_module("blocks.mlstm.cell")
    headwise = nxai_reference.reference_module("components.linear_headwise")
    B, S, units, heads, proj_heads = 2, 6, 8, 2, 4
    torch.manual_seed(0)
    config = headwise.LinearHeadwiseExpandConfig(in_features=units, num_heads=proj_heads, bias=bias)
    projections = [headwise.LinearHeadwiseExpand(config).double() for _ in range(3)]
    cell = cell_module.mLSTMCell(cell_module.mLSTMCellConfig(context_length=S, embedding_dim=units,
                                                             num_heads=heads)).double()
    with torch.no_grad():
        for parameter in [*cell.igate.parameters(), *cell.fgate.parameters()] + [p.bias for p in projections if bias]:
            parameter.normal_()
    captured = []
    cell.outnorm.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0]))
    x = torch.randn(B, S, units, dtype=torch.float64)
    with torch.no_grad():
        cell(*(projection(x) for projection in projections))
    expected = captured[0].transpose(1, 2).reshape(B, S, units).numpy()  # their h̃ [B, NH, S, DH] → [B, S, H]
    ours = xlstm.convert.from_nxai_mlstm(*projections, cell)
    assert (ours.output_gate, ours.num_heads, dtype_name(ours.dtype)) == (False, heads, "float64")
    np.testing.assert_allclose(xlstm.to_numpy(xlstm.dynamic_rnn(ours, x.numpy())[0]), expected, rtol=0, atol=1e-10)
    from_state_dicts = xlstm.convert.from_nxai_mlstm(*(p.state_dict() for p in projections), cell.state_dict(),
                                                     backend="array_api_strict")
    np.testing.assert_allclose(xlstm.to_numpy(from_state_dicts.weights), xlstm.to_numpy(ours.weights), rtol=0, atol=0)
    with pytest.raises(ValueError, match="cell must be NX-AI's mLSTMCell or its state dict with 'igate.weight'"):
        xlstm.convert.from_nxai_mlstm(*projections, {})
    with pytest.raises(ValueError, match=r"q_proj.weight must be \[heads, out/heads, in/heads\]"):
        xlstm.convert.from_nxai_mlstm({"weight": np.zeros((2, 2))}, *projections[1:], cell)


@needs_reference
def test_convert_their_step_state_and_continue_from_it():
    """Their cell.step from a nonzero state, three steps, against our converted cell from the converted state."""
    torch = pytest.importorskip("torch")
    cell_module = nxai_reference.reference_module("blocks.mlstm.cell")
    headwise = nxai_reference.reference_module("components.linear_headwise")
    B, units, heads = 2, 6, 2
    torch.manual_seed(1)
    config = headwise.LinearHeadwiseExpandConfig(in_features=units, num_heads=3, bias=True)
    projections = [headwise.LinearHeadwiseExpand(config).double() for _ in range(3)]
    cell = cell_module.mLSTMCell(cell_module.mLSTMCellConfig(context_length=3, embedding_dim=units,
                                                             num_heads=heads)).double()
    with torch.no_grad():
        for parameter in [*cell.igate.parameters(), *cell.fgate.parameters()]:
            parameter.normal_()
    captured = []
    cell.outnorm.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0]))
    size = units // heads
    state = (torch.randn(B, heads, size, size, dtype=torch.float64), torch.randn(B, heads, size, 1, dtype=torch.float64),
             torch.randn(B, heads, 1, 1, dtype=torch.float64))
    ours_state = xlstm.convert.from_nxai_mlstm_state(state)
    x = torch.randn(B, 3, units, dtype=torch.float64)
    with torch.no_grad():
        for t in range(3):
            _, state = cell.step(*(projection(x[:, t:t + 1]) for projection in projections), mlstm_state=state)
    ours = xlstm.convert.from_nxai_mlstm(*projections, cell)
    outputs, final = xlstm.dynamic_rnn(ours, x.numpy(), ours_state)
    expected = torch.cat([h.transpose(1, 2).reshape(B, 1, units) for h in captured], dim=1).numpy()
    np.testing.assert_allclose(xlstm.to_numpy(outputs), expected, rtol=0, atol=1e-10)
    for theirs, back in zip(state, xlstm.convert.to_nxai_mlstm_state(final)):
        assert back.shape == theirs.shape
        np.testing.assert_allclose(back.numpy(), theirs.numpy(), rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match=r"mlstm_state's n_state must have shape \[2, 2, 3, 1\]"):
        xlstm.convert.from_nxai_mlstm_state((state[0], state[1][..., 0], state[2]))


# ---------------------------------------------------------------- NumPy's fused parallel form


@st.composite
def core_problems(draw):
    T, B, NH, DH = draw(st.integers(1, 9)), draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 4))
    lengths = draw(st.one_of(st.none(), st.lists(st.integers(0, T), min_size=B, max_size=B)))
    return {"sizes": (T, B, NH, DH), "lengths": lengths, "seed": draw(st.integers(0, 2**32 - 1)),
            "state": draw(st.sampled_from(["zero", "random"])), "gate_scale": draw(st.sampled_from([1.0, 4.0, 30.0])),
            "with_final": draw(st.booleans())}


def problem_arrays(problem: dict) -> tuple:
    """(arrays, initial state, valid or None, a random d_h, a random d_final) of a `core_problems` draw."""
    T, B, NH, DH = problem["sizes"]
    rng = np.random.default_rng(problem["seed"])
    arrays = core_arrays(rng, T, B, NH, DH)
    arrays["i"], arrays["f"] = arrays["i"] * problem["gate_scale"], arrays["f"] * problem["gate_scale"]
    state = random_state(rng, B, NH, DH) if problem["state"] == "random" else zero_state(B, NH, DH)
    valid = None if problem["lengths"] is None else (np.arange(T)[:, None] < np.array(problem["lengths"]))[..., None]
    return arrays, state, valid, rng.normal(size=(T, B, NH, DH)), random_state(rng, B, NH, DH)


@settings(max_examples=60, deadline=None)
@pytest.mark.filterwarnings("ignore:overflow encountered in exp")  # exp(−m) of a tiny memory: inf, h̃ = 0
@given(problem=core_problems())
def test_numpy_kernel_equals_the_generic_parallel_form(problem):
    """Outputs, final state and every gradient within 1e-12 in float64 (and float32 stays float32)."""
    arrays, state, valid, r_h, r_state = problem_arrays(problem)
    results = []
    for form in (parallel_form, numpy_mlstm.parallel_form):
        h, final, backward = form(*(arrays[name] for name in ("q", "k", "v", "i", "f")), state, valid, 1e-6, True)
        grads = backward(r_h, r_state if problem["with_final"] else None)
        results.append([h, *final, *(grads[name] for name in "qkvif"), *grads["initial_state"]])
    for generic, fused in zip(*results):
        assert fused.shape == generic.shape and fused.dtype == generic.dtype
        np.testing.assert_allclose(fused, generic, rtol=1e-12, atol=1e-12, equal_nan=False)
    as_float32 = {name: a.astype(np.float32) for name, a in arrays.items()}
    h, final, backward = numpy_mlstm.parallel_form(*(as_float32[name] for name in ("q", "k", "v", "i", "f")),
                                                   MLSTMState(*(a.astype(np.float32) for a in state)), valid, 1e-6,
                                                   True)
    grads = backward(r_h.astype(np.float32), None)
    every = [h, *final, *(grads[name] for name in "qkvif"), *grads["initial_state"]]
    assert {a.dtype for a in every} == {np.dtype(np.float32)} and all(np.all(np.isfinite(a)) for a in every)


def test_float32_keeps_its_dtype_and_follows_float64(backend):
    """The default dtype through every form (chunks of 32 and a remainder), lengths, the backward."""
    rng = np.random.default_rng(8)
    x, weights = rng.normal(size=(3, 40, I)), rng.normal(scale=0.5, size=(3 * H + 2 * NH + H, 1 + I))
    results = {}
    for dtype, form in (("float64", "recurrent"), ("float32", "recurrent"), ("float32", "auto")):
        cell = xlstm.MLSTMCell(H, I, num_heads=NH, weights=weights, dtype=dtype, form=form, backend=backend)
        outputs, final, backward = xlstm.dynamic_rnn_vjp(cell, xlstm.asarray(x, dtype=dtype, backend=backend),
                                                         sequence_length=[40, 33, 0])
        grads = backward(outputs, final)
        results[dtype, form] = [xlstm.to_numpy(a) for a in (outputs, *final, grads["weights"], grads["inputs"],
                                                              *grads["initial_state"])]
        assert {a.dtype for a in results[dtype, form]} == {np.dtype(dtype)}
    for form in ("recurrent", "auto"):
        for ours, exact in zip(results["float32", form], results["float64", "recurrent"]):
            np.testing.assert_allclose(ours, exact, rtol=0, atol=1e-4 * max(1.0, float(np.abs(exact).max())))


@pytest.mark.filterwarnings("ignore:overflow encountered in exp")
def test_tiny_input_gates_give_finite_gradients_in_float32(backend):
    """Input gates of −120 make exp(−m) overflow float32 (not float64): h̃ is then 0 and every gradient finite,
    following float64's."""
    rng = np.random.default_rng(9)
    weights = rng.normal(scale=0.5, size=(3 * H + 2 * NH + H, 1 + I))
    weights[3 * H:3 * H + NH, 0] = -120.0
    x = rng.normal(size=(B, 6, I))
    results = []
    for dtype in ("float64", "float32"):
        for form in ("recurrent", "auto"):
            cell = xlstm.MLSTMCell(H, I, num_heads=NH, weights=weights, dtype=dtype, form=form, backend=backend)
            outputs, final, backward = xlstm.dynamic_rnn_vjp(cell, xlstm.asarray(x, dtype=dtype, backend=backend))
            grads = backward(xlstm.asarray(np.ones((B, 6, H)), dtype=dtype, backend=backend), None)
            results.append([xlstm.to_numpy(a) for a in (outputs, grads["weights"], grads["inputs"])])
    for result in results[1:]:
        for ours, exact in zip(result, results[0]):
            assert np.all(np.isfinite(ours))
            np.testing.assert_allclose(ours, exact, rtol=0, atol=1e-4 * max(1.0, float(np.abs(exact).max())))
