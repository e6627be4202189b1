"""Inter-process communication for data-parallel training: the `Communicator`.

A communicator knows this process's rank among `size` processes and moves data between
them: a sum of one flat array over all ranks, a broadcast, a gather, a barrier. One
process without `mpiexec` is the default and needs no MPI at all (`SingleProcess`);
under `mpiexec -n N` with N > 1, `get_communicator()` returns the MPI one (mpi4py).
"""
from __future__ import annotations

import os
import shutil
import sys
import time
import traceback
from contextlib import contextmanager
from typing import Any, Iterator

# Environment variables through which launchers announce the number of ranks:
# MPICH's and Intel MPI's hydra (and Slurm's PMI), Open MPI, MVAPICH.
LAUNCHER_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
INSTALL_HINT = "pip install 'xlstm-array[mpi]'"
ABORT_GRACE_SECONDS = 0.5  # between a failing rank's message and the abort, for the launcher to relay it


class CommunicatorError(RuntimeError):
    """Multi-rank launch that cannot run: mpi4py missing, or mpiexec and mpi4py's MPI disagree."""


class Communicator:
    """What data-parallel training asks of the processes it runs on.

    `rank` is this process's index in 0..size-1, `local_rank` its index among the ranks on
    the same machine (it picks the GPU). Collective calls must be made by every rank, in
    the same order.
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    def allreduce_sum(self, buffer: Any) -> Any:
        """The element-wise sum of `buffer` (one flat array, same shape on every rank) over all
        ranks, as a new array of `buffer`'s library and device; `buffer` is not changed."""
        raise NotImplementedError

    def broadcast(self, value: Any, root: int = 0) -> Any:
        """`value` of rank `root` (any picklable object), returned on every rank."""
        raise NotImplementedError

    def gather(self, value: Any, root: int = 0) -> list[Any] | None:
        """Every rank's `value` as a list in rank order on rank `root`; None on the others."""
        raise NotImplementedError

    def barrier(self) -> None:
        """Return once every rank has called it."""
        raise NotImplementedError

    def abort(self, exit_code: int = 1) -> None:
        """End every rank of the job now, with `exit_code` (after an error on one rank, so
        the others do not wait forever in a collective)."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line for the user: how many ranks, and which MPI library."""
        raise NotImplementedError


class SingleProcess(Communicator):
    """The default: one process, no MPI; every collective is the identity."""

    def allreduce_sum(self, buffer: Any) -> Any:
        return buffer

    def broadcast(self, value: Any, root: int = 0) -> Any:
        check_root(root, 1)
        return value

    def gather(self, value: Any, root: int = 0) -> list[Any] | None:
        check_root(root, 1)
        return [value]

    def barrier(self) -> None:
        pass

    def abort(self, exit_code: int = 1) -> None:
        raise SystemExit(exit_code)

    def describe(self) -> str:
        return "single process"


@contextmanager
def ending_every_rank_on_error(communicator: Communicator) -> Iterator[None]:
    """Run the block; if it raises on one rank of several, print the error and abort the whole job.

    Without this, the other ranks would wait forever in their next collective: MPI ends the
    job when a rank is killed, but not when one leaves early through an exception. The exit
    code is the SystemExit's code (so bad input still exits 2), else 1.
    """
    try:
        yield
    except SystemExit as exit:
        if communicator.size == 1 or not exit.code:
            raise
        message = "" if isinstance(exit.code, int) else f"{exit.code}\n"
        _abort(communicator, exit.code if isinstance(exit.code, int) else 1, message)
        raise
    except BaseException:
        if communicator.size == 1:
            raise
        _abort(communicator, 1, traceback.format_exc())
        raise


def _abort(communicator: Communicator, exit_code: int, message: str) -> None:
    """Say why in one write, give the launcher a moment to forward it, then end every rank.

    The launcher relays each rank's stderr as it arrives and drops what it has not relayed when the job
    is torn down: a traceback printed line by line once reached the user as its first line only."""
    sys.stderr.write(message)
    sys.stderr.flush()
    if message:
        time.sleep(ABORT_GRACE_SECONDS)
    communicator.abort(exit_code)


def launched_size(environ: dict[str, str] | None = None) -> int:
    """The number of ranks a launcher (mpiexec, mpirun, srun) announced; 1 when none did."""
    environ = os.environ if environ is None else environ
    for name in LAUNCHER_SIZE_VARIABLES:
        value = environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return 1


def get_communicator(environ: dict[str, str] | None = None) -> Communicator:
    """MPI's communicator when launched on more than one rank, else `SingleProcess()`.

    Raises CommunicatorError when launched on several ranks without mpi4py installed.
    """
    size = launched_size(environ)
    if size <= 1:
        return SingleProcess()
    try:
        from xlstm_backends.mpi_communicator import MPICommunicator
    except ImportError as error:
        raise CommunicatorError(
            f"launched on {size} ranks (by mpiexec), but mpi4py cannot be imported ({error}); "
            f"data-parallel training needs it: {INSTALL_HINT}") from None
    communicator = MPICommunicator()
    if communicator.size != size:
        raise CommunicatorError(
            f"the launcher started {size} ranks but mpi4py's MPI sees {communicator.size}: mpiexec and "
            f"mpi4py come from different MPI libraries; use the mpiexec of this environment "
            f"({mpiexec_path() or 'none found'})")
    return communicator


def mpiexec_path() -> str | None:
    """The mpiexec beside this Python (where the `mpich` wheel puts it), else the first on PATH."""
    return shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")


def device_for_rank(backend_name: str, device: Any, local_rank: int) -> Any:
    """The device a rank should use: one GPU per rank on each machine (local_rank modulo the
    GPU count) for cupy, and for torch when `device` is "cuda" without an index; any other
    device (the CPU, an explicit GPU index) is kept as given."""
    if backend_name == "cupy" and device is None:
        import cupy

        return local_rank % cupy.cuda.runtime.getDeviceCount()
    if backend_name == "torch" and str(device) == "cuda":
        import torch

        return f"cuda:{local_rank % torch.cuda.device_count()}"
    return device


def check_root(root: int, size: int) -> None:
    if isinstance(root, bool) or not isinstance(root, int) or not 0 <= root < size:
        raise ValueError(f"root must be a rank in 0..{size - 1}, got {root!r}")
