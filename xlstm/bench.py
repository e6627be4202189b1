"""`python -m xlstm bench`: xlstm's LSTM against PyTorch's `torch.nn.LSTM`, side by side (and, with
`--task xlstm`, the sLSTM and mLSTM cells against NX-AI's PyTorch code: xlstm/bench_xlstm.py).

For each shape (batch, steps, input, hidden) in float32 it times, in one process and on
the same thread count: xlstm's forward (`xlstm.dynamic_rnn`) and training step
(`xlstm.dynamic_rnn_vjp` plus its backward for loss = ½Σ outputs², so d_outputs = outputs),
and the same two for `torch.nn.LSTM` when torch is installed (backends/torch_reference.py).
Each figure is the median of the timed runs after warm-up runs. It also measures the
backend's own throughput on a 1024×1024 @ 1024×1024 float32 matmul, the yardstick for the
"% of matmul" columns. FLOPs: forward 8·T·B·H·(I+H) (the two gate matmuls), training 3×
that (forward, and the backward's two matmuls per weight product).
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any, Callable

import xlstm
from xlstm import bench_charlm, bench_xlstm
from xlstm_backends import get_backend, torch_reference
from xlstm_backends.row_threads import THREADS_VARIABLE
from xlstm_backends.storage import write_atomically
from xlstm_backends.torch_reference import median_ms

# name: (batch, steps, input size, hidden size)
SHAPES: dict[str, tuple[int, int, int, int]] = {
    "tiny": (1, 100, 10, 5),  # the article's size: per-step overhead dominates
    "medium": (32, 100, 128, 256),
    "large": (128, 50, 512, 512),
}
DEFAULT_SHAPES = "tiny,medium,large"
TASKS = {"layer": "the LSTM layer alone at every --shapes shape, against torch.nn.LSTM",
         "charlm": "the main job: one training step of the default `train` model, against the same model in PyTorch",
         "xlstm": "the sLSTM and mLSTM cells at the default `train` layer's shape, against NX-AI's PyTorch code"}
DEFAULT_TASKS = "layer,charlm"
MATMUL_SIZE = 1024
MIN_SECONDS = 0.5  # the adaptive rule: timed runs of each case add up to at least this
PASSES = ("forward", "training")


# ---------------------------------------------------------------- arguments


def parse_shapes(text: str) -> list[str]:
    """'tiny,medium' -> ['tiny', 'medium']; unknown or missing names are a ValueError."""
    names = [part.strip() for part in str(text).split(",") if part.strip()]
    if not names:
        raise ValueError(f"--shapes must name at least one of {_known_shapes()}, got {text!r}")
    unknown = [name for name in names if name not in SHAPES]
    if unknown:
        raise ValueError(f"unknown shape {unknown[0]!r} in --shapes; known shapes: {_known_shapes()}")
    return list(dict.fromkeys(names))  # in the order given, each once


def parse_tasks(text: str) -> list[str]:
    """'layer,charlm' -> ['layer', 'charlm']; unknown or missing names are a ValueError."""
    names = [part.strip() for part in str(text).split(",") if part.strip()]
    unknown = [name for name in names if name not in TASKS]
    if not names or unknown:
        raise ValueError(f"--task must name one or more of {', '.join(TASKS)}, got {text!r}")
    return list(dict.fromkeys(names))


def _known_shapes() -> str:
    return ", ".join(f"{name} ({_shape_text(shape)})" for name, shape in SHAPES.items())


def _positive_or_none(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


# ---------------------------------------------------------------- measuring


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as file:
            for line in file:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Processor", "cpu model") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _version(module: str) -> str | None:
    """The installed version of the distribution that provides `module`, or None."""
    distributions = importlib.metadata.packages_distributions().get(module, [module])
    for distribution in distributions:
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _blas_threads_note() -> str:
    settings = [f"{name}={os.environ[name]}" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                          "MKL_NUM_THREADS") if name in os.environ]
    return "as configured (" + (", ".join(settings) if settings else "library default") + ")"


def machine_description(backend: Any, threads: int, reference_device: str, layer_norm: bool = False) -> dict[str, Any]:
    """What the figures were measured on: CPU, threads, versions, backend and device."""
    versions = {"python": platform.python_version(), "xlstm": xlstm.__version__}
    for module in ("numpy", "array_api_compat", "torch", backend.name):
        if module != "xlstm" and module not in versions:
            versions[module] = _version(module)
    return {
        "cpu": cpu_model(),
        "cpus": usable_cpus(),
        "os_cpu_count": os.cpu_count(),
        "platform": platform.platform(terse=True),
        "gpu": torch_reference.accelerator_name(backend.name, backend.device),
        "threads": {"torch": threads, "xlstm": threads, "blas": _blas_threads_note()},
        "versions": versions,
        "backend": backend.name,
        "device": str(backend.device),
        "fused_kernels": _kernels_description(backend, layer_norm),
        "reference_device": reference_device,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _kernels_description(backend: Any, layer_norm: bool = False) -> str | None:
    """Which fused LSTM kernels the backend runs for the cell (None: the generic array-API code)."""
    kernels = backend.library.lstm_layer_norm_kernels() if layer_norm else backend.library.lstm_kernels()
    return None if kernels is None else getattr(kernels, "DESCRIPTION", "the backend's fused LSTM kernels")


def measure_matmul(backend: Any, repeats: int | None, min_seconds: float) -> dict[str, Any]:
    """Median time and GFLOP/s of one 1024×1024 @ 1024×1024 float32 product on `backend`."""
    xp, dtype, n = backend.xp, backend.resolve_dtype("float32"), MATMUL_SIZE
    stream = backend.random(1)
    a, b = stream.normal((n, n), dtype), stream.normal((n, n), dtype)
    timing = median_ms(lambda: xp.matmul(a, b), backend.synchronize, repeats, min_seconds)
    return {"size": n, "ms": timing.median_ms, "gflops": _gflops(2 * n ** 3, timing.median_ms),
            "repeats": timing.repeats}


def measure_xlstm(backend: Any, shape: tuple[int, int, int, int], repeats: int | None,
                  min_seconds: float, layer_norm: bool = False) -> dict[str, dict[str, Any]]:
    """Forward and training-step medians (ms) of xlstm's LSTM on `backend`, public API only."""
    batch, steps, input_size, hidden = shape
    dtype = backend.resolve_dtype("float32")
    cell = xlstm.LSTMCell(hidden, input_size, layer_norm=layer_norm, seed=0, dtype=dtype, backend=backend)
    forward_timing, training_timing = bench_xlstm.time_cell(
        cell, backend.random(0).normal((batch, steps, input_size), dtype), backend, repeats, min_seconds)
    return {"forward": {"ms": forward_timing.median_ms, "repeats": forward_timing.repeats},
            "training": {"ms": training_timing.median_ms, "repeats": training_timing.repeats}}


def forward_flop(shape: tuple[int, int, int, int]) -> int:
    """8·T·B·H·(I+H): the input and recurrent matmuls of all four gates, multiply-adds as 2."""
    batch, steps, input_size, hidden = shape
    return 8 * steps * batch * hidden * (input_size + hidden)


def _gflops(flop: float, ms: float) -> float:
    return flop / (ms * 1e-3) / 1e9


def _figures(flop: int, ms: float, repeats: int, matmul_gflops: float) -> dict[str, Any]:
    gflops = _gflops(flop, ms)
    return {"ms": ms, "gflops": gflops, "percent_of_matmul": 100.0 * gflops / matmul_gflops, "repeats": repeats}


def run_benchmark(
    shapes: list[str] | tuple[str, ...] | str = DEFAULT_SHAPES,
    *,
    tasks: list[str] | tuple[str, ...] | str = DEFAULT_TASKS,
    backend: Any = None,
    device: Any = None,
    repeats: int | None = None,
    runs: int = 1,
    threads: int | None = None,
    min_seconds: float = MIN_SECONDS,
    layer_norm: bool = False,
    isolated: bool = False,
    write: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Measure every task (the LSTM layer at every shape, the main job); print the report
    through `write` as it goes (None: silent).

    Returns every figure as a JSON-able dict (what `--json` writes). `repeats` None means
    adaptive (timed runs of each case add up to `min_seconds`, at least 3 of them);
    `runs` > 1 measures xlstm and torch that many times, alternating, and reports the
    spread of each ratio; `threads` None means one torch thread per usable CPU, and xlstm's
    kernels get as many (XLSTM_THREADS, for the run's duration). NumPy's BLAS threads are left
    as they are. `layer_norm` times xlstm's layer-norm cell in the layer task (torch.nn.LSTM has
    no layer norm: the ratio is then against its plain LSTM). `isolated` times each side of the
    main job in a fresh process of its own (in one process PyTorch's idle OpenMP threads slow
    xlstm's step down; bench_charlm).
    """
    names = parse_shapes(shapes) if isinstance(shapes, str) else parse_shapes(",".join(shapes))
    tasks = parse_tasks(tasks) if isinstance(tasks, str) else parse_tasks(",".join(tasks))
    repeats = _positive_or_none("repeats", repeats)
    runs = _positive_or_none("runs", runs)
    threads = _positive_or_none("threads", threads)
    if not isinstance(min_seconds, (int, float)) or isinstance(min_seconds, bool) or min_seconds < 0:
        raise ValueError(f"min_seconds must be a non-negative number, got {min_seconds!r}")
    bench_backend = get_backend(backend, device)
    threads = usable_cpus() if threads is None else threads
    reference_device = torch_reference.reference_device(bench_backend.name, bench_backend.device)
    torch_reason = torch_reference.unavailable_reason()
    emit = write if write is not None else (lambda _line: None)

    previous_threads = torch_reference.set_threads(threads)  # the xlstm torch backend runs on them too
    previous_kernel_threads = os.environ.get(THREADS_VARIABLE)
    os.environ[THREADS_VARIABLE] = str(threads)  # xlstm's kernels: one row block per torch thread at most
    try:
        results: dict[str, Any] = {
            "machine": machine_description(bench_backend, threads, reference_device, layer_norm),
            "dtype": "float32",
            "layer_norm": layer_norm,
            "tasks": tasks,
            "timing": {"warmup_runs": 1, "warmup_seconds": 0.1 * min_seconds, "runs": runs,
                       "repeats": repeats if repeats is not None else "adaptive", "min_seconds": min_seconds},
            "torch_reference": {"available": torch_reason is None, "reason": torch_reason,
                                "module": torch_reference.module_description(reference_device), "device": reference_device},
        }
        for line in format_header(results):
            emit(line)
        if "layer" in tasks:
            results["matmul"] = measure_matmul(bench_backend, repeats, min_seconds)
            emit(format_matmul(results))
            emit("")
            for line in table_heading():
                emit(line)
            results["shapes"] = []
            for name in names:
                entry = _measure_shape(results, name, bench_backend, reference_device, threads, runs, repeats,
                                       min_seconds, layer_norm)
                results["shapes"].append(entry)
                for line in format_rows(entry):
                    emit(line)
            for line in format_footer(results):
                emit(line)
        if "charlm" in tasks:
            results["charlm"] = bench_charlm.measure_charlm(bench_backend, threads, runs, repeats, min_seconds,
                                                           isolated, device)
            emit("")
            for line in bench_charlm.format_charlm(results["charlm"]):
                emit(line)
        if "xlstm" in tasks:
            results["xlstm"] = bench_xlstm.measure_cells(bench_backend, runs, repeats, min_seconds)
            emit("")
            for line in bench_xlstm.format_cells(results["xlstm"]):
                emit(line)
    finally:
        if previous_threads is not None:
            torch_reference.set_threads(previous_threads)
        if previous_kernel_threads is None:
            os.environ.pop(THREADS_VARIABLE, None)
        else:
            os.environ[THREADS_VARIABLE] = previous_kernel_threads
    return results


def _measure_shape(results: dict[str, Any], name: str, backend: Any, reference_device: str, threads: int,
                   runs: int, repeats: int | None, min_seconds: float, layer_norm: bool) -> dict[str, Any]:
    """One shape's entry: `runs` alternating measurements of xlstm and torch."""
    shape, reference_info = SHAPES[name], results["torch_reference"]
    pairs = []
    for _ in range(runs):
        measured = measure_xlstm(backend, shape, repeats, min_seconds, layer_norm)
        reference, reason = (None, reference_info["reason"]) if reference_info["reason"] else \
            torch_reference.time_torch_lstm(*shape, device=reference_device, threads=threads, repeats=repeats,
                                            min_seconds=min_seconds)
        if reference is None and reference_info["reason"] is None:
            reference_info.update(available=False, reason=reason)
        pairs.append((measured, reference))
    return _shape_entry(name, shape, pairs, results["matmul"]["gflops"])


def _shape_entry(name: str, shape: tuple[int, int, int, int], pairs: list[tuple[dict, dict | None]],
                 matmul_gflops: float) -> dict[str, Any]:
    """The figures of one shape from its runs: medians of the times, each run's ratio and their median."""
    batch, steps, input_size, hidden = shape
    entry: dict[str, Any] = {"name": name, "batch": batch, "steps": steps, "input_size": input_size,
                             "hidden_size": hidden}
    measured_all = any(reference is not None for _, reference in pairs)
    for step in PASSES:
        flop = forward_flop(shape) * (1 if step == "forward" else 3)
        mine_ms = [measured[step]["ms"] for measured, _ in pairs]
        mine = _figures(flop, statistics.median(mine_ms), pairs[0][0][step]["repeats"], matmul_gflops)
        theirs, ratios = None, None
        if measured_all and all(reference is not None for _, reference in pairs):
            theirs_ms = [reference[f"{step}_ms"] for _, reference in pairs]
            theirs = _figures(flop, statistics.median(theirs_ms), pairs[0][1][f"{step}_repeats"], matmul_gflops)
            ratios = [a / b for a, b in zip(mine_ms, theirs_ms)]
        entry[step] = {"flop": flop, "xlstm": mine, "torch": theirs,
                       "ratio": None if ratios is None else statistics.median(ratios), "ratio_runs": ratios}
    return entry


# ---------------------------------------------------------------- printing

COLUMNS = (  # (title, width); every cell is right-aligned except the first three
    ("shape", 7), ("B×T×I×H", 16), ("step", 9),
    ("xlstm ms", 9), ("GFLOP/s", 8), ("% matmul", 8),
    ("torch ms", 9), ("GFLOP/s", 8), ("% matmul", 8),
    ("xlstm/torch", 11),
)


def _shape_text(shape: tuple[int, ...]) -> str:
    return "×".join(str(size) for size in shape)


def _number(value: float | None) -> str:
    """About three significant figures, no exponent: 0.0012, 0.281, 2.01, 25.3, 230, 1,204."""
    if value is None:
        return "—"
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    if value >= 0.1:
        return f"{value:.3f}"
    return f"{value:.2g}" if value > 0 else "0"


def _row(cells: list[str]) -> str:
    parts = []
    for index, (cell, (_, width)) in enumerate(zip(cells, COLUMNS)):
        parts.append(f"{cell:<{width}}" if index < 3 else f"{cell:>{width}}")
    return "  ".join(parts).rstrip()


def table_heading() -> list[str]:
    """The column titles and a rule under them."""
    return [_row([title for title, _ in COLUMNS]), _row(["-" * width for _, width in COLUMNS])]


def format_rows(entry: dict[str, Any]) -> list[str]:
    """The two table rows (forward, training) of one measured shape."""
    shape = (entry["batch"], entry["steps"], entry["input_size"], entry["hidden_size"])
    lines = []
    for index, step in enumerate(PASSES):
        figures, mine, theirs = entry[step], entry[step]["xlstm"], entry[step]["torch"]
        lines.append(_row([
            entry["name"] if index == 0 else "", _shape_text(shape) if index == 0 else "", step,
            _number(mine["ms"]), _number(mine["gflops"]), _number(mine["percent_of_matmul"]),
            _number(theirs and theirs["ms"]), _number(theirs and theirs["gflops"]),
            _number(theirs and theirs["percent_of_matmul"]), _number(figures["ratio"]),
        ]) + _spread_text(figures["ratio_runs"]))
    return lines


def _spread_text(ratios: list[float] | None) -> str:
    """'  [min–max]' of the ratios of several runs; nothing for one run."""
    if not ratios or len(ratios) < 2:
        return ""
    return f"  [{_number(min(ratios))}–{_number(max(ratios))}]"


def format_header(results: dict[str, Any]) -> list[str]:
    """What was measured and on what: printed before the measurements start."""
    machine = results["machine"]
    versions = " · ".join(f"{name} {version}" for name, version in machine["versions"].items()
                          if version is not None)
    cpus = f"{machine['cpus']} CPUs" + ("" if machine["cpus"] == machine["os_cpu_count"]
                                        else f" usable of {machine['os_cpu_count']}")
    reference = results["torch_reference"]
    torch_line = (f"{reference['module']} on {reference['device']}" if reference["available"]
                  else f"not measured: {reference['reason']}")
    kernels = machine["fused_kernels"] or "the generic array-API code"
    timing = results["timing"]
    runs = (f"{timing['repeats']} timed run(s)" if timing["repeats"] != "adaptive"
            else f"adaptive repeats (≥ 3 timed runs adding up to ≥ {timing['min_seconds']:g} s per case)")
    lines = [
        "xlstm bench: LSTM forward and training step (forward + backward, loss ½Σ outputs²), "
        f"{results['dtype']}"
        + ("; xlstm's layer-norm cell against torch's plain LSTM" if results.get("layer_norm") else ""),
        f"machine   {machine['cpu']}, {cpus}, {machine['platform']}"
        + (f", GPU {machine['gpu']}" if machine["gpu"] else ""),
        f"threads   torch {machine['threads']['torch']}; xlstm's kernels up to {machine['threads']['xlstm']} "
        f"({THREADS_VARIABLE}); numpy BLAS {machine['threads']['blas']}",
        f"versions  {versions}",
        f"backend   {machine['backend']} on {machine['device']}, {kernels}",
        f"reference {torch_line}",
        f"timing    median of the timed runs after warm-up (≥ {timing['warmup_runs']} run, "
        f"≥ {timing['warmup_seconds']:g} s); {runs}"
        + (f"; xlstm and torch measured {timing['runs']} times, alternating: medians, ratios [min–max]"
           if timing["runs"] > 1 else ""),
    ]
    return lines


def format_matmul(results: dict[str, Any]) -> str:
    matmul, machine = results["matmul"], results["machine"]
    n = matmul["size"]
    return (f"matmul    {n}×{n} @ {n}×{n} float32 on {machine['backend']}: {_number(matmul['ms'])} ms = "
            f"{_number(matmul['gflops'])} GFLOP/s (median of {matmul['repeats']}), the 100 of '% matmul'")


def format_footer(results: dict[str, Any]) -> list[str]:
    return ["",
            "FLOPs: forward 8·T·B·H·(I+H), training step 3× that; GFLOP/s = FLOPs / median time;",
            "% matmul = GFLOP/s as a share of the matmul's; xlstm/torch = ratio of times (below 1: xlstm is faster)."]


def format_table(results: dict[str, Any]) -> str:
    """The whole report of a finished run, as `run_benchmark` printed it."""
    lines = format_header(results)
    if "layer" in results["tasks"]:
        lines += [format_matmul(results), "", *table_heading()]
        for entry in results["shapes"]:
            lines.extend(format_rows(entry))
        lines += format_footer(results)
    if "charlm" in results["tasks"]:
        lines += ["", *bench_charlm.format_charlm(results["charlm"])]
    if "xlstm" in results["tasks"]:
        lines += ["", *bench_xlstm.format_cells(results["xlstm"])]
    return "\n".join(lines)


# ---------------------------------------------------------------- files and the command line


def write_json(path: str | os.PathLike, results: dict[str, Any]) -> None:
    """Write `results` as JSON, atomically (a crash leaves any previous file whole)."""
    text = json.dumps(results, indent=2, ensure_ascii=False) + "\n"
    write_atomically(path, lambda file: file.write(text.encode("utf-8")))


def _check_json_path(path: str | None) -> None:
    """Refuse an unwritable --json target before minutes of measuring, not after."""
    if path is None:
        return
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"--json {path!r} is a folder; give a file name")
    if not target.parent.is_dir():
        raise FileNotFoundError(f"--json {path!r}: folder {str(target.parent)!r} does not exist")


def run_bench_command(args: argparse.Namespace) -> int:
    """`python -m xlstm bench ...`: measure, print the table, write --json; exit code 0."""
    _check_json_path(args.json)
    results = run_benchmark(args.shapes, tasks=args.task, backend=args.backend, device=args.device,
                            repeats=args.repeats, runs=args.runs, threads=args.threads, layer_norm=args.layer_norm,
                            isolated=args.isolated)
    if args.json is not None:
        write_json(args.json, results)
        print(f"\nwrote {args.json}")
    sys.stdout.flush()
    return 0


def add_bench_parser(commands: Any) -> None:
    """Add the `bench` subcommand to an argparse subparsers object."""
    bench = commands.add_parser("bench", help="time xlstm's LSTM against torch.nn.LSTM (about a minute)",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    bench.add_argument("--backend", default=None, help="numpy (default), cupy, torch or array_api_strict")
    bench.add_argument("--device", default=None, help="device of that backend")
    bench.add_argument("--shapes", default=DEFAULT_SHAPES,
                       help="comma-separated, of: " + ", ".join(f"{name} (B×T×I×H {_shape_text(shape)})"
                                                                for name, shape in SHAPES.items()))
    bench.add_argument("--task", default=DEFAULT_TASKS,
                       help="comma-separated, of: " + "; ".join(f"{name} ({what})" for name, what in TASKS.items()))
    bench.add_argument("--runs", type=int, default=1,
                       help="measure xlstm and torch this many times, alternating, and print the spread "
                            "[min–max] of every ratio (the machine's load falls on both sides)")
    bench.add_argument("--repeats", type=int, default=None,
                       help=f"timed runs per case; None: adaptive, at least 3 adding up to {MIN_SECONDS:g} s")
    bench.add_argument("--threads", type=int, default=None,
                       help=f"torch threads, and xlstm's kernel threads ({THREADS_VARIABLE}); None: one per usable "
                            f"CPU (here {usable_cpus()}); numpy's BLAS threads are left as they are")
    bench.add_argument("--layer-norm", action="store_true",
                       help="time xlstm's layer-norm cell in the layer task (torch's side stays its plain LSTM)")
    bench.add_argument("--isolated", action="store_true",
                       help="time each side of the main job (--task charlm) in a fresh process of its own, "
                            "still alternating: in one process PyTorch's idle OpenMP threads take CPU from xlstm")
    bench.add_argument("--json", default=None, metavar="FILE", help="also write every figure to this JSON file")
    bench.set_defaults(run=run_bench_command)
