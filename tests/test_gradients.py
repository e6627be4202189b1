"""Every gradient against central finite differences in float64 (relative error ≤ 1e-6)."""
from __future__ import annotations

import numpy as np
import pytest

import xlstm

STEP = 1e-6  # central differences: truncation ~STEP², round-off ~1e-16/STEP


def numeric_gradient(loss_of, array: np.ndarray, samples: int | None = None) -> np.ndarray:
    """d loss / d array by central differences, one element at a time.

    With `samples`, only that many randomly chosen elements are differenced (the rest are
    NaN and not compared), which keeps tests of large parameter arrays fast.
    """
    indices = list(np.ndindex(array.shape))
    if samples is not None and samples < len(indices):
        chosen = np.random.default_rng(len(indices)).choice(len(indices), samples, replace=False)
        indices = [indices[k] for k in chosen]
    gradient = np.full(array.shape, np.nan)
    for index in indices:
        plus, minus = array.copy(), array.copy()
        plus[index] += STEP
        minus[index] -= STEP
        gradient[index] = (loss_of(plus) - loss_of(minus)) / (2 * STEP)
    return gradient


def assert_gradient_close(analytic, numeric, what: str) -> None:
    analytic, compared = xlstm.to_numpy(analytic), ~np.isnan(numeric)
    scale = max(1.0, float(np.abs(numeric[compared]).max()))
    error = float(np.abs(analytic - numeric)[compared].max()) / scale
    assert error <= 1e-6, f"{what}: relative error {error:.2e}"


# (cell settings, sequence lengths, time-major)
CASES = {
    "plain": ({}, None, False),
    "plain-lengths-time-major": ({"forget_bias": 0.3}, [3, 1], True),
    "layer-norm": ({"layer_norm": True}, None, False),
    "layer-norm-lengths": ({"layer_norm": True}, [2, 0], False),
    "dropout-lengths": ({"dropout_keep_prob": 0.6}, [1, 3], False),
    "layer-norm-dropout-time-major": ({"layer_norm": True, "dropout_keep_prob": 0.7}, None, True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_dynamic_rnn_vjp(backend, case):
    settings, lengths, time_major = CASES[case]
    B, T, I, H = 2, 3, 2, 2
    rng = np.random.default_rng(0)
    arrays = {
        "weights": rng.normal(size=(4 * H, 1 + I + H)), "norm_gain": rng.normal(size=(5, H)),
        "norm_shift": rng.normal(size=(5, H)), "inputs": rng.normal(size=(T, B, I) if time_major else (B, T, I)),
        "c0": rng.normal(size=(B, H)), "h0": rng.normal(size=(B, H)),
    }
    out_shape = (T, B, H) if time_major else (B, T, H)
    r_out, r_c, r_h = rng.normal(size=out_shape), rng.normal(size=(B, H)), rng.normal(size=(B, H))
    on = lambda a: xlstm.asarray(a, backend=backend)  # noqa: E731

    def run(values, vjp=False):
        cell = xlstm.LSTMCell(H, I, weights=values["weights"], norm_gain=values["norm_gain"], seed=3,
                              norm_shift=values["norm_shift"], dtype="float64", backend=backend, **settings)
        call = xlstm.dynamic_rnn_vjp if vjp else xlstm.dynamic_rnn
        return call(cell, on(values["inputs"]), xlstm.LSTMState(on(values["c0"]), on(values["h0"])),
                    sequence_length=lengths, time_major=time_major)

    def loss(name):
        def of(array):
            outputs, final = run({**arrays, name: array})
            return float(np.sum(xlstm.to_numpy(outputs) * r_out) + np.sum(xlstm.to_numpy(final.c) * r_c)
                         + np.sum(xlstm.to_numpy(final.h) * r_h))
        return of

    _, _, backward = run(arrays, vjp=True)
    grads = backward(on(r_out), xlstm.LSTMState(on(r_c), on(r_h)))
    names = ["weights", "inputs", "c0", "h0"] + (["norm_gain", "norm_shift"] if settings.get("layer_norm") else [])
    analytic = {**grads, "c0": grads["initial_state"].c, "h0": grads["initial_state"].h}
    for name in names:
        assert analytic[name].shape == arrays[name].shape
        assert_gradient_close(analytic[name], numeric_gradient(loss(name), arrays[name]), name)
    assert set(grads) == {"weights", "inputs", "initial_state"} | ({"norm_gain", "norm_shift"}
                                                                   if settings.get("layer_norm") else set())


def test_dynamic_rnn_vjp_cotangents_may_be_none(backend):
    cell = xlstm.LSTMCell(3, 2, seed=0, dtype="float64", backend=backend)
    inputs = xlstm.asarray(np.ones((2, 4, 2)), backend=backend)
    _, final, backward = xlstm.dynamic_rnn_vjp(cell, inputs)
    nothing = backward(None, None)
    assert np.all(xlstm.to_numpy(nothing["weights"]) == 0) and np.all(xlstm.to_numpy(nothing["inputs"]) == 0)
    only_state = backward(None, final)  # d/dθ of ½‖final‖² = final·d final/dθ
    assert np.any(xlstm.to_numpy(only_state["weights"]) != 0)


def test_dense_vjp(backend):
    rng = np.random.default_rng(1)
    kernel, bias, x, r = rng.normal(size=(3, 4)), rng.normal(size=4), rng.normal(size=(2, 5, 3)), rng.normal(size=(2, 5, 4))
    on = lambda a: xlstm.asarray(a, backend=backend)  # noqa: E731
    dense = xlstm.Dense(4, 3, kernel=kernel, bias=bias, backend=backend)
    y, backward = dense.vjp(on(x))
    grads = backward(on(r))
    assert set(grads) == set(dense.parameters()) | {"inputs"}
    loss = {
        "kernel": lambda k: float(np.sum(xlstm.to_numpy(xlstm.Dense(4, 3, kernel=k, bias=bias, backend=backend)(on(x))) * r)),
        "bias": lambda b: float(np.sum(xlstm.to_numpy(xlstm.Dense(4, 3, kernel=kernel, bias=b, backend=backend)(on(x))) * r)),
        "inputs": lambda v: float(np.sum(xlstm.to_numpy(dense(on(v))) * r)),
    }
    for name, value in (("kernel", kernel), ("bias", bias), ("inputs", x)):
        assert_gradient_close(grads[name], numeric_gradient(loss[name], value), name)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_softmax_cross_entropy_vjp(backend, reduction):
    rng = np.random.default_rng(2)
    logits, labels, weights = rng.normal(size=(3, 2, 5)), rng.integers(0, 5, size=(3, 2)), rng.random((3, 2))
    on = lambda a: xlstm.asarray(a, backend=backend)  # noqa: E731
    cotangent = rng.normal(size=(3, 2)) if reduction == "none" else 0.7
    given = on(cotangent) if reduction == "none" else cotangent

    def loss_of(z):
        value = xlstm.to_numpy(xlstm.softmax_cross_entropy(on(z), on(labels), on(weights), reduction=reduction))
        return float(np.sum(value * cotangent))

    loss, backward = xlstm.softmax_cross_entropy_vjp(on(logits), on(labels), on(weights), reduction=reduction)
    assert_gradient_close(backward(given), numeric_gradient(loss_of, logits), f"logits ({reduction})")
    if reduction != "none":
        np.testing.assert_allclose(xlstm.to_numpy(backward()) * 0.7, xlstm.to_numpy(backward(0.7)), atol=1e-15)


@pytest.mark.parametrize("across_time, across_batch", [(True, True), (True, False), (False, True), (False, False)])
def test_sequence_loss_vjp(backend, across_time, across_batch):
    rng = np.random.default_rng(3)
    B, T, V = 3, 3, 4  # B == T: the cotangent's axis must not be guessed from its size
    logits, targets = rng.normal(size=(B, T, V)), rng.integers(0, V, size=(B, T))
    weights = (rng.random((B, T)) > 0.2).astype(np.float64)
    on = lambda a: xlstm.asarray(a, backend=backend)  # noqa: E731
    kwargs = {"average_across_timesteps": across_time, "average_across_batch": across_batch}
    loss, backward = xlstm.sequence_loss_vjp(on(logits), on(targets), on(weights), **kwargs)
    cotangent = rng.normal(size=tuple(loss.shape))

    def loss_of(z):
        return float(np.sum(xlstm.to_numpy(xlstm.sequence_loss(on(z), on(targets), on(weights), **kwargs)) * cotangent))

    given = on(cotangent) if cotangent.ndim else float(cotangent)
    assert_gradient_close(backward(given), numeric_gradient(loss_of, logits), "logits")


def test_whole_model_chain(backend):
    """dynamic_rnn → Dense → sequence_loss, gradients chained by hand, vs differences of the loss."""
    B, T, I, H, V = 2, 3, 3, 2, 4
    rng = np.random.default_rng(4)
    weights, kernel, inputs = rng.normal(size=(4 * H, 1 + I + H)), rng.normal(size=(H, V)), rng.normal(size=(B, T, I))
    targets, mask = rng.integers(0, V, size=(B, T)), np.array([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    on = lambda a: xlstm.asarray(a, backend=backend)  # noqa: E731

    def model(w, k):
        return (xlstm.LSTMCell(H, I, weights=w, layer_norm=True, backend=backend),
                xlstm.Dense(V, H, kernel=k, bias=np.zeros(V), backend=backend))

    def loss_of(w, k):
        cell, dense = model(w, k)
        outputs, _ = xlstm.dynamic_rnn(cell, on(inputs), sequence_length=[3, 2])
        return float(xlstm.to_numpy(xlstm.sequence_loss(dense(outputs), on(targets), on(mask))))

    cell, dense = model(weights, kernel)
    outputs, _, rnn_backward = xlstm.dynamic_rnn_vjp(cell, on(inputs), sequence_length=[3, 2])
    logits, dense_backward = dense.vjp(outputs)
    _, loss_backward = xlstm.sequence_loss_vjp(logits, on(targets), on(mask))
    dense_grads = dense_backward(loss_backward())
    rnn_grads = rnn_backward(dense_grads["inputs"])
    assert_gradient_close(rnn_grads["weights"], numeric_gradient(lambda w: loss_of(w, kernel), weights), "weights")
    assert_gradient_close(dense_grads["kernel"], numeric_gradient(lambda k: loss_of(weights, k), kernel), "kernel")


def test_gradients_match_torch_autograd(backend):
    """A second oracle: torch.nn.LSTM's autograd, weights converted (gates i, f, g, o)."""
    torch = pytest.importorskip("torch")
    B, T, I, H = 3, 4, 2, 3
    rng = np.random.default_rng(5)
    lstm = torch.nn.LSTM(I, H, batch_first=True).double()
    w_ih, w_hh = lstm.weight_ih_l0.detach().numpy(), lstm.weight_hh_l0.detach().numpy()
    bias = (lstm.bias_ih_l0 + lstm.bias_hh_l0).detach().numpy()

    def to_xlstm_order(rows):  # torch i, f, g, o → xlstm f, i, c, o
        i, f, g, o = np.split(rows, 4)
        return np.concatenate([f, i, g, o])

    weights = to_xlstm_order(np.concatenate([bias[:, None], w_ih, w_hh], axis=1))
    inputs, r_out, r_c = rng.normal(size=(B, T, I)), rng.normal(size=(B, T, H)), rng.normal(size=(B, H))
    x = torch.tensor(inputs, requires_grad=True)
    outputs, (_, c_n) = lstm(x)
    (torch.sum(outputs * torch.from_numpy(r_out)) + torch.sum(c_n[0] * torch.from_numpy(r_c))).backward()

    cell = xlstm.LSTMCell(H, I, weights=weights, forget_bias=0.0, backend=backend)
    on = lambda a: xlstm.asarray(a, backend=backend)  # noqa: E731
    _, final, backward = xlstm.dynamic_rnn_vjp(cell, on(inputs))
    grads = backward(on(r_out), xlstm.LSTMState(on(r_c), on(np.zeros((B, H)))))
    expected = to_xlstm_order(np.concatenate(
        [lstm.bias_ih_l0.grad.numpy()[:, None], lstm.weight_ih_l0.grad.numpy(), lstm.weight_hh_l0.grad.numpy()], axis=1))
    np.testing.assert_allclose(xlstm.to_numpy(grads["weights"]), expected, atol=1e-12)
    np.testing.assert_allclose(xlstm.to_numpy(grads["inputs"]), x.grad.numpy(), atol=1e-12)
