"""The plain LSTM (layer_norm=False) against two outside oracles and a plain NumPy loop.

The oracles are ONNX Runtime's `LSTM` operator and PyTorch's `torch.nn.LSTM`. Each gets
the same weights, converted from xlstm's fused layout, and the same inputs; the expected
numbers come from the oracle, never from xlstm.

    xlstm  W [4H, 1 + I + H]: column 0 bias, columns 1..I input weights, last H columns
           recurrent weights; row blocks f, i, c, o; forget_bias added at run time.
    torch  weight_ih [4H, I], weight_hh [4H, H], bias_ih + bias_hh [4H]; gates i, f, g, o.
    ONNX   W [1, 4H, I], R [1, 4H, H], B [1, 8H] (Wb then Rb); gates i, o, f, c.

ONNX Runtime's LSTM has NO float64 kernel: onnxruntime 1.32 accepts the graph but fails
at run time with "LSTM operator does not support double yet". So ORT always runs in
float32. To keep that comparison exact in its inputs, every test draws its numbers in
float64 and rounds them to float32 first: xlstm (float32 or float64), ORT (float32),
torch (float64) and the NumPy reference (float64) then all start from identical values.
The float64 xlstm result is held to ORT at 1e-5 (ORT's float32 rounding) and, at 1e-10,
to `reference_lstm` below, a float64 loop written from PyTorch's documented equations.

The worst absolute error seen per (oracle, backend, dtype) in a run is written to the
pytest cache under "xlstm/oracle_errors" (.pytest_cache/v/xlstm/oracle_errors).
"""
from __future__ import annotations

import re

import numpy as np
import pytest

import xlstm

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx_oracle import run_lstm_operator  # noqa: E402

TOLERANCE = {"float64": 1e-10, "float32": 1e-5}
ORT_TOLERANCE = 1e-5  # ORT computes in float32 whatever xlstm's dtype
DTYPES = ["float64", "float32"]

# (B, T, I, H) and forget_bias; forget_bias 1.0 is xlstm's default.
SHAPES = [
    pytest.param((1, 1, 1, 1), 1.0, id="B1-T1-I1-H1"),
    pytest.param((2, 3, 4, 5), 1.0, id="B2-T3-I4-H5"),
    pytest.param((3, 7, 2, 8), 0.0, id="B3-T7-I2-H8-fb0"),
    pytest.param((5, 4, 3, 2), -0.75, id="B5-T4-I3-H2-fb-0.75"),
]
# The sequence_length case: unsorted lengths, one empty row, one full-length row.
LENGTHS_SHAPE = (4, 6, 3, 5)
LENGTHS = [6, 0, 3, 1]


# ----------------------------------------------------------------------------------------
# Worst errors per (oracle, backend, dtype), saved to the pytest cache at the end.

WORST_ERRORS: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def _save_worst_errors(request: pytest.FixtureRequest):
    """After this module's tests, store the worst errors of this run (overwriting the last)."""
    yield
    cache = getattr(request.config, "cache", None)
    if cache is not None and WORST_ERRORS:
        cache.set("xlstm/oracle_errors", dict(sorted(WORST_ERRORS.items())))


def backend_label(backend: xlstm.Backend) -> str:
    """'numpy:cpu', 'array_api_strict:device1', ... (strict's devices print verbosely)."""
    device = str(backend.device)
    match = re.fullmatch(r".*Device\('(.*)'\)", device)
    return f"{backend.name}:{match.group(1) if match else device}"


def check(what: str, actual, expected, *, oracle: str, backend, dtype: str, atol: float) -> None:
    """assert |actual - expected| <= atol everywhere, recording the worst error seen."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    error = float(np.max(np.abs(actual - expected))) if actual.size else 0.0
    key = f"{oracle}/{backend_label(backend)}/{dtype}"
    WORST_ERRORS[key] = max(WORST_ERRORS.get(key, 0.0), error)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=atol, err_msg=f"{what} vs {oracle}")


# ----------------------------------------------------------------------------------------
# Test data: float64 arrays holding float32-representable values.

def as_float32_values(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32).astype(np.float64)


def make_case(shape, seed: int, initial_state: bool):
    """Random weights W [4H, 1+I+H], inputs x [B, T, I] and (c0, h0) [B, H] each (or None)."""
    B, T, I, H = shape
    rng = np.random.default_rng(seed)
    W = as_float32_values(rng.normal(0.0, 0.6, size=(4 * H, 1 + I + H)))
    x = as_float32_values(rng.normal(0.0, 1.0, size=(B, T, I)))
    if not initial_state:
        return W, x, None, None
    c0 = as_float32_values(rng.normal(0.0, 1.0, size=(B, H)))
    h0 = as_float32_values(rng.uniform(-0.9, 0.9, size=(B, H)))
    return W, x, c0, h0


# ----------------------------------------------------------------------------------------
# Weight conversion: xlstm's fused W → per-gate pieces → torch / ONNX layouts.

def gate_blocks(W: np.ndarray, input_size: int, forget_bias: float) -> dict:
    """Split W [4H, 1+I+H] into {gate: (bias [H], w_x [H, I], w_h [H, H])}, gates f, i, c, o.

    xlstm adds forget_bias to the forget gate at run time; the other layouts have no such
    setting, so it is folded into the forget gate's bias here.
    """
    H = W.shape[0] // 4
    blocks = {}
    for k, gate in enumerate(("f", "i", "c", "o")):  # xlstm's row-block order
        rows = W[k * H:(k + 1) * H]  # [H, 1+I+H]
        bias = rows[:, 0] + (forget_bias if gate == "f" else 0.0)  # [H]
        blocks[gate] = (bias, rows[:, 1:1 + input_size], rows[:, 1 + input_size:])
    return blocks


def to_torch_layout(W: np.ndarray, input_size: int, forget_bias: float) -> dict:
    """torch.nn.LSTM's parameters; torch's gate order is i, f, g, o (g = our candidate c)."""
    blocks = gate_blocks(W, input_size, forget_bias)
    order = ("i", "f", "c", "o")
    return {
        "weight_ih_l0": np.concatenate([blocks[g][1] for g in order]),  # [4H, I]
        "weight_hh_l0": np.concatenate([blocks[g][2] for g in order]),  # [4H, H]
        "bias_ih_l0": np.concatenate([blocks[g][0] for g in order]),  # [4H]
        "bias_hh_l0": np.zeros(W.shape[0]),  # [4H]; torch adds both biases
    }


def to_onnx_layout(W: np.ndarray, input_size: int, forget_bias: float) -> dict:
    """ONNX LSTM's W [1, 4H, I], R [1, 4H, H], B [1, 8H]; ONNX's gate order is i, o, f, c."""
    blocks = gate_blocks(W, input_size, forget_bias)
    order = ("i", "o", "f", "c")
    w_b = np.concatenate([blocks[g][0] for g in order])  # input bias Wb [4H]
    r_b = np.zeros_like(w_b)  # recurrent bias Rb [4H]; ONNX adds both
    return {
        "W": np.concatenate([blocks[g][1] for g in order])[None],  # [1, 4H, I]
        "R": np.concatenate([blocks[g][2] for g in order])[None],  # [1, 4H, H]
        "B": np.concatenate([w_b, r_b])[None],  # [1, 8H]
    }


# ----------------------------------------------------------------------------------------
# The independent float64 reference, in torch's layout, from PyTorch's nn.LSTM docs:
#   i = σ(W_ii x + b_ii + W_hi h + b_hi)    f = σ(W_if x + b_if + W_hf h + b_hf)
#   g = tanh(W_ig x + b_ig + W_hg h + b_hg) o = σ(W_io x + b_io + W_ho h + b_ho)
#   c' = f * c + i * g                      h' = o * tanh(c')

def reference_lstm(params: dict, x: np.ndarray, c0, h0, lengths):
    """x [B, T, I] → outputs [B, T, H] (zero past each row's length), final c, h [B, H]."""
    B, T, _ = x.shape
    H = params["weight_hh_l0"].shape[1]
    w_ih, w_hh = params["weight_ih_l0"], params["weight_hh_l0"]
    bias = params["bias_ih_l0"] + params["bias_hh_l0"]
    outputs = np.zeros((B, T, H))
    c_final, h_final = np.zeros((B, H)), np.zeros((B, H))
    for b in range(B):
        c = np.zeros(H) if c0 is None else c0[b].copy()
        h = np.zeros(H) if h0 is None else h0[b].copy()
        for t in range(T if lengths is None else lengths[b]):
            a = w_ih @ x[b, t] + w_hh @ h + bias  # [4H], blocks i, f, g, o
            i = 1.0 / (1.0 + np.exp(-a[:H]))
            f = 1.0 / (1.0 + np.exp(-a[H:2 * H]))
            g = np.tanh(a[2 * H:3 * H])
            o = 1.0 / (1.0 + np.exp(-a[3 * H:]))
            c = f * c + i * g
            h = o * np.tanh(c)
            outputs[b, t] = h
        c_final[b], h_final[b] = c, h
    return outputs, c_final, h_final


# ----------------------------------------------------------------------------------------
# The oracles. Both take batch-major x [B, T, I] and return outputs [B, T, H], c, h [B, H].

def onnx_runtime_lstm(params: dict, x: np.ndarray, c0, h0, lengths):
    """Run a one-node ONNX graph (opset 14 LSTM) in ONNX Runtime, in float32."""
    # ONNX is time-major: X [T, B, I], states [1, B, H]. Y is zero past each row's
    # sequence_lens (checked against ORT 1.32), as in xlstm.
    y, y_h, y_c = run_lstm_operator(params["W"], params["R"], params["B"], np.transpose(x, (1, 0, 2)),
                                    lengths=lengths, initial_h=None if h0 is None else h0[None],
                                    initial_c=None if c0 is None else c0[None])
    return np.transpose(y[:, 0], (1, 0, 2)), y_c[0], y_h[0]


def torch_lstm(params: dict, x: np.ndarray, c0, h0, lengths):
    """Run a float64 torch.nn.LSTM (batch_first); packed sequences when lengths are given."""
    torch = pytest.importorskip("torch")
    B, T, I = x.shape
    H = params["weight_hh_l0"].shape[1]
    module = torch.nn.LSTM(I, H, batch_first=True).double()
    with torch.no_grad():
        for name, array in params.items():
            getattr(module, name).copy_(torch.from_numpy(array))
        c0 = np.zeros((B, H)) if c0 is None else c0
        h0 = np.zeros((B, H)) if h0 is None else h0
        if lengths is None:
            state = (torch.from_numpy(h0)[None], torch.from_numpy(c0)[None])  # [1, B, H] each
            out, (h_n, c_n) = module(torch.from_numpy(x), state)
            return out.numpy(), c_n[0].numpy(), h_n[0].numpy()
        # pack_padded_sequence refuses length 0, so only rows with steps go to torch; an
        # empty row has zero outputs and keeps its initial state (tf.nn.dynamic_rnn's rule).
        lengths = np.asarray(lengths)
        rows = np.flatnonzero(lengths > 0)
        outputs, c, h = np.zeros((B, T, H)), c0.copy(), h0.copy()
        if rows.size:
            packed = torch.nn.utils.rnn.pack_padded_sequence(
                torch.from_numpy(x[rows]), torch.from_numpy(lengths[rows]), batch_first=True,
                enforce_sorted=False)
            state = (torch.from_numpy(h0[rows])[None], torch.from_numpy(c0[rows])[None])
            out, (h_n, c_n) = module(packed, state)
            out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=T)
            outputs[rows], c[rows], h[rows] = out.numpy(), c_n[0].numpy(), h_n[0].numpy()
        return outputs, c, h


# ----------------------------------------------------------------------------------------
# xlstm's side.

def run_xlstm(backend, dtype, W, x, c0, h0, lengths, forget_bias, time_major=False):
    """dynamic_rnn on `backend`; returns NumPy outputs [B, T, H], c, h [B, H]."""
    B, T, I = x.shape
    cell = xlstm.LSTMCell(W.shape[0] // 4, I, forget_bias=forget_bias, weights=W.astype(dtype),
                          dtype=dtype, backend=backend)
    inputs = np.transpose(x, (1, 0, 2)) if time_major else x  # [T, B, I] or [B, T, I]
    state = None
    if c0 is not None:
        state = xlstm.LSTMState(xlstm.asarray(c0.astype(dtype), backend=backend),
                                xlstm.asarray(h0.astype(dtype), backend=backend))
    seq = None if lengths is None else xlstm.asarray(np.asarray(lengths), backend=backend)
    outputs, final = xlstm.dynamic_rnn(cell, xlstm.asarray(inputs.astype(dtype), backend=backend),
                                       initial_state=state, sequence_length=seq, time_major=time_major)
    outputs = xlstm.to_numpy(outputs)
    assert outputs.dtype == np.dtype(dtype)
    if time_major:
        outputs = np.transpose(outputs, (1, 0, 2))
    return outputs, xlstm.to_numpy(final.c), xlstm.to_numpy(final.h)


def check_all(got, expected, *, oracle, backend, dtype, atol):
    for what, actual, want in zip(("outputs", "final c", "final h"), got, expected):
        check(what, actual, want, oracle=oracle, backend=backend, dtype=dtype, atol=atol)


def check_against_onnx_and_reference(backend, dtype, W, x, c0, h0, lengths, forget_bias, time_major=False):
    I = x.shape[2]
    got = run_xlstm(backend, dtype, W, x, c0, h0, lengths, forget_bias, time_major)

    expected = onnx_runtime_lstm(to_onnx_layout(W, I, forget_bias), x, c0, h0, lengths)
    if lengths is not None and c0 is not None:
        # An empty row (length 0): ORT returns Y_h = Y_c = 0 there, xlstm (like
        # tf.nn.dynamic_rnn) returns the row's initial state untouched; hold xlstm to that.
        empty = (np.asarray(lengths) == 0)[:, None]
        expected = (expected[0], np.where(empty, c0, expected[1]), np.where(empty, h0, expected[2]))
    check_all(got, expected, oracle="onnxruntime", backend=backend, dtype=dtype, atol=ORT_TOLERANCE)

    expected = reference_lstm(to_torch_layout(W, I, forget_bias), x, c0, h0, lengths)
    check_all(got, expected, oracle="numpy_reference", backend=backend, dtype=dtype, atol=TOLERANCE[dtype])


def check_against_torch(backend, dtype, W, x, c0, h0, lengths, forget_bias, time_major=False):
    I = x.shape[2]
    got = run_xlstm(backend, dtype, W, x, c0, h0, lengths, forget_bias, time_major)
    expected = torch_lstm(to_torch_layout(W, I, forget_bias), x, c0, h0, lengths)
    check_all(got, expected, oracle="torch.nn.LSTM", backend=backend, dtype=dtype, atol=TOLERANCE[dtype])


# ----------------------------------------------------------------------------------------
# The tests.

@pytest.mark.parametrize("initial_state", [False, True], ids=["zero-state", "initial-state"])
@pytest.mark.parametrize("shape, forget_bias", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_dynamic_rnn_matches_onnx_runtime(backend, dtype, shape, forget_bias, initial_state):
    W, x, c0, h0 = make_case(shape, seed=sum(shape), initial_state=initial_state)
    check_against_onnx_and_reference(backend, dtype, W, x, c0, h0, None, forget_bias)


@pytest.mark.parametrize("initial_state", [False, True], ids=["zero-state", "initial-state"])
@pytest.mark.parametrize("time_major", [False, True], ids=["batch-major", "time-major"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_dynamic_rnn_with_lengths_matches_onnx_runtime(backend, dtype, time_major, initial_state):
    W, x, c0, h0 = make_case(LENGTHS_SHAPE, seed=7, initial_state=initial_state)
    check_against_onnx_and_reference(backend, dtype, W, x, c0, h0, LENGTHS, 0.5, time_major)


@pytest.mark.parametrize("initial_state", [False, True], ids=["zero-state", "initial-state"])
@pytest.mark.parametrize("shape, forget_bias", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_dynamic_rnn_matches_torch(backend, dtype, shape, forget_bias, initial_state):
    W, x, c0, h0 = make_case(shape, seed=sum(shape) + 1, initial_state=initial_state)
    check_against_torch(backend, dtype, W, x, c0, h0, None, forget_bias)


@pytest.mark.parametrize("initial_state", [False, True], ids=["zero-state", "initial-state"])
@pytest.mark.parametrize("time_major", [False, True], ids=["batch-major", "time-major"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_dynamic_rnn_with_lengths_matches_torch(backend, dtype, time_major, initial_state):
    W, x, c0, h0 = make_case(LENGTHS_SHAPE, seed=8, initial_state=initial_state)
    check_against_torch(backend, dtype, W, x, c0, h0, LENGTHS, 0.5, time_major)


@pytest.mark.parametrize("oracle", ["onnxruntime", "torch.nn.LSTM"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_single_step_matches_first_oracle_step(backend, dtype, oracle):
    """cell(x, state) for one step equals the oracle run over a one-step sequence."""
    B, I, H, forget_bias = 3, 4, 5, 1.0
    W, x, c0, h0 = make_case((B, 1, I, H), seed=11, initial_state=True)
    if oracle == "onnxruntime":
        _, c, h = onnx_runtime_lstm(to_onnx_layout(W, I, forget_bias), x, c0, h0, None)
        atol = ORT_TOLERANCE
    else:
        _, c, h = torch_lstm(to_torch_layout(W, I, forget_bias), x, c0, h0, None)
        atol = TOLERANCE[dtype]
    cell = xlstm.LSTMCell(H, I, forget_bias=forget_bias, weights=W.astype(dtype), dtype=dtype, backend=backend)
    state = xlstm.LSTMState(xlstm.asarray(c0.astype(dtype), backend=backend),
                            xlstm.asarray(h0.astype(dtype), backend=backend))
    h_t, new_state = cell(xlstm.asarray(x[:, 0].astype(dtype), backend=backend), state)
    check("h_t", xlstm.to_numpy(h_t), h, oracle=oracle, backend=backend, dtype=dtype, atol=atol)
    check("state.c", xlstm.to_numpy(new_state.c), c, oracle=oracle, backend=backend, dtype=dtype, atol=atol)
    check("state.h", xlstm.to_numpy(new_state.h), h, oracle=oracle, backend=backend, dtype=dtype, atol=atol)
