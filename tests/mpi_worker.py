"""Run under `mpiexec -n N python tests/mpi_worker.py SCENARIO FOLDER`; rank r writes FOLDER/rank{r}.json.

tests/test_mpi.py launches it and checks the reports against values it computes itself.
"""
from __future__ import annotations

import json
import os
import signal
import sys

import xlstm_backends as backends
from xlstm.cell import LSTMState
from xlstm.parallel import average_over_ranks, gather_state, mean_over_ranks

# (backend, device) pairs the collectives are tried on, when usable here.
CASES = [("numpy", None), ("array_api_strict", None), ("array_api_strict", "device1"), ("torch", "cpu")]


def collectives(communicator: backends.Communicator) -> dict:
    """Every collective once; rank r contributes values made from r so the test can predict the sums."""
    rank, report = communicator.rank, {}
    for name, device in CASES:
        if backends.available_backends()[name] is not None:
            continue
        target = backends.get_backend(name, device)
        buffer = backends.asarray([1.0 * (rank + 1), 2.0 ** rank, -3.0 * rank], dtype="float64", backend=target)
        total = communicator.allreduce_sum(buffer)
        same_place = (backends.library_of(total).name == name
                      and str(backends.get_backend(name, device).device) == str(_device(total)))
        report[f"{name}/{device}"] = {"sum": backends.to_numpy(total).tolist(), "same_place": same_place,
                                      "input_kept": backends.to_numpy(buffer).tolist()}
    grads = {"w": backends.asarray([[rank + 0.5, 2.0], [3.0, -rank]], dtype="float64"),
             "loss": backends.asarray(0.25 * (rank + 1), dtype="float64")}
    averaged = average_over_ranks(grads, communicator)
    report["average"] = {name: backends.to_numpy(value).tolist() for name, value in averaged.items()}
    state = (LSTMState(backends.asarray([[rank, 0.5]], dtype="float64"), backends.asarray([[-rank, 1.5]], dtype="float64")),)
    gathered = gather_state(state, communicator, backends.get_backend("numpy"))
    report["state"] = None if gathered is None else [[backends.to_numpy(x).tolist() for x in layer] for layer in gathered]
    report["mean"] = mean_over_ranks(10.0 * (rank + 1), rank + 1, communicator)
    report.update(rank=rank, size=communicator.size, local_rank=communicator.local_rank,
                  broadcast=communicator.broadcast({"from": rank, "items": [rank, "x"]}, root=1),
                  gather=communicator.gather(rank * 10), describe=communicator.describe())
    communicator.barrier()
    return report


def killed_rank(communicator: backends.Communicator) -> dict:
    """Rank 1 SIGKILLs itself after a barrier; the others then wait in a collective forever
    unless MPI ends the job."""
    communicator.barrier()
    if communicator.rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    communicator.barrier()
    return {"rank": communicator.rank, "survived": True}


def failing_rank(communicator: backends.Communicator) -> dict:
    """Rank 1 raises inside `ending_every_rank_on_error`; rank 0 waits in a barrier it can never pass."""
    communicator.barrier()
    with backends.ending_every_rank_on_error(communicator):
        if communicator.rank == 1:
            raise ValueError("rank 1 failed on purpose")
        communicator.barrier()
    return {"rank": communicator.rank, "survived": True}


def refusing_ranks(communicator: backends.Communicator) -> dict:
    """Every rank refuses its input as the CLI does (SystemExit(2)): the job must exit 2."""
    with backends.ending_every_rank_on_error(communicator):
        raise SystemExit(2)


def _device(x: object) -> object:
    import array_api_compat

    return array_api_compat.device(x)


if __name__ == "__main__":
    scenario = {"collectives": collectives, "killed_rank": killed_rank, "failing_rank": failing_rank,
                "refusing_ranks": refusing_ranks}[sys.argv[1]]
    communicator = backends.get_communicator()
    report = scenario(communicator)
    with open(os.path.join(sys.argv[2], f"rank{communicator.rank}.json"), "w") as file:
        json.dump(report, file)
