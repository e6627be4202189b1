"""NumPy, through array-api-compat: the default backend, CPU only."""
from __future__ import annotations

import functools
import importlib
import importlib.util
import os
from typing import Any

import numpy

from xlstm_backends.library import Library

KERNELS_VARIABLE = "XLSTM_KERNELS"
KERNEL_CHOICES = ("numba", "numpy")  # the first one that can run is the default
FAST_EXTRA = ("numba", "scipy")  # what the compiled kernels import beyond the base install (the `fast` extra)


class NumpyLibrary(Library):
    name = "numpy"

    @property
    def description(self) -> str:
        """What the backend is and which kernels it runs (`python -m xlstm backends` prints it)."""
        try:
            paths = self.kernel_paths()
        except ValueError as error:  # a bad XLSTM_KERNELS: say so here too
            return f"NumPy via array-api-compat (CPU); LSTM: {error}"
        named = "; ".join(f"{part}: {path}" for part, path in paths.items())
        scatter = "a compiled loop" if kernel_choice() == "numba" else "sort + add.reduceat"
        return f"NumPy via array-api-compat (CPU); {named}; embedding gradient: {scatter}"

    def unavailable_reason(self) -> str | None:
        return None

    def namespace(self) -> Any:
        import array_api_compat.numpy

        return array_api_compat.numpy

    def parse_device(self, spec: Any) -> Any:
        if spec not in (None, "cpu"):
            raise ValueError(f"device for backend 'numpy' must be 'cpu', got {spec!r}")
        return "cpu"

    def owns(self, x: Any) -> bool:
        return isinstance(x, (numpy.ndarray, numpy.generic))

    def to_host(self, x: Any) -> numpy.ndarray:
        return numpy.asarray(x)

    def from_host(self, x: numpy.ndarray, device: Any) -> Any:
        return numpy.array(x, copy=True)

    def scatter_add_rows(self, num_rows: int, ids: Any, values: Any) -> Any:
        """With the `fast` extra one compiled loop (0.007 ms against 0.12 at N = 2048, E = 32, V = 96);
        else sort the ids, sum each run of equal ids with one `add.reduceat`, write the sums.

        The sort is 1.5-2x faster than `numpy.add.at` at that size (README).
        """
        if kernel_choice() == "numba":
            return _module("numba_training").scatter_add_rows(num_rows, ids, values)
        total = numpy.zeros((num_rows, values.shape[1]), dtype=values.dtype)
        if ids.shape[0] == 0:  # no rows: reduceat would refuse its one start
            return total
        order = numpy.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        starts = numpy.flatnonzero(numpy.concatenate(([True], sorted_ids[1:] != sorted_ids[:-1])))
        total[sorted_ids[starts]] = numpy.add.reduceat(values[order], starts, axis=0)
        return total

    def lstm_kernels(self) -> Any:
        """The compiled kernels when numba is installed (the `fast` extra), else the NumPy ones;
        XLSTM_KERNELS=numpy or =numba picks one (asking for numba without it is an error)."""
        return _by_choice("numba_kernels", "numpy_kernels")

    def lstm_layer_norm_kernels(self) -> Any:
        """The layer-norm kernels of the same choice as `lstm_kernels`: the compiled ones with the `fast`
        extra (unless XLSTM_KERNELS=numpy), else the NumPy ones."""
        return _by_choice("numba_layer_norm", "numpy_layer_norm")

    def loss_kernels(self) -> Any:
        """Compiled softmax cross-entropy with the `fast` extra, else NumPy's in-place version."""
        return _by_choice("numba_training", "numpy_losses")

    def output_layer_kernels(self) -> Any:
        """Dense layer, softmax cross-entropy and their gradients in one row-threaded call, its softmax by
        the loss kernels of the same choice (`loss_kernels`)."""
        return _output_layer(self.loss_kernels())

    def optimizer_kernels(self) -> Any:
        """The compiled Adam/AdamW with the `fast` extra, else None (the generic update)."""
        return _by_choice("numba_training", None)

    def mlstm_kernels(self) -> Any:
        """The compiled mLSTM parallel form with the `fast` extra (backends/numba_mlstm.py), else NumPy's with a
        running row maximum (backends/numpy_mlstm.py); XLSTM_KERNELS picks as for `lstm_kernels`."""
        return _by_choice("numba_mlstm", "numpy_mlstm")

    def slstm_kernels(self) -> Any:
        """The sLSTM's compiled time loop with the `fast` extra (unless XLSTM_KERNELS=numpy), else None (the generic
        code: a NumPy-only fused loop would still pay one NumPy call per operation and step)."""
        return _by_choice("numba_slstm", None)


def _by_choice(numba_module: str | None, numpy_module: str | None) -> Any:
    """The kernel module `kernel_choice()` picks (a name in xlstm_backends), or None for the generic code."""
    name = numba_module if kernel_choice() == "numba" else numpy_module
    return None if name is None else _module(name)


@functools.cache
def _module(name: str) -> Any:
    """xlstm_backends.`name`, imported once: the hooks run on every call of the code they speed up."""
    return importlib.import_module(f"xlstm_backends.{name}")


@functools.cache
def _output_layer(loss_kernels: Any) -> Any:
    """The fused output layer over `loss_kernels` (None without them), made once per loss module."""
    if loss_kernels is None:
        return None
    from xlstm_backends.output_layer import OutputLayerKernels

    return OutputLayerKernels(loss_kernels)


@functools.cache
def _missing_fast_extra() -> tuple[str, ...]:
    """The packages of the `fast` extra that are not installed; asked once per process, since
    find_spec takes ~60 µs a package, a third of a tiny LSTM's whole forward pass."""
    return tuple(name for name in FAST_EXTRA if importlib.util.find_spec(name) is None)


def kernel_choice() -> str:
    """'numba' or 'numpy': which fused kernels the numpy backend runs (see `lstm_kernels`)."""
    asked = os.environ.get(KERNELS_VARIABLE, "").strip().lower()
    if asked and asked not in KERNEL_CHOICES:
        raise ValueError(f"{KERNELS_VARIABLE} must be one of {KERNEL_CHOICES}, got {asked!r}")
    missing = _missing_fast_extra()
    if asked == "numba" and missing:
        raise ValueError(f"{KERNELS_VARIABLE}=numba needs {', '.join(missing)}, not installed: "
                         "pip install 'xlstm-array[fast]'")
    if asked:
        return asked
    return "numpy" if missing else "numba"
