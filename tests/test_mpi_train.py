"""`mpiexec -n N python -m xlstm train` for real, against one process with the same flags.

Float64 with dropout, so the oracle is exact: one process on the whole batch gives the loss
of every step and every evaluation, and N ranks must match it to 1e-9 relative; so must a
run resumed on another number of ranks, and one resumed after a rank was killed.
Skipped, with the reason, when mpi4py or mpiexec is missing (pip install 'xlstm-array[mpi]').
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xlstm_backends import mpiexec_path
from xlstm.__main__ import main
from xlstm.checkpoint import load_checkpoint
from xlstm.metrics import read_metrics

try:
    import mpi4py  # noqa: F401
except ImportError:
    pytest.skip("mpi4py is not installed (pip install 'xlstm-array[mpi]')", allow_module_level=True)
if mpiexec_path() is None:
    pytest.skip("no mpiexec beside this Python or on PATH (pip install 'xlstm-array[mpi]')", allow_module_level=True)

TEXT = ("the quick brown fox jumps over the lazy dog. " * 40) + "pack my box with five dozen liquor jugs. " * 20
FLAGS = ["--batch-size", "4", "--window", "8", "--hidden-size", "8", "--embedding-size", "4", "--num-layers", "2",
         "--dropout-keep-prob", "0.8", "--dtype", "float64", "--eval-every", "3", "--checkpoint-every", "3"]
STEPS = 12  # of the single-process reference run


def launch(ranks: int, text: Path, out: Path, *extra: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """`mpiexec -n ranks python -m xlstm train` with FLAGS; a hang past `timeout` fails the test."""
    return subprocess.run(mpi_command(ranks, text, out, *extra), capture_output=True, text=True, timeout=timeout,
                          env=one_thread_environment())


def mpi_command(ranks: int, text: Path, out: Path, *extra: str) -> list[str]:
    return [mpiexec_path(), "-n", str(ranks), sys.executable, "-m", "xlstm", "train", "--text", str(text),
            "--out", str(out), *FLAGS, *extra]


def one_thread_environment(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", **extra}


def losses(out: Path) -> dict[tuple[str, int], float]:
    """Every training and validation loss of a run's metrics.jsonl, by (kind, step)."""
    return {(kind, record["step"]): record[kind] for record in read_metrics(out / "metrics.jsonl")
            for kind in ("loss", "validation_loss") if kind in record}


def assert_same_losses(run: dict, reference: dict) -> None:
    assert run, "the run logged no losses"
    for key, value in run.items():
        assert value == pytest.approx(reference[key], rel=1e-9, abs=0.0), key


@pytest.fixture(scope="module")
def text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def reference(text: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One process, the whole batch, STEPS steps: the losses every parallel run must reproduce."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main(["train", "--text", str(text), "--out", str(out), *FLAGS, "--steps", str(STEPS)]) == 0
    return losses(out)


@pytest.fixture(scope="module")
def two_ranks(text: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """A 2-rank run of 6 steps: its folder and its finished process."""
    out = tmp_path_factory.mktemp("two_ranks") / "run"
    done = launch(2, text, out, "--steps", "6")
    assert done.returncode == 0, done.stderr
    return out, done


def test_two_ranks_give_the_losses_of_one_process(two_ranks, reference) -> None:
    out, _ = two_ranks
    run = losses(out)
    assert set(run) == {("loss", s) for s in range(1, 7)} | {("validation_loss", 3), ("validation_loss", 6)}
    assert_same_losses(run, reference)


def test_only_rank_zero_speaks_and_writes(two_ranks) -> None:
    out, done = two_ranks
    lines = done.stdout.splitlines()
    assert lines[0].startswith("data-parallel: 2 ranks, ")
    assert [line.split(":")[0].strip() for line in lines[1:3]] == ["rank 0", "rank 1"]
    assert "numpy on cpu" in lines[1] and "numpy on cpu" in lines[2]
    for once in ("corpus:", "model:", "step 6: validation loss", "sample (prompt", "ms per step in the gradient "
                                                                                   "allreduce"):
        assert sum(once in line for line in lines) == 1, once
    assert done.stderr.count("100%|") == 1  # one progress bar, rank 0's
    written = {path.name for path in out.iterdir()} - {"loss.png"}  # the plot when matplotlib is installed
    assert written == {"checkpoint.npz", "metrics.jsonl", "tokens.bin", "tokens.json"}  # nothing per rank


def test_the_checkpoint_holds_the_whole_batch_state(two_ranks) -> None:
    checkpoint = load_checkpoint(two_ranks[0])
    assert checkpoint.step == 6
    assert all(array.shape == (4, 8) for layer in checkpoint.carried_state for array in layer)


@pytest.mark.parametrize("ranks", [1, 4])
def test_a_two_rank_run_resumes_exactly_on_another_number_of_ranks(ranks, text, two_ranks, reference,
                                                                   tmp_path) -> None:
    out = tmp_path / "run"
    shutil.copytree(two_ranks[0], out)
    steps = STEPS if ranks == 1 else 9
    if ranks == 1:
        assert main(["train", "--text", str(text), "--out", str(out), *FLAGS, "--resume", "--steps", str(steps)]) == 0
    else:
        done = launch(ranks, text, out, "--resume", "--steps", str(steps))
        assert done.returncode == 0, done.stderr
    run = losses(out)
    assert max(step for _, step in run) == steps
    assert_same_losses(run, reference)


def test_a_batch_that_does_not_divide_among_the_ranks_is_refused(text, tmp_path) -> None:
    done = launch(2, text, tmp_path / "run", "--batch-size", "3", "--steps", "2")
    assert done.returncode == 2
    assert "--batch-size 3 is the global batch and must divide evenly among 2 ranks" in done.stderr
    assert not (tmp_path / "run").exists()


def test_a_killed_rank_ends_the_job_and_resume_continues_exactly(text, tmp_path) -> None:
    out, marker = tmp_path / "run", str(tmp_path)
    job = subprocess.Popen(mpi_command(2, text, out, "--steps", "100000"), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, env=one_thread_environment(XLSTM_TEST_RUN=marker))
    try:
        checkpoint_step = wait_for_checkpoint(out, job)
        os.kill(rank_pid(marker, rank=1), signal.SIGKILL)
        killed = time.perf_counter()
        code = job.wait(timeout=30)
    finally:
        if job.poll() is None:
            job.kill()
    assert code != 0
    assert time.perf_counter() - killed < 10.0, "the job took too long to end after a rank died"
    saved = load_checkpoint(out).step
    assert saved >= checkpoint_step and saved % 3 == 0  # intact: a step where one was saved

    assert main(["train", "--text", str(text), "--out", str(out), *FLAGS, "--resume", "--steps", str(saved + 2)]) == 0
    reference = tmp_path / "reference"
    assert main(["train", "--text", str(text), "--out", str(reference), *FLAGS, "--steps", str(saved + 2)]) == 0
    run = losses(out)
    assert max(step for _, step in run) == saved + 2
    assert_same_losses(run, losses(reference))


def wait_for_checkpoint(out: Path, job: subprocess.Popen, timeout: float = 30.0) -> int:
    """The step of the first checkpoint the running job saves (it keeps training afterwards)."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        assert job.poll() is None, "the job ended before it saved a checkpoint"
        if (out / "checkpoint.npz").is_file():
            return load_checkpoint(out).step
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint after {timeout} s")


def rank_pid(marker: str, rank: int) -> int:
    """The process id of `rank` of the job started with XLSTM_TEST_RUN=marker (from /proc)."""
    wanted = {f"XLSTM_TEST_RUN={marker}".encode(), f"PMI_RANK={rank}".encode()}
    for entry in Path("/proc").iterdir():
        try:
            variables = set((entry / "environ").read_bytes().split(b"\0")) if entry.name.isdigit() else set()
        except OSError:
            continue
        if wanted <= variables and b"python" in (entry / "cmdline").read_bytes():
            return int(entry.name)
    raise AssertionError(f"no process of rank {rank} found")


def test_an_xlstm_stack_on_two_ranks_gives_the_losses_of_one_process(text, tmp_path) -> None:
    """An mLSTM under an sLSTM (their states are split by rows and gathered like the LSTM's), float64."""
    cells = ["--cell", "mlstm,slstm", "--num-heads", "2", "--dropout-keep-prob", "1.0", "--steps", "6"]
    assert main(["train", "--text", str(text), "--out", str(tmp_path / "one"), *FLAGS, *cells]) == 0
    done = launch(2, text, tmp_path / "two", *cells)
    assert done.returncode == 0, done.stderr
    assert_same_losses(losses(tmp_path / "two"), losses(tmp_path / "one"))
    one, two = load_checkpoint(tmp_path / "one"), load_checkpoint(tmp_path / "two")
    for mine, theirs in zip(one.carried_state, two.carried_state, strict=True):
        for a, b in zip(mine, theirs, strict=True):
            assert a == pytest.approx(b, rel=1e-9, abs=1e-12)
