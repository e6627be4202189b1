"""`python -m xlstm bench`: the table, the JSON and the refusals; never a timing asserted."""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from xlstm_backends import get_backend, torch_reference
from xlstm_backends.row_threads import THREADS_VARIABLE
from xlstm import bench

ROOT = Path(__file__).resolve().parents[1]
TORCH_REASON = torch_reference.unavailable_reason()
COLUMN_TITLES = ["shape", "B×T×I×H", "step", "xlstm ms", "GFLOP/s", "% matmul", "torch ms", "GFLOP/s", "% matmul",
                 "xlstm/torch"]


def _bench_parser() -> argparse.ArgumentParser:
    """A parser with only the bench subcommand, as `xlstm/__main__.py` wires it."""
    parser = argparse.ArgumentParser(prog="python -m xlstm")
    bench.add_bench_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def _run_command(*argv: str) -> int:
    args = _bench_parser().parse_args(["bench", *argv])
    return args.run(args)


def _numbers(row: str) -> list[float]:
    return [float(cell.replace(",", "")) for cell in re.findall(r"(?<![\w×])\d[\d,]*(?:\.\d+)?(?:e-?\d+)?(?![\w×])",
                                                                 row)]


def _check_figures(figures: dict, flop: int) -> None:
    assert set(figures) == {"ms", "gflops", "percent_of_matmul", "repeats"}
    assert figures["repeats"] == 1
    for key in ("ms", "gflops", "percent_of_matmul"):
        assert isinstance(figures[key], float) and math.isfinite(figures[key]) and figures[key] > 0, key
    assert figures["gflops"] == pytest.approx(flop / (figures["ms"] * 1e-3) / 1e9)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, dict, Path]:
    """One `bench --shapes tiny --repeats 1 --json out.json` through the command function."""
    out = tmp_path_factory.mktemp("bench") / "out.json"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = _run_command("--shapes", "tiny", "--repeats", "1", "--json", str(out))
    return code, printed.getvalue(), json.loads(out.read_text(encoding="utf-8")), out


def test_tiny_table_has_its_rows_and_columns(tiny_run):
    code, printed, results, out = tiny_run
    assert code == 0
    lines = printed.splitlines()
    for prefix in ("machine ", "threads ", "versions ", "backend ", "reference ", "timing ", "matmul "):
        assert any(line.startswith(prefix) for line in lines), prefix
    heading = next(index for index, line in enumerate(lines) if line.startswith("shape "))
    assert lines[heading].split() == " ".join(COLUMN_TITLES).split()
    assert set(lines[heading + 1].replace(" ", "")) == {"-"}
    forward, training = lines[heading + 2], lines[heading + 3]
    assert forward.split()[:3] == ["tiny", "1×100×10×5", "forward"]
    assert training.split()[0] == "training"
    width = len(lines[heading])
    assert len(forward) == len(training) == width  # aligned under the titles, right edge included
    expected = 7 if TORCH_REASON is None else 3  # ms, GFLOP/s, % for each side and the ratio
    assert len(_numbers(forward.split("forward", 1)[1])) == expected
    assert len(_numbers(training.split("training", 1)[1])) == expected
    assert printed.endswith(f"\n\nwrote {out}\n")
    assert printed.split("\n\nwrote ")[0] == bench.format_table(results)  # the table is the JSON's figures


def test_tiny_json_has_every_figure(tiny_run):
    _, _, results, _ = tiny_run
    assert {"machine", "dtype", "timing", "torch_reference", "matmul", "shapes"} <= set(results)
    machine = results["machine"]
    assert machine["backend"] == "numpy" and machine["cpus"] >= 1 and machine["cpu"]
    assert machine["versions"]["numpy"] and machine["versions"]["xlstm"]
    assert machine["threads"]["torch"] == machine["threads"]["xlstm"] == bench.usable_cpus()
    assert bench.THREADS_VARIABLE not in os.environ  # set for the run only
    assert results["dtype"] == "float32" and results["timing"]["repeats"] == 1
    matmul = results["matmul"]
    assert matmul["size"] == 1024 and matmul["ms"] > 0 and matmul["repeats"] == 1
    assert matmul["gflops"] == pytest.approx(2 * 1024 ** 3 / (matmul["ms"] * 1e-3) / 1e9)
    [tiny] = results["shapes"]
    assert (tiny["name"], tiny["batch"], tiny["steps"], tiny["input_size"], tiny["hidden_size"]) == (
        "tiny", 1, 100, 10, 5)
    assert tiny["forward"]["flop"] == 8 * 100 * 1 * 5 * (10 + 5)
    assert tiny["training"]["flop"] == 3 * tiny["forward"]["flop"]
    for step in ("forward", "training"):
        figures = tiny[step]
        _check_figures(figures["xlstm"], figures["flop"])
        if TORCH_REASON is None:
            assert results["torch_reference"]["available"] is True
            _check_figures(figures["torch"], figures["flop"])
            assert figures["ratio"] == pytest.approx(figures["xlstm"]["ms"] / figures["torch"]["ms"])
        else:
            assert figures["torch"] is None and figures["ratio"] is None


def test_xlstm_kernels_run_on_the_threads_torch_gets(monkeypatch):
    """--threads N reaches the compiled kernels as XLSTM_THREADS for the run, then the caller's value is back."""
    monkeypatch.setenv(THREADS_VARIABLE, "7")
    seen = []
    measure = bench.measure_xlstm
    monkeypatch.setattr(bench, "measure_xlstm", lambda *a, **k: seen.append(os.environ[THREADS_VARIABLE]) or measure(*a, **k))
    lines: list[str] = []
    results = bench.run_benchmark("tiny", tasks="layer", repeats=1, threads=1, min_seconds=0, write=lines.append)
    assert seen == ["1"] and results["machine"]["threads"]["xlstm"] == 1
    assert any(line.startswith("threads ") and "xlstm's kernels up to 1 (XLSTM_THREADS)" in line for line in lines)
    assert os.environ[THREADS_VARIABLE] == "7"


def test_without_torch_the_table_says_why(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    reason = torch_reference.unavailable_reason()
    assert reason is not None and "torch is not installed" in reason
    assert torch_reference.time_torch_lstm(1, 2, 3, 4) == (None, reason)
    assert torch_reference.get_threads() is None and torch_reference.set_threads(1) is None
    lines: list[str] = []
    results = bench.run_benchmark("tiny", repeats=1, write=lines.append)
    assert results["torch_reference"] == {**results["torch_reference"], "available": False, "reason": reason}
    assert any(line.startswith("reference ") and "not measured" in line and reason in line for line in lines)
    [tiny] = results["shapes"]
    assert tiny["forward"]["torch"] is None and tiny["training"]["ratio"] is None
    assert bench.format_rows(tiny)[0].endswith("—")


@pytest.mark.parametrize("argv, message", [
    (["--shapes", "huge"], "unknown shape 'huge' in --shapes; known shapes: tiny (1×100×10×5), medium"),
    (["--shapes", "tiny,larg"], "unknown shape 'larg'"),
    (["--shapes", " , "], "--shapes must name at least one of tiny"),
    (["--repeats", "0"], "repeats must be a positive integer, got 0"),
    (["--repeats", "-2"], "repeats must be a positive integer, got -2"),
    (["--threads", "0"], "threads must be a positive integer, got 0"),
    (["--runs", "0"], "runs must be a positive integer, got 0"),
    (["--task", "lstm"], "--task must name one or more of layer, charlm, xlstm, got 'lstm'"),
    (["--backend", "nope"], "unknown backend 'nope'"),
])
def test_bad_input_is_refused_before_measuring(argv, message):
    with pytest.raises(ValueError) as error:  # `python -m xlstm` prints it and exits 2
        _run_command(*argv)
    assert message in str(error.value)


def test_json_target_is_checked_before_measuring(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _run_command("--shapes", "tiny", "--repeats", "1", "--json", str(tmp_path / "missing" / "out.json"))
    with pytest.raises(ValueError, match="is a folder"):
        _run_command("--shapes", "tiny", "--repeats", "1", "--json", str(tmp_path))


def test_write_json_is_atomic(tmp_path):
    path = tmp_path / "out.json"
    bench.write_json(path, {"a": 1.5})
    assert json.loads(path.read_text()) == {"a": 1.5}
    with pytest.raises(TypeError):
        bench.write_json(path, {"a": object()})  # fails mid-write: the old file stays whole
    assert json.loads(path.read_text()) == {"a": 1.5}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_timing_rule_counts_its_runs():
    calls: list[int] = []
    run = lambda: calls.append(1)  # noqa: E731
    timing = torch_reference.median_ms(run, lambda: None, repeats=5, min_seconds=0.0)
    assert (timing.repeats, len(calls)) == (5, 6)  # one warm-up, five timed
    calls.clear()
    timing = torch_reference.median_ms(run, lambda: None, repeats=None, min_seconds=0.0)
    assert timing.repeats == torch_reference.MIN_REPEATS and len(calls) == 1 + torch_reference.MIN_REPEATS
    assert timing.median_ms >= 0


def test_shapes_flops_and_number_format():
    assert bench.parse_shapes("large, tiny,tiny") == ["large", "tiny"]
    assert bench.SHAPES == {"tiny": (1, 100, 10, 5), "medium": (32, 100, 128, 256), "large": (128, 50, 512, 512)}
    assert bench.forward_flop((128, 50, 512, 512)) == 8 * 50 * 128 * 512 * 1024
    assert [bench._number(v) for v in (None, 0.00123, 0.2814, 2.013, 25.34, 230.4, 1204.0)] == [
        "—", "0.0012", "0.281", "2.01", "25.3", "230", "1,204"]
    assert torch_reference.reference_device("numpy", "cpu") == "cpu"
    assert torch_reference.reference_device("array_api_strict", "device1") == "cpu"


def test_bench_names_no_array_library():
    """House rule: xlstm/ never imports numpy, cupy or torch (backends/ does that)."""
    source = (ROOT / "xlstm" / "bench.py").read_text(encoding="utf-8")
    assert not re.search(r"^\s*(import|from)\s+(numpy|cupy|torch)\b", source, re.MULTILINE)


def test_python_m_xlstm_bench(tmp_path):
    from xlstm.__main__ import build_parser

    commands = next(action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction))
    if "bench" not in commands.choices:
        pytest.skip("the bench subcommand is not wired into xlstm/__main__.py yet")
    out = tmp_path / "out.json"
    done = subprocess.run([sys.executable, "-m", "xlstm", "bench", "--shapes", "tiny", "--repeats", "1",
                           "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "tiny" in done.stdout and json.loads(out.read_text())["shapes"][0]["name"] == "tiny"
    bad = subprocess.run([sys.executable, "-m", "xlstm", "bench", "--shapes", "huge"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "unknown shape 'huge'" in bad.stderr


def test_charlm_task_runs_alternating_with_the_spread_of_the_ratio():
    lines: list[str] = []
    results = bench.run_benchmark("tiny", tasks="charlm", repeats=1, runs=2, write=lines.append)
    assert "shapes" not in results and "matmul" not in results
    charlm = results["charlm"]
    assert charlm["tokens_per_step"] == 32 * 64 and len(charlm["xlstm"]) == 2
    assert all(rate > 0 for rate in charlm["xlstm"])
    text = "\n".join(lines)
    assert text == bench.format_table(results)
    assert "main job: one training step of the CharLM" in text and "median of 2 alternating runs" in text
    library = get_backend("numpy").library  # which code ran each part of the step, as `backends` says
    assert charlm["paths"]["softmax cross-entropy"] in library.description
    assert f"softmax cross-entropy: {charlm['paths']['softmax cross-entropy']}" in text
    assert f"optimizers: {charlm['paths']['optimizers']}" in text
    if TORCH_REASON is None:
        assert charlm["ratio"] == pytest.approx([a / b for a, b in zip(charlm["xlstm"], charlm["torch"])])
        ratio_line = next(line for line in lines if line.strip().startswith("xlstm/torch"))
        low, high = sorted(charlm["ratio"])
        assert f"[{low:.2f}–{high:.2f}]" in ratio_line


def test_charlm_isolated_times_each_side_in_a_fresh_process():
    lines: list[str] = []
    results = bench.run_benchmark("tiny", tasks="charlm", repeats=1, runs=1, isolated=True, write=lines.append)
    charlm = results["charlm"]
    assert charlm["isolated"] and len(charlm["xlstm"]) == 1 and charlm["xlstm"][0] > 0
    assert "each side in a fresh process of its own" in "\n".join(lines)
    if TORCH_REASON is None:
        assert charlm["ratio"] == pytest.approx([charlm["xlstm"][0] / charlm["torch"][0]])


def test_charlm_child_measures_xlstm_without_loading_torch():
    done = subprocess.run([sys.executable, "-m", "xlstm.bench_charlm", "xlstm", "--backend", "numpy", "--threads", "1",
                           "--repeats", "1", "--min-seconds", "0"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["side"] == "xlstm" and report["tokens_per_second"] > 0 and report["torch_loaded"] is False


def test_layer_runs_report_every_ratio_and_its_spread():
    results = bench.run_benchmark("tiny", tasks="layer", repeats=1, runs=2, write=None)
    [tiny] = results["shapes"]
    for step in ("forward", "training"):
        if TORCH_REASON is None:
            ratios = tiny[step]["ratio_runs"]
            assert len(ratios) == 2 and tiny[step]["ratio"] == pytest.approx(sum(ratios) / 2)
    if TORCH_REASON is None:
        assert bench.format_rows(tiny)[0].endswith("]")


def test_layer_norm_option_times_the_layer_norm_cell(monkeypatch):
    """`bench --layer-norm`: xlstm's side runs layer-norm cells, and the header says so and which kernels ran."""
    cells = []
    original = bench.xlstm.LSTMCell
    monkeypatch.setattr(bench.xlstm, "LSTMCell", lambda *a, **k: cells.append(k["layer_norm"]) or original(*a, **k))
    lines: list[str] = []
    results = bench.run_benchmark("tiny", tasks="layer", repeats=1, layer_norm=True, write=lines.append)
    assert results["layer_norm"] is True and cells == [True]
    assert "layer-norm cell against torch's plain LSTM" in lines[0]
    kernels = bench.get_backend(None).library.lstm_layer_norm_kernels()
    assert results["machine"]["fused_kernels"] == (None if kernels is None else kernels.DESCRIPTION)


def test_xlstm_task_reports_both_cells_against_the_reference(monkeypatch):
    from xlstm import bench_xlstm
    from xlstm_backends.nxai_reference import unavailable_reason

    monkeypatch.setattr(bench_xlstm, "SHAPE", (2, 3, 4, 8))
    monkeypatch.setattr(bench_xlstm, "NUM_HEADS", 2)
    lines: list[str] = []
    results = bench.run_benchmark("tiny", tasks="xlstm", repeats=1, runs=2, write=lines.append)
    text = "\n".join(lines)
    assert text == bench.format_table(results)
    cells = results["xlstm"]["cells"]
    assert set(cells) == {"slstm", "mlstm"} and all(len(cell["xlstm"]) == 2 for cell in cells.values())
    reason = unavailable_reason()
    for kind, figures in cells.items():
        rows = [line for line in lines if line.strip().startswith(kind)]
        assert [row.split()[1] for row in rows] == ["forward", "training"]
        if reason is None:
            ratios = [a["training_ms"] / b["training_ms"] for a, b in zip(figures["xlstm"], figures["reference"])]
            assert f"[{min(ratios):.2f}–{max(ratios):.2f}]" in rows[1]
        else:
            assert figures["reference"] is None and "not measured" in rows[0]
