"""Every CUDA kernel compiles with NVRTC for real GPU architectures, without a GPU.

NVRTC (the compiler CuPy itself uses) comes from the `nvidia-cuda-nvrtc-cu12` wheel, the
`gpu-test` extra; the program is the kernel as CuPy would wrap it (tests/cuda_source.py).
"""
from __future__ import annotations

import ctypes
import importlib.util
from pathlib import Path

import pytest
from cuda_source import program

from xlstm_backends import cuda_sources

ARCHITECTURES = ("70", "80", "90")  # compute capabilities: Volta, Ampere, Hopper


def _nvrtc() -> ctypes.CDLL | None:
    """libnvrtc from the nvidia-cuda-nvrtc-cu12 wheel, or None where that wheel is absent."""
    if importlib.util.find_spec("nvidia") is None:  # asking for nvidia.cuda_nvrtc would raise
        return None
    spec = importlib.util.find_spec("nvidia.cuda_nvrtc")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        libraries = sorted(Path(folder, "lib").glob("libnvrtc.so.*"))
        if libraries:
            return ctypes.CDLL(str(libraries[0]))
    return None


NVRTC = _nvrtc()
pytestmark = pytest.mark.skipif(NVRTC is None, reason="NVRTC absent: pip install -e '.[gpu-test]'")


def _compile(code: str, name: str, architecture: str) -> tuple[int, str, int]:
    """(nvrtc result code, compile log, size of the PTX or, for an sm_ architecture, the cubin)."""
    program_handle = ctypes.c_void_p()
    assert NVRTC.nvrtcCreateProgram(ctypes.byref(program_handle), code.encode(), f"{name}.cu".encode(),
                                    0, None, None) == 0
    try:
        options = [f"--gpu-architecture={architecture}".encode(), b"--std=c++17"]
        result = NVRTC.nvrtcCompileProgram(program_handle, len(options), (ctypes.c_char_p * len(options))(*options))
        log_size = ctypes.c_size_t()
        NVRTC.nvrtcGetProgramLogSize(program_handle, ctypes.byref(log_size))
        log = ctypes.create_string_buffer(log_size.value)
        NVRTC.nvrtcGetProgramLog(program_handle, log)
        binary_size = ctypes.c_size_t()
        if result == 0:
            get_size = NVRTC.nvrtcGetCUBINSize if architecture.startswith("sm_") else NVRTC.nvrtcGetPTXSize
            get_size(program_handle, ctypes.byref(binary_size))
        return result, log.value.decode(errors="replace"), binary_size.value
    finally:
        NVRTC.nvrtcDestroyProgram(ctypes.byref(program_handle))


def _assert_compiles(dtype: str, architecture: str) -> None:
    """All kernels in one program (one NVRTC run: each takes seconds) compile without warnings."""
    code = program(cuda_sources.ALL_KERNELS, dtype, "cuda", frozenset({"units"}))
    result, log, binary_size = _compile(code, "xlstm_kernels", architecture)
    assert result == 0, log
    assert binary_size > 0
    warnings = [line for line in log.splitlines() if "warning" in line.lower()
                and "are deprecated" not in line]  # CUDA 12 deprecates (still builds) sm_70
    assert not warnings, log


@pytest.mark.parametrize("capability", ARCHITECTURES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_kernel_compiles_to_ptx(dtype, capability):
    """PTX for each compute capability: NVRTC's whole front end and code generation."""
    _assert_compiles(dtype, f"compute_{capability}")


def test_every_kernel_assembles_to_a_cubin():
    """Once down to machine code too (ptxas, what CuPy does for a known GPU): ~10 s, so one case."""
    _assert_compiles("float64", "sm_80")


def test_nvrtc_rejects_a_broken_kernel():
    """The check can fail: an undeclared name in the body is a compile error."""
    broken = cuda_sources.FORWARD_STEP._replace(operation=cuda_sources.FORWARD_STEP.operation + "h_new = nowhere;")
    result, log, _ = _compile(program((broken,), "float32", "cuda", frozenset({"units"})), broken.name, "compute_80")
    assert result != 0 and "nowhere" in log
