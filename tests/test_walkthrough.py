"""`python -m xlstm walkthrough`: it runs, reads as the article's figures, and its numbers
match an independent float64 NumPy reference written out here (never xlstm itself)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import xlstm
import xlstm_backends as backends
from reference import reference_rnn
from xlstm.walkthrough import walkthrough

ROOT = Path(__file__).resolve().parents[1]

# The article's example, restated independently of xlstm/walkthrough.py.
SENTENCE = "long ago the mice had a general council to consider the"
WORDS = ["a", "ago", "consider", "council", "general", "had", "long", "mice", "the", "to"]
INPUTS = [8, 7, 5]  # "the mice had"
TARGET = 0  # "a"
H, V = 5, 10
KERNEL = np.array([
    [-0.09588283, -2.2044923, -0.74828255, 0.14180686, -0.32083616, -0.9444244, 0.06826905, -0.9728962, -0.18506959, 1.0618515],
    [1.156649, 3.2738173, -1.2556943, -0.9079511, -0.82127047, -1.1448543, -0.60807484, -0.5885713, 1.0378786, -0.7088431],
    [1.006477, 0.28033388, -0.1804534, 0.8093307, -0.36991575, 0.29115433, -0.01028167, -0.7357091, 0.92254084, -0.10753923],
    [0.19266959, 0.6108299, 2.2495654, 1.5288974, 1.0172302, 1.1311738, 0.2666629, -0.30611828, -0.01412263, 0.44799015],
    [0.19266959, 0.6108299, 2.2495654, 1.5288974, 1.0172302, 1.1311738, 0.2666629, -0.30611828, -0.01412263, 0.44799015],
])
BIAS = np.array([0.1458478, -0.3660951, -2.1647317, -1.9633691, -0.24532059, 0.14005205, -1.0961286,
                 -0.43737876, 0.7028531, -1.8481724])

HEADINGS = [
    "figure-1: batch B=1, hidden size H=5",
    "figure-3: W [4H=20, 1+I+H=16]",
    "figure-4: the equations",
    "figure-5: [1, x, h] → [1, 16]",
    "figure-5: GEMM a = ",
    "figure-6/7: new cell state c_1",
    "figure-8/9: new hidden state h_3",
    "figure-16: xlstm.dynamic_rnn",
    "figure-10: logits y = h_3·kernel + bias → [1, 10]",
    "figure-12: softmax",
    "figure-13: cross-entropy loss",
]


def reference(layer_norm: bool, weights=None, gain=None, shift=None, epsilon: float = 1e-12) -> dict:
    """The article's forward pass in float64, one plain loop (gates f, i, c, o; forget bias 1).

    The article's cell has every weight 0.1, layer-norm gain 1 and shift 0; `weights`
    [4H, 1+V+H], `gain` and `shift` [5, H] (rows f, i, c, o, state) replace them.
    """
    def sigmoid(z):
        return 1.0 / (1.0 + np.exp(-z))

    def norm(z, row):  # over the last axis: biased variance, epsilon inside the root, then gain and shift
        centered = z - z.mean(axis=-1, keepdims=True)
        return centered / np.sqrt((centered ** 2).mean(axis=-1, keepdims=True) + epsilon) * gain[row] + shift[row]

    weights = np.full((4 * H, 1 + V + H), 0.1) if weights is None else weights
    gain = np.ones((5, H)) if gain is None else gain
    shift = np.zeros((5, H)) if shift is None else shift
    c, h = np.zeros(H), np.zeros(H)
    out = {key: [] for key in ("preactivations", "f", "i", "g", "o", "c", "h")}
    for index in INPUTS:
        x = np.eye(V)[index]
        if layer_norm:
            a = weights[:, 1:] @ np.concatenate([x, h])  # no bias column
            gates = norm(a.reshape(4, H), slice(0, 4))
        else:
            a = weights @ np.concatenate([[1.0], x, h])
            gates = a.reshape(4, H)
        f, i = sigmoid(gates[0] + 1.0), sigmoid(gates[1])
        g, o = np.tanh(gates[2]), sigmoid(gates[3])
        c = f * c + i * g
        if layer_norm:
            c = norm(c, 4)
        h = o * np.tanh(c)
        for key, value in zip(out, (a, f, i, g, o, c, h)):
            out[key].append(value)
    logits = h @ KERNEL + BIAS
    softmax = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    return {**out, "logits": logits, "softmax": softmax, "loss": -np.log(softmax[TARGET])}


@pytest.mark.parametrize("layer_norm", [False, True], ids=["plain", "layer_norm"])
def test_values_match_float64_reference(backend: backends.Backend, layer_norm: bool) -> None:
    lines: list[str] = []
    got = walkthrough(backend=backend.name, device=backend.device, layer_norm=layer_norm, write=lines.append)
    want = reference(layer_norm)
    for key in ("preactivations", "f", "i", "g", "o", "c", "h", "logits", "softmax", "loss"):
        np.testing.assert_allclose(np.asarray(got[key], dtype=np.float64), want[key], rtol=1e-5, atol=1e-5,
                                   err_msg=key)
    assert isinstance(got["loss"], float)
    assert got["words"] == WORDS and got["inputs"] == INPUTS and got["target"] == TARGET
    assert got["dynamic_rnn_max_abs_diff"] <= 1e-6
    assert all(isinstance(line, str) for line in lines)
    assert len(lines) <= 150
    text = "\n".join(lines)
    for heading in HEADINGS:
        assert heading in text
    assert f"backend {backend.name}" in text


def test_plain_reference_values() -> None:
    """Spot values of the float64 reference itself (by hand: a = 0.1 + 0.1 at step 1)."""
    want = reference(False)
    assert want["preactivations"][0] == pytest.approx(np.full(4 * H, 0.2))
    assert want["c"][0] == pytest.approx(np.full(H, 0.54983399731 * np.tanh(0.2)))
    assert want["h"][2] == pytest.approx(np.full(H, 0.16714133), abs=1e-7)
    # Under layer norm every gate's equal units normalise to 0, so h stays 0 and logits = bias.
    assert reference(True)["logits"] == pytest.approx(BIAS)


def test_layer_norm_steps_with_varied_weights_gain_shift_and_epsilon(backend: backends.Backend) -> None:
    """The article's all-0.1 weights make every normalised gate exactly 0, hiding gain, shift and
    epsilon; here the walkthrough's step (`LSTMCell.step`, every intermediate) runs with varied ones."""
    rng = np.random.default_rng(7)
    weights, gain, shift = rng.normal(size=(4 * H, 1 + V + H)), rng.normal(1.0, 0.5, (5, H)), rng.normal(size=(5, H))
    epsilon = 0.5  # large enough to move every normalised value
    want = reference(True, weights, gain, shift, epsilon)
    cell = xlstm.LSTMCell(H, V, weights=weights, layer_norm=True, norm_gain=gain, norm_shift=shift,
                          norm_epsilon=epsilon, dtype="float64", backend=backend)
    state = cell.zero_state(1)
    for t, index in enumerate(INPUTS):
        values = cell.step(xlstm.asarray(np.eye(V)[[index]], backend=backend), state)
        for key in ("preactivations", "f", "i", "g", "o", "c", "h"):
            np.testing.assert_allclose(xlstm.to_numpy(getattr(values, key))[0], want[key][t], rtol=0, atol=1e-12,
                                       err_msg=f"{key} at step {t + 1}")
        state = xlstm.LSTMState(values.c, values.h)
    # the second, independent reference (tests/reference.py) agrees on the final state
    c_ref, h_ref = reference_rnn(weights, np.eye(V)[INPUTS][None], layer_norm=True, gain=gain, shift=shift,
                                 eps=epsilon)[1:]
    np.testing.assert_allclose(want["c"][-1], c_ref[0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(want["h"][-1], h_ref[0], rtol=0, atol=1e-12)


CLI_CASES = {
    "default": [],
    "layer_norm": ["--layer-norm"],
    "strict": ["--backend", "array_api_strict"],
    "nosuch": ["--backend", "nosuch"],
}


@pytest.fixture(scope="module")
def cli_runs() -> dict[str, subprocess.CompletedProcess]:
    """Each command line of CLI_CASES run once, all at the same time (each start costs ~1 s)."""
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    env.pop("XLSTM_BACKEND", None)
    env.pop("XLSTM_DEVICE", None)
    running = {
        name: subprocess.Popen([sys.executable, "-m", "xlstm", "walkthrough", *args], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8")
        for name, args in CLI_CASES.items()
    }
    results = {}
    for name, process in running.items():
        stdout, stderr = process.communicate(timeout=120)
        results[name] = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    return results


@pytest.mark.parametrize("case", ["default", "layer_norm", "strict"])
def test_cli_runs(cli_runs: dict, case: str) -> None:
    if case == "strict" and backends.available_backends()["array_api_strict"] is not None:
        pytest.skip("array_api_strict is not installed")
    result = cli_runs[case]
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    for heading in HEADINGS:
        assert heading in result.stdout
    assert len(result.stdout.splitlines()) <= 150
    if case == "layer_norm":
        assert "layer_norm=True" in result.stdout
        assert "figure-5: GEMM a = [x, h]·W[:, 1:]ᵀ → [1, 20]" in result.stdout
    else:
        assert "figure-5: GEMM a = [1, x, h]·Wᵀ → [1, 20]" in result.stdout
    if case == "strict":
        assert "backend array_api_strict" in result.stdout


def test_cli_unknown_backend(cli_runs: dict) -> None:
    result = cli_runs["nosuch"]
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert "'nosuch'" in result.stderr
    assert "usable backends: numpy" in result.stderr
