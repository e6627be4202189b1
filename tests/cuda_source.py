"""The kernels of `backends/cuda_sources.py`, turned into whole C++/CUDA programs as CuPy would.

`cupy.ElementwiseKernel` wraps a body in a generated kernel: every plain parameter becomes a
reference to the element at index i of its broadcast (inputs `const`), a `raw` one an array
indexed by the body, a scalar a value, and `T` the arrays' type. `program` writes that wrapper
for two targets from the same body and preamble:

- "cpu": an `extern "C"` function looping i over the elements, for g++ (`compile_on_cpu`),
  with the CUDA builtins the sources use mapped to their C++ equivalents;
- "cuda": a `__global__` grid-stride kernel, for NVRTC (tests/test_cuda_nvrtc.py).

Arrays cross as a `View` (data, shape, byte strides) so broadcasts and strided views are read
exactly where CuPy's indexer would read them. A test helper only: never shipped.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import subprocess
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from xlstm_backends.cuda_sources import ElementwiseSource

MAX_DIMS = 8
C_TYPES = {"float32": "float", "float64": "double", "bool": "bool", "int32": "int", "int64": "long long"}


class Param(NamedTuple):
    raw: bool
    type: str  # a dtype name, or a placeholder such as T
    name: str


def parse_params(text: str) -> list[Param]:
    """CuPy's parameter list, "raw T x, T y, int32 n", as Params."""
    params = []
    for part in text.split(","):
        words = part.split()
        raw = words[0] == "raw"
        type_name, name = words[1:] if raw else words
        params.append(Param(raw, type_name, name))
    return params


_VIEW = r"""
struct View { char* data; long long ndim; long long shape[%(dims)d]; long long strides[%(dims)d]; };
// The element at C-order flat index k of the view: what CuPy's CArray/CIndexer compute.
DEVICE inline char* element(const View& v, ptrdiff_t k) {
  char* p = v.data;
  for (long long d = v.ndim - 1; d >= 0; --d) { p += (k %% v.shape[d]) * v.strides[d]; k /= v.shape[d]; }
  return p;
}
template <typename X> struct Raw {
  View v;
  DEVICE X& operator[](ptrdiff_t k) const { return *reinterpret_cast<X*>(element(v, k)); }
};
""" % {"dims": MAX_DIMS}

_CPU_PRELUDE = r"""
#include <cmath>
#include <cstddef>
using std::tanh; using std::exp; using std::log; using std::sqrt;  // float overloads, as in CUDA
#define __device__
#define __forceinline__ inline
#define DEVICE
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float x, float y) { return x / y; }
"""

_CUDA_PRELUDE = r"""
#define DEVICE __device__
"""  # NVRTC declares ptrdiff_t and the math functions itself


def _c_type(param: Param) -> str:
    return C_TYPES.get(param.type, "T")


def _kernel_function(source: ElementwiseSource, target: str, scalars: frozenset[str]) -> str:
    """The generated function of one kernel: parameters bound as CuPy binds them, then the body."""
    inputs, outputs = parse_params(source.in_params), parse_params(source.out_params)
    whole, per_element = [], []
    for k, param in enumerate(inputs + outputs):
        c_type, const = _c_type(param), "const " if k < len(inputs) else ""
        if param.raw:
            whole.append(f"Raw<{c_type}> {param.name}{{views[{k}]}};")
        elif param.name in scalars:
            whole.append(f"const {c_type} {param.name} = *reinterpret_cast<const {c_type}*>(views[{k}].data);")
        else:
            per_element.append(f"{const}{c_type}& {param.name} = *reinterpret_cast<{c_type}*>(element(views[{k}], i));")
    if target == "cpu":
        qualifier, loop = "", "for (ptrdiff_t i = 0; i < size; ++i) {"
    else:
        qualifier = "__global__ "
        loop = ("for (ptrdiff_t i = blockIdx.x * (ptrdiff_t)blockDim.x + threadIdx.x; i < size;"
                " i += (ptrdiff_t)blockDim.x * gridDim.x) {")
    return "\n".join([f'extern "C" {qualifier}void {source.name}(const View* views, ptrdiff_t size) {{',
                      *whole, loop, *per_element, source.operation, "}", "}"])


def program(sources: tuple[ElementwiseSource, ...], dtype: str, target: str, scalars: frozenset[str]) -> str:
    """One translation unit holding `sources` with T = dtype, for target "cpu" (g++) or "cuda" (NVRTC).

    `scalars` names the inputs given as Python scalars (CuPy passes those by value). A preamble
    shared by several sources appears once.
    """
    if target not in ("cpu", "cuda"):
        raise ValueError(f"target must be 'cpu' or 'cuda', got {target!r}")
    preambles = list(dict.fromkeys(source.preamble for source in sources))
    return "\n".join([_CPU_PRELUDE if target == "cpu" else _CUDA_PRELUDE, _VIEW, f"typedef {C_TYPES[dtype]} T;",
                      *preambles, *(_kernel_function(source, target, scalars) for source in sources)])


class _CView(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("ndim", ctypes.c_longlong),
                ("shape", ctypes.c_longlong * MAX_DIMS), ("strides", ctypes.c_longlong * MAX_DIMS)]


def _view(array: np.ndarray) -> _CView:
    view = _CView(array.ctypes.data, array.ndim)
    view.shape[: array.ndim] = array.shape
    view.strides[: array.ndim] = array.strides
    return view


@functools.cache
def _build_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="xlstm_cuda_source_"))


@functools.cache
def _library(code: str) -> ctypes.CDLL:
    """g++'s shared library of one program (built once per process)."""
    stem = hashlib.sha256(code.encode()).hexdigest()[:16]
    source, library = _build_dir() / f"{stem}.cpp", _build_dir() / f"{stem}.so"
    source.write_text(code)
    subprocess.run(["g++", "-std=c++17", "-O1", "-shared", "-fPIC", "-Wall", "-Werror", "-Wno-unused-variable",
                    "-o", str(library), str(source)], check=True, capture_output=True, text=True)
    return ctypes.CDLL(str(library))


class CpuKernel:
    """An ElementwiseKernel's source compiled by g++ and called like CuPy calls it, on NumPy arrays."""

    def __init__(self, source: ElementwiseSource):
        self.source = source
        self.params = parse_params(source.in_params) + parse_params(source.out_params)
        self.input_count = len(parse_params(source.in_params))

    def __call__(self, *args) -> None:
        """Run on `args` (inputs then outputs, all given); outputs are written in place."""
        name = self.source.name
        if len(args) != len(self.params):
            raise TypeError(f"{name} takes {len(self.params)} arguments, got {len(args)}")
        dtype = self._placeholder_dtype(args)
        scalars = frozenset(param.name for param, arg in zip(self.params, args) if not isinstance(arg, np.ndarray))
        arrays = []
        for k, (param, arg) in enumerate(zip(self.params, args)):
            wanted = np.dtype(param.type) if param.type in C_TYPES else dtype
            if param.name in scalars and (param.raw or k >= self.input_count):
                raise TypeError(f"{name}: {param.name} must be an array")
            array = np.asarray(arg, dtype=wanted) if param.name in scalars else arg
            if array.dtype != wanted:  # CuPy casts only scalars; an array of another type is an error here
                raise TypeError(f"{name}: {param.name} must be {wanted}, got {array.dtype}")
            arrays.append(array)
        shape = np.broadcast_shapes(*(array.shape for param, array in zip(self.params, arrays)
                                      if not param.raw and param.name not in scalars))
        views = []
        for k, (param, array) in enumerate(zip(self.params, arrays)):
            if param.raw or param.name in scalars:
                views.append(_view(array))
                continue
            if k >= self.input_count and array.shape != shape:
                raise ValueError(f"{name}: output {param.name} has shape {array.shape}, not the broadcast {shape}")
            views.append(_view(np.broadcast_to(array, shape)))
        function = getattr(_library(program((self.source,), dtype.name, "cpu", scalars)), name)
        function.argtypes = [ctypes.POINTER(_CView), ctypes.c_longlong]
        function((_CView * len(views))(*views), int(np.prod(shape)))

    def _placeholder_dtype(self, args) -> np.dtype:
        """T: the dtype of the first array given for a T parameter (CuPy's rule)."""
        for param, arg in zip(self.params, args):
            if param.type not in C_TYPES and isinstance(arg, np.ndarray):
                return arg.dtype
        raise TypeError(f"{self.source.name}: no array given for the type placeholder T")
