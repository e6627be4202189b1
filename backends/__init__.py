"""The only package that names array libraries: selection, devices, transfers, RNG, sync, MPI."""
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
