"""The CuPy kernels' CUDA source and their Python orchestration, run on the CPU.

No GPU here, so `backends/cupy_kernels.py` runs against tests/cupy_proxy.py: its kernels are the
real CUDA source compiled by g++ (tests/cuda_source.py), its CuPy calls a NumPy stand-in with
devices. Through it the module's own loops, buffers and strides must give the numbers of the
generic array-API code and of the NumPy kernels. These tests run wherever g++ does.
"""
from __future__ import annotations

import cupy_proxy
import numpy as np
import pytest
from cuda_source import CpuKernel
from hypothesis import given, settings
from test_kernels import _run_both, cases

from xlstm_backends import cuda_sources, numpy_kernels
from xlstm_backends.numpy_backend import NumpyLibrary


class _KernelsOnProxy:
    """cupy_kernels in the numpy backend's kernel slot: host arrays in as proxy views (strides
    kept, nothing copied), host arrays out."""

    def __init__(self, kernels):
        self.kernels = kernels

    def lstm_forward(self, inputs, weights, c0, h0, forget_bias, masks=None, valid=None, keep_for_backward=False):
        outputs, c, h, cache = self.kernels.lstm_forward(*_on_proxy(inputs, weights, c0, h0), forget_bias,
                                                         *_on_proxy(masks, valid), keep_for_backward)
        return (*_on_host(outputs, c, h), cache)

    def lstm_backward(self, cache, d_outputs, d_c, d_h):
        return _on_host(*self.kernels.lstm_backward(cache, *_on_proxy(d_outputs, d_c, d_h)))


def _on_proxy(*arrays):
    return [None if a is None else np.asarray(a).view(cupy_proxy.ndarray) for a in arrays]


def _on_host(*arrays):
    return [np.array(a.view(np.ndarray)) for a in arrays]


@pytest.mark.parametrize("source", cuda_sources.ALL_KERNELS, ids=lambda source: source.name)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_kernel_compiles_without_warnings(source, dtype):
    """g++ -Wall -Werror on the generated program (CpuKernel builds it on first call)."""
    kernel = CpuKernel(source)
    B, H = 2, 3
    arrays = {"units": H}
    for param in kernel.params:
        if param.name != "units":
            shape = (B, 4 * H) if param.raw else (B, 1) if param.type == "bool" else (B, H)
            arrays[param.name] = np.ones(shape, dtype=bool if param.type == "bool" else dtype)
    kernel(*(arrays[param.name] for param in kernel.params))


@pytest.mark.parametrize("dtype, tolerance", [("float64", 1e-12), ("float32", 1e-5)])
@settings(max_examples=25, deadline=None)
@given(case=cases())
def test_cuda_kernels_equal_generic_code(dtype, tolerance, case):
    """dynamic_rnn_vjp and dynamic_rnn through cupy_kernels (CUDA source on g++) vs the generic code."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        kernels = cupy_proxy.install(monkeypatch)
        monkeypatch.setattr(NumpyLibrary, "lstm_kernels", lambda self: _KernelsOnProxy(kernels))
        fused, generic = _run_both(monkeypatch, case, dtype)
    for name in fused:
        assert fused[name].dtype == generic[name].dtype, name
        np.testing.assert_allclose(fused[name], generic[name], atol=tolerance, rtol=tolerance, err_msg=name)


def _random_call(rng, steps, batch, inputs_size, units, dropout, lengths):
    """Host arguments of one lstm_forward call, time-major, float64."""
    masks = (rng.random((steps, batch, units)) < 0.6) / 0.6 if dropout else None
    valid = None if lengths is None else (np.arange(steps)[:, None] < np.array(lengths)[None, :])[:, :, None]
    return [rng.normal(size=(steps, batch, inputs_size)), rng.normal(size=(4 * units, 1 + inputs_size + units)),
            rng.normal(size=(batch, units)), rng.normal(size=(batch, units)), 0.7, masks, valid]


def _forward_and_backward(kernels, host, rng, device=0):
    """cupy_kernels on the proxy, with its arrays on `device` (device 0 current), and numpy_kernels
    on the same call: (proxy results, numpy results)."""
    steps, batch, _ = host[0].shape
    units = host[2].shape[1]
    d_outputs, d_c, d_h = rng.normal(size=(steps, batch, units)), rng.normal(size=(batch, units)), rng.normal(
        size=(batch, units))
    with cupy_proxy.Device(device):
        on_proxy = [a if a is None or isinstance(a, float) else cupy_proxy.asarray(a) for a in host]
        cotangents = [cupy_proxy.asarray(a) for a in (d_outputs, d_c, d_h)]
        originals = [a.copy() for a in on_proxy[:4] + cotangents]
    inference = kernels.lstm_forward(*on_proxy)
    *trained, cache = kernels.lstm_forward(*on_proxy, keep_for_backward=True)
    gradients = kernels.lstm_backward(cache, *cotangents)
    for array, original in zip(on_proxy[:4] + cotangents, originals):
        np.testing.assert_array_equal(array.get(), original.get(), err_msg="the caller's array was written")
    reference_inference = numpy_kernels.lstm_forward(*host)
    *reference_trained, reference_cache = numpy_kernels.lstm_forward(*host, keep_for_backward=True)
    reference_gradients = numpy_kernels.lstm_backward(reference_cache, d_outputs, d_c, d_h)
    return ([*inference[:3], *trained, *gradients],
            [*reference_inference[:3], *reference_trained, *reference_gradients])


@pytest.mark.parametrize("dropout, lengths", [(False, None), (True, [20, 3, 0])])
def test_every_call_runs_the_plain_loop_and_equals_numpy_kernels(monkeypatch, dropout, lengths):
    """Repeated inference calls of one long shape: each call launches the input projection, then
    per step one GEMM and one fused kernel (no graph, no other path); backward likewise per step.
    Every call gets fresh numbers, so a stale buffer from an earlier call would show."""
    kernels = cupy_proxy.install(monkeypatch)
    rng = np.random.default_rng(7)
    steps, step_kernel = 20, cuda_sources.FORWARD_STEP.name
    for _ in range(3):
        cupy_proxy.launches.clear()
        host = _random_call(rng, steps, 3, 4, 5, dropout, lengths)
        kernels.lstm_forward(*(a if a is None or isinstance(a, float) else cupy_proxy.asarray(a) for a in host))
        assert cupy_proxy.launches == ["gemm"] + ["gemm", step_kernel] * steps
        found, wanted = _forward_and_backward(kernels, host, rng)
        for got, want in zip(found, wanted):
            np.testing.assert_allclose(got.get(), want, rtol=1e-12, atol=1e-12)
    backward_launches = cupy_proxy.launches[-2 * steps:]
    assert backward_launches == [cuda_sources.BACKWARD_STEP.name, "gemm"] * steps


def test_kernels_run_on_the_device_of_their_inputs(monkeypatch):
    """Inputs on device 1 while device 0 is current: buffers, launches and results on device 1."""
    kernels = cupy_proxy.install(monkeypatch)
    rng = np.random.default_rng(3)
    host = _random_call(rng, 4, 2, 3, 4, True, [4, 2])
    found, wanted = _forward_and_backward(kernels, host, rng, device=1)
    with cupy_proxy.Device(1):
        on_one = [cupy_proxy.asarray(a) for a in (np.zeros(2), np.ones(2))]
    with pytest.raises(ValueError, match="device 1"):  # the proxy refuses what CuPy refuses
        cupy_proxy.matmul(*on_one)
    assert cupy_proxy.Device().id == 0
    wrong_device = [i for i, got in enumerate(found) if got.device_id != 1]
    assert not wrong_device
    for got, want in zip(found, wanted):
        np.testing.assert_allclose(got.get(), want, rtol=1e-12, atol=1e-12)
