"""`python -m xlstm selftest`: passes on every backend here and fails when a number is wrong."""
from __future__ import annotations

import xlstm.cell
from xlstm.__main__ import main
from xlstm.selftest import report, run_selftest
from xlstm_backends import numpy_kernels


def test_selftest_passes_on_each_backend(backend):
    checks = run_selftest(backend.name, backend.device, quick=True)
    assert report(checks, write=lambda line: None) == 0
    assert {"TensorFlow published cell step (float32)", "save → load on this device: loss difference"} <= {
        check.name for check in checks}
    assert all(check.passed for check in checks)


def test_selftest_fails_on_a_slightly_wrong_gate(monkeypatch, capsys):
    """σ off by one part in a thousand in the generic code: the published values catch it."""
    right = xlstm.cell.sigmoid
    monkeypatch.setattr(xlstm.cell, "sigmoid", lambda x: right(x) * (1 + 1e-3))
    assert main(["selftest", "--quick"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "selftest FAILED" in out and "TensorFlow published cell step" in out.splitlines()[-2]


def test_selftest_fails_on_a_wrong_fused_kernel(monkeypatch, capsys):
    """A fused NumPy kernel whose tanh is slightly off: only the library-run rows fail."""
    monkeypatch.setenv("XLSTM_KERNELS", "numpy")  # with the fast extra installed, numba would run instead
    original = numpy_kernels.numpy.tanh

    def wrong_tanh(x, *args, **kwargs):
        result = original(x, *args, **kwargs)  # the kernels write into out=: scale the result in place
        result *= 1 + 1e-4
        return result

    monkeypatch.setattr(numpy_kernels, "numpy", _WithTanh(numpy_kernels.numpy, wrong_tanh))
    assert main(["selftest", "--quick"]) == 1
    failures = capsys.readouterr().out.splitlines()[-2]
    assert "library run (fused kernels)" in failures and "generic per-step code" not in failures


class _WithTanh:
    """A stand-in for the numpy module seen by numpy_kernels, with one function replaced."""

    def __init__(self, module, tanh):
        self._module, self.tanh = module, tanh

    def __getattr__(self, name):
        return getattr(self._module, name)


def test_selftest_refuses_an_unknown_backend(capsys):
    assert main(["selftest", "--backend", "nosuch"]) == 2
    assert "nosuch" in capsys.readouterr().err


def test_a_missing_oracle_is_reported_as_skipped_not_failed(monkeypatch):
    import sys

    from xlstm.selftest import _onnx_runtime_parity
    from xlstm_backends import get_backend

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    (check,) = _onnx_runtime_parity(get_backend("numpy"))
    assert check.passed and check.note.startswith("skipped: onnxruntime is not installed")


def test_selftest_fails_on_a_wrong_slstm_gradient(monkeypatch, capsys):
    """The sLSTM's recurrent-weight gradient off by one part in a thousand: the xLSTM gradient row fails."""
    import xlstm.slstm_grad

    monkeypatch.setenv("XLSTM_KERNELS", "numpy")  # the generic backward (the compiled one would run instead)

    right = xlstm.slstm_grad.slstm_backward

    def wrong(*args, **kwargs):
        grads = right(*args, **kwargs)
        return {**grads, "recurrent_weights": grads["recurrent_weights"] * (1 + 1e-3)}

    monkeypatch.setattr(xlstm.slstm_grad, "slstm_backward", wrong)
    assert main(["selftest", "--quick"]) == 1
    failures = capsys.readouterr().out.splitlines()[-2]
    assert "gradients: sLSTM + mLSTM stack vs central differences (float64)" in failures
    assert "CharLM" not in failures
