"""A CPU stand-in for the part of CuPy that `backends/cupy_kernels.py` calls: a test proxy only.

It lets the module's own Python orchestration run here, with no GPU: buffers, views, strides,
the time loops, the launches. It is not CuPy and never ships; it imitates just what matters
for catching mistakes in that orchestration:

- arrays are NumPy arrays (a subclass) that also carry a device id, like CuPy's;
- `ElementwiseKernel` compiles the real CUDA source with g++ (tests/cuda_source.py) and calls
  it as CuPy would (inputs const, in-place outputs, broadcasting, `raw` arrays, scalars);
- new arrays land on the current device (`with cuda.Device(n):`), views keep their array's
  device, and a kernel, GEMM or arithmetic on an array of another device raises, as CuPy's
  launches do;
- every kernel and GEMM launch is appended to `launches`, so tests can see which path ran.

`install(monkeypatch)` puts it in `sys.modules` as "cupy" and imports a fresh
`xlstm_backends.cupy_kernels` bound to it.
"""
from __future__ import annotations

import importlib
import sys
import types

import numpy as np
from cuda_source import CpuKernel

launches: list[str] = []
_device_stack = [0]


class Device:
    """A device id and a context manager making it current, like `cupy.cuda.Device`."""

    def __init__(self, device_id: int | None = None):
        self.id = _device_stack[-1] if device_id is None else device_id

    def __enter__(self) -> Device:
        _device_stack.append(self.id)
        return self

    def __exit__(self, *_) -> None:
        _device_stack.pop()

    def __eq__(self, other) -> bool:
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"<proxy CUDA Device {self.id}>"


def _check_on_current_device(what: str, *arrays) -> None:
    """CuPy launches on the current device and refuses arrays that live on another."""
    current = _device_stack[-1]
    for array in arrays:
        if isinstance(array, ndarray) and array.device_id != current:
            raise ValueError(f"{what}: array on device {array.device_id}, current device is {current}")


class ndarray(np.ndarray):  # noqa: N801 - CuPy's name
    """A NumPy array with a device: new arrays on the current device, views on their base's."""

    device_id: int

    def __array_finalize__(self, obj) -> None:
        is_view = self.base is not None and isinstance(obj, ndarray)
        self.device_id = obj.device_id if is_view else _device_stack[-1]

    @property
    def device(self) -> Device:
        return Device(self.device_id)

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        _check_on_current_device(ufunc.__name__, *inputs, *(out or ()))
        plain = [_plain(x) for x in inputs]
        if out is not None:
            getattr(ufunc, method)(*plain, out=tuple(_plain(x) for x in out), **kwargs)
            return out[0] if len(out) == 1 else out
        return _new(getattr(ufunc, method)(*plain, **kwargs))

    def get(self) -> np.ndarray:
        """A host copy (`cupy.ndarray.get`)."""
        return np.array(self.view(np.ndarray))


def _plain(x):
    """The NumPy array under a proxy array (a view: no copy)."""
    return x.view(np.ndarray) if isinstance(x, ndarray) else x


def _new(result):
    """A freshly computed NumPy result as a proxy array on the current device."""
    return result.view(ndarray) if isinstance(result, np.ndarray) else result


def empty(shape, dtype=float) -> ndarray:
    return _new(np.empty(shape, dtype))


def full(shape, value, dtype=None) -> ndarray:
    return _new(np.full(shape, value, dtype))


def asarray(x, dtype=None) -> ndarray:
    """Host data onto the current device (always a copy, as a host-to-device transfer is)."""
    return _new(np.array(_plain(x), dtype=dtype))


def array(x, dtype=None, order="K") -> ndarray:
    return _new(np.array(_plain(x), dtype=dtype, order=order))


def ascontiguousarray(x) -> ndarray:
    return x if x.flags.c_contiguous else _new(np.ascontiguousarray(_plain(x)))


def asnumpy(x) -> np.ndarray:
    return x.get()


def broadcast_to(x, shape) -> ndarray:
    return np.broadcast_to(x, shape, subok=True)  # a view: it keeps x's device


def concatenate(arrays, axis=0) -> ndarray:
    _check_on_current_device("concatenate", *arrays)
    return _new(np.concatenate([_plain(x) for x in arrays], axis=axis))


def copyto(dst, src) -> None:
    _check_on_current_device("copyto", dst, src)
    np.copyto(_plain(dst), _plain(src))


def matmul(a, b, out=None) -> ndarray:
    """A cuBLAS GEMM in CuPy: logged as one launch."""
    _check_on_current_device("matmul", a, b, out)
    launches.append("gemm")
    if out is None:
        return _new(np.matmul(_plain(a), _plain(b)))
    np.matmul(_plain(a), _plain(b), out=_plain(out))
    return out


def _gemm(transa: str, transb: str, a, b, out, alpha: float = 1.0, beta: float = 0.0) -> ndarray:
    """`cupy.cublas.gemm`: out ← alpha·op(a)·op(b) + beta·out."""
    _check_on_current_device("cublas.gemm", a, b, out)
    launches.append("gemm")
    a, b = (_plain(x).T if trans == "T" else _plain(x) for x, trans in ((a, transa), (b, transb)))
    _plain(out)[...] = alpha * (a @ b) + beta * _plain(out)
    return out


class ElementwiseKernel:
    """`cupy.ElementwiseKernel` whose body runs as g++-compiled C++ on the CPU."""

    def __init__(self, in_params, out_params, operation, name="kernel", reduce_dims=True, preamble=""):
        from xlstm_backends.cuda_sources import ElementwiseSource

        self.name = name
        self._kernel = CpuKernel(ElementwiseSource(in_params, out_params, operation, name, preamble))

    def __call__(self, *args) -> None:
        _check_on_current_device(self.name, *args)
        launches.append(self.name)
        self._kernel(*(_plain(x) for x in args))


cuda = types.SimpleNamespace(Device=Device)
cublas = types.SimpleNamespace(gemm=_gemm)


def install(monkeypatch) -> types.ModuleType:
    """Make this proxy the `cupy` module and return a fresh `xlstm_backends.cupy_kernels` bound to it.

    The module is dropped again when `monkeypatch` undoes (so no later import sees the proxy).
    """
    monkeypatch.setitem(sys.modules, "cupy", sys.modules[__name__])
    monkeypatch.delitem(sys.modules, "xlstm_backends.cupy_kernels", raising=False)
    kernels = importlib.import_module("xlstm_backends.cupy_kernels")
    monkeypatch.setitem(sys.modules, "xlstm_backends.cupy_kernels", kernels)  # undone: removed again
    import xlstm_backends

    monkeypatch.setattr(xlstm_backends, "cupy_kernels", kernels, raising=False)
    launches.clear()
    return kernels
