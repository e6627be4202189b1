"""The only package that names array libraries: selection, devices, transfers, RNG, sync, MPI."""
import os

# OpenBLAS's idle threads spin for 2^28 cycles (~0.1 s) after every multithreaded product before
# they sleep, holding a core the LSTM kernels' row-block threads need: on 2 cores the main job's
# step took 73 ms instead of 58 (measured, README "Compiled kernels"). 2^20 cycles (~0.4 ms) keeps
# them warm between the NumPy kernels' per-step products. Read when NumPy first loads OpenBLAS, so
# it only takes effect when xlstm is imported before NumPy (as in `python -m xlstm`); a value the
# user set wins.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "20")
from xlstm_backends.backend import Backend, dtype_name, float_dtype
from xlstm_backends.communicator import (
    Communicator,
    CommunicatorError,
    SingleProcess,
    device_for_rank,
    ending_every_rank_on_error,
    get_communicator,
    mpiexec_path,
)
from xlstm_backends.random import RandomStream
from xlstm_backends.selection import (
    LIBRARIES,
    BackendError,
    available_backends,
    current_backend,
    get_backend,
    use_backend,
)
from xlstm_backends.transfer import asarray, library_of, to_numpy

__all__ = [
    "LIBRARIES",
    "Backend",
    "BackendError",
    "Communicator",
    "CommunicatorError",
    "RandomStream",
    "SingleProcess",
    "asarray",
    "available_backends",
    "dtype_name",
    "float_dtype",
    "current_backend",
    "device_for_rank",
    "ending_every_rank_on_error",
    "get_backend",
    "get_communicator",
    "library_of",
    "mpiexec_path",
    "to_numpy",
    "use_backend",
]
