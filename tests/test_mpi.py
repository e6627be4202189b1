"""The MPI communicator for real: `mpiexec -n 2` runs tests/mpi_worker.py, whose ranks print JSON.

Skipped, with the reason, when mpi4py or mpiexec is missing (pip install 'xlstm-array[mpi]').
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xlstm_backends import mpiexec_path

WORKER = Path(__file__).with_name("mpi_worker.py")

try:
    import mpi4py  # noqa: F401
except ImportError:
    pytest.skip("mpi4py is not installed (pip install 'xlstm-array[mpi]')", allow_module_level=True)
if mpiexec_path() is None:
    pytest.skip("no mpiexec beside this Python or on PATH (pip install 'xlstm-array[mpi]')", allow_module_level=True)


def launch(scenario: str, folder: Path, ranks: int = 2, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """`mpiexec -n ranks` on the worker; a hang past `timeout` raises TimeoutExpired."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.run([mpiexec_path(), "-n", str(ranks), sys.executable, str(WORKER), scenario, str(folder)],
                          capture_output=True, text=True, timeout=timeout, env=environment)


def read_reports(folder: Path) -> dict[int, dict]:
    return {int(path.stem.removeprefix("rank")): json.loads(path.read_text()) for path in folder.glob("rank*.json")}


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict]:
    """Each rank's report of the collectives scenario, by rank (one mpiexec launch for all tests)."""
    folder = tmp_path_factory.mktemp("collectives")
    done = launch("collectives", folder)
    assert done.returncode == 0, done.stderr
    return read_reports(folder)


def test_every_rank_reports_its_place(reports: dict[int, dict]) -> None:
    assert sorted(reports) == [0, 1]
    assert all(report["size"] == 2 for report in reports.values())
    assert sorted(report["local_rank"] for report in reports.values()) == [0, 1]  # one machine
    assert reports[0]["describe"].startswith("2 ranks, ")


def test_allreduce_sums_a_flat_buffer_on_every_backend(reports: dict[int, dict]) -> None:
    # rank r sends [r + 1, 2**r, -3r]: the sum over ranks 0 and 1 is [3, 3, -3].
    cases = [key for key in reports[0] if "/" in key]
    assert "numpy/None" in cases and "array_api_strict/device1" in cases
    for rank, report in reports.items():
        for case in cases:
            assert report[case]["sum"] == [3.0, 3.0, -3.0], (rank, case)
            assert report[case]["same_place"], (rank, case)  # same library and device as the input
            assert report[case]["input_kept"] == [rank + 1.0, 2.0 ** rank, -3.0 * rank], (rank, case)


def test_average_over_ranks_is_the_mean_of_every_array(reports: dict[int, dict]) -> None:
    # w of rank r is [[r + .5, 2], [3, -r]] and loss .25(r + 1): means over r = 0, 1.
    for report in reports.values():
        assert report["average"] == {"w": [[1.0, 2.0], [3.0, -0.5]], "loss": 0.375}


def test_broadcast_and_gather(reports: dict[int, dict]) -> None:
    for report in reports.values():
        assert report["broadcast"] == {"from": 1, "items": [1, "x"]}
    assert reports[0]["gather"] == [0, 10] and reports[1]["gather"] is None


def test_state_gathered_in_rank_order_on_rank_zero(reports: dict[int, dict]) -> None:
    assert reports[0]["state"] == [[[[0.0, 0.5], [1.0, 0.5]], [[0.0, 1.5], [-1.0, 1.5]]]]
    assert reports[1]["state"] is None


def test_mean_over_ranks_weights_by_count(reports: dict[int, dict]) -> None:
    # totals 10, 20 over counts 1, 2: (10 + 20) / 3
    for report in reports.values():
        assert report["mean"] == pytest.approx(10.0, rel=1e-15)


def test_a_killed_rank_ends_the_job_with_an_error_and_no_hang(tmp_path: Path) -> None:
    started = time.perf_counter()
    done = launch("killed_rank", tmp_path, timeout=30.0)
    elapsed = time.perf_counter() - started
    assert done.returncode != 0
    assert read_reports(tmp_path) == {}  # rank 0 never got past the barrier
    assert elapsed < 20.0, f"the job took {elapsed:.1f} s to end after a rank died"


def test_an_error_on_one_rank_ends_the_job_instead_of_hanging(tmp_path: Path) -> None:
    done = launch("failing_rank", tmp_path, timeout=30.0)
    assert done.returncode != 0
    assert "rank 1 failed on purpose" in done.stderr + done.stdout
    assert read_reports(tmp_path) == {}


def test_input_refused_on_every_rank_exits_2(tmp_path: Path) -> None:
    assert launch("refusing_ranks", tmp_path, timeout=30.0).returncode == 2


def test_a_launcher_of_another_mpi_library_is_named_not_ignored():
    # Open MPI's mpirun starting ranks that load MPICH: each rank would think it is alone.
    environment = {**os.environ, "OMPI_COMM_WORLD_SIZE": "2"}
    done = subprocess.run([sys.executable, "-c", "import xlstm_backends; xlstm_backends.get_communicator()"],
                          capture_output=True, text=True, timeout=60, env=environment)
    assert done.returncode != 0
    assert "the launcher started 2 ranks but mpi4py's MPI sees 1" in done.stderr
