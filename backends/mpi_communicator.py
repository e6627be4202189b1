"""The MPI communicator (mpi4py), for `mpiexec -n N python -m xlstm train ...`.

Arrays are summed through host memory unless the MPI library reports that it reads GPU
memory itself (CUDA-aware MPI); `reduces_on_device` is the one place that decides.
"""
from __future__ import annotations

import ctypes
import os
from typing import Any

import array_api_compat
import numpy
from mpi4py import MPI

from xlstm_backends.communicator import Communicator, check_root
from xlstm_backends.transfer import library_of, to_numpy

GPU_LIBRARIES = ("cupy", "torch")


class MPICommunicator(Communicator):
    """MPI_COMM_WORLD; `local_rank` is the rank in the machine's shared-memory communicator."""

    def __init__(self) -> None:
        self.comm = MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_rank = node.Get_rank()
        node.Free()
        self.cuda_aware = cuda_aware_mpi(self.comm)

    def allreduce_sum(self, buffer: Any) -> Any:
        library = library_of(buffer)
        if library is None or buffer.ndim != 1:
            raise ValueError(f"buffer must be one flat (1-d) array of a known backend, got {type(buffer).__name__} "
                             f"of shape {getattr(buffer, 'shape', None)}")
        if reduces_on_device(buffer, self.cuda_aware):
            return self._allreduce_on_device(buffer)
        host = numpy.ascontiguousarray(to_numpy(buffer))
        total = numpy.empty_like(host)
        self.comm.Allreduce(host, total, op=MPI.SUM)
        return total if library.name == "numpy" else library.from_host(total, array_api_compat.device(buffer))

    def _allreduce_on_device(self, buffer: Any) -> Any:
        """Sum GPU arrays in place of a copy: CUDA-aware MPI reads device memory directly."""
        total = array_api_compat.array_namespace(buffer).asarray(buffer, copy=True)
        library_of(buffer).synchronize(array_api_compat.device(buffer))  # the copy must be done before MPI reads it
        self.comm.Allreduce(MPI.IN_PLACE, total, op=MPI.SUM)
        return total

    def broadcast(self, value: Any, root: int = 0) -> Any:
        check_root(root, self.size)
        return self.comm.bcast(value, root=root)

    def gather(self, value: Any, root: int = 0) -> list[Any] | None:
        check_root(root, self.size)
        return self.comm.gather(value, root=root)

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, exit_code: int = 1) -> None:
        self.comm.Abort(exit_code)
        os._exit(exit_code)  # MPICH's Abort may return before the launcher ends this process

    def describe(self) -> str:
        library = MPI.Get_library_version().strip().splitlines()[0]
        return f"{self.size} ranks, {' '.join(library.split())}" + (", CUDA-aware" if self.cuda_aware else "")


def reduces_on_device(buffer: Any, cuda_aware: bool) -> bool:
    """Whether `buffer` goes to MPI as it is (a GPU array, and MPI reads GPU memory) rather
    than through a host copy."""
    library = library_of(buffer)
    if not cuda_aware or library is None or library.name not in GPU_LIBRARIES:
        return False
    return "cpu" not in str(array_api_compat.device(buffer)).lower()


def cuda_aware_mpi(comm: Any) -> bool:
    """Whether the MPI library reads CUDA device memory: MPI 4.1's "mpi_memory_alloc_kinds"
    info lists "cuda", or the MPIX_Query_cuda_support extension (Open MPI, MPICH) says so."""
    info = comm.Get_info()
    try:
        kinds = info.Get("mpi_memory_alloc_kinds") or ""
    finally:
        info.Free()
    if any(kind.split(":")[0] == "cuda" for kind in kinds.split(",")):  # "cuda" or "cuda:device"
        return True
    try:
        query = ctypes.CDLL(MPI.__file__).MPIX_Query_cuda_support  # resolved in the loaded libmpi
    except (AttributeError, OSError):
        return False
    query.restype = ctypes.c_int
    return bool(query())
