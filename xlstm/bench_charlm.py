"""`python -m xlstm bench --task charlm`: the main job, one training step of the default
`python -m xlstm train` model, in xlstm and in PyTorch, alternating in one process.

The model: embedding 32 → LSTM(192) → dense over the vocabulary (96), mean softmax
cross-entropy over every position, global-norm clipping at 5, Adam at 5e-3; batch 32,
window 64, float32, fixed random token ids. xlstm's step is written with the public API
(`CharLM.loss_and_grads`, `optim.clip_by_global_norm`, `optim.Adam`, `set_parameters`), as
`xlstm/training.py` runs it; PyTorch's is `nn.Embedding`, `nn.LSTM`, `nn.Linear`,
`cross_entropy`, `clip_grad_norm_`, `Adam` (backends/torch_reference.py). Each run times
both sides one after the other, so load from other processes falls on both; `runs` > 1
repeats that and reports the spread of the ratio.

In one process the two sides disturb each other: after its step PyTorch's OpenMP threads keep
spinning for a while and take CPU from xlstm's next step (measured: about a fifth of xlstm's
throughput on 2 cores). `isolated` therefore times each side in a fresh process of its own,
still alternating (`python -m xlstm.bench_charlm SIDE` is that child).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
from typing import Any, Callable

from xlstm import optim
from xlstm.models import CharLM
from xlstm_backends import get_backend, to_numpy, torch_reference
from xlstm_backends.row_threads import THREADS_VARIABLE
from xlstm_backends.torch_reference import median_ms

# The defaults of xlstm.training.TrainConfig, and a character vocabulary of its default corpus's size.
CHARLM = {"vocab_size": 96, "embedding_size": 32, "hidden_size": 192, "batch": 32, "window": 64,
          "learning_rate": 5e-3, "clip_norm": 5.0}


def xlstm_training_step(backend: Any, seed: int = 0) -> Callable[[], None]:
    """One training step of the CharLM on `backend` (float32), as `xlstm.training` takes it."""
    config = CHARLM
    model = CharLM(config["vocab_size"], embedding_size=config["embedding_size"],
                   hidden_size=config["hidden_size"], num_layers=1, seed=seed, backend=backend)
    optimizer = optim.Adam(learning_rate=config["learning_rate"])
    xp, shape = backend.xp, (config["batch"], config["window"] + 1)
    ids = xp.astype(xp.floor(backend.random(seed).uniform(shape, 0.0, config["vocab_size"], xp.float64)), xp.int64)
    inputs, targets = ids[:, :-1], ids[:, 1:]

    def step() -> None:
        loss, grads, _ = model.loss_and_grads(inputs, targets)
        grads, _ = optim.clip_by_global_norm(grads, config["clip_norm"])
        model.set_parameters(optimizer.step(model.parameters(), grads))
        float(to_numpy(loss))  # the training loop reads the loss every step

    return step


SIDES = ("xlstm", "torch")
TOKENS_PER_STEP = CHARLM["batch"] * CHARLM["window"]


def torch_training_step(threads: int) -> tuple[Callable[[], None] | None, str | None]:
    """PyTorch's training step of the same model, or (None, reason) without torch."""
    config = CHARLM
    return torch_reference.charlm_training_step(
        config["vocab_size"], config["embedding_size"], config["hidden_size"], config["batch"], config["window"],
        learning_rate=config["learning_rate"], clip_norm=config["clip_norm"], threads=threads)


def tokens_per_second(step: Callable[[], None], synchronize: Callable[[], None], repeats: int | None,
                      min_seconds: float) -> float:
    """Throughput of one side: tokens of a step over the median time of a step."""
    gc.collect()
    return TOKENS_PER_STEP / (1e-3 * median_ms(step, synchronize, repeats, min_seconds).median_ms)


def measure_charlm(backend: Any, threads: int, runs: int, repeats: int | None,
                   min_seconds: float, isolated: bool = False, device: Any = None) -> dict[str, Any]:
    """Tokens per second of xlstm's and PyTorch's training step, `runs` alternating runs, in this
    process or (`isolated`) each side in a fresh process of its own every run, which gets
    `backend`'s name and the user's `device` spec (None: the backend's default).

    Returns {"tokens_per_step", "isolated", "paths" (which code runs each part of xlstm's step),
    "xlstm": [tokens/s per run], "torch": [...] or None,
    "ratio": [xlstm/torch throughput per run] or None, "torch_reason"}.
    """
    reason = torch_reference.unavailable_reason()
    if isolated:
        def mine() -> float:
            return _measure_in_child("xlstm", backend.name, device, threads, repeats, min_seconds)

        def theirs() -> float:
            return _measure_in_child("torch", backend.name, device, threads, repeats, min_seconds)
    else:
        xlstm_step = xlstm_training_step(backend)
        torch_step, reason = torch_training_step(threads)

        def mine() -> float:
            return tokens_per_second(xlstm_step, backend.synchronize, repeats, min_seconds)

        def theirs() -> float:
            return tokens_per_second(torch_step, lambda: None, repeats, min_seconds)
    with_torch = reason is None
    result: dict[str, Any] = {"tokens_per_step": TOKENS_PER_STEP, "isolated": isolated,
                              "paths": backend.library.kernel_paths(), "xlstm": [],
                              "torch": [] if with_torch else None, "ratio": [] if with_torch else None,
                              "torch_reason": reason}
    for _ in range(runs):
        rate = mine()
        result["xlstm"].append(rate)
        if with_torch:
            reference = theirs()
            result["torch"].append(reference)
            result["ratio"].append(rate / reference)
    return result


def _measure_in_child(side: str, backend_name: str, device: Any, threads: int, repeats: int | None,
                      min_seconds: float) -> float:
    """Run `python -m xlstm.bench_charlm SIDE` in a fresh process; its tokens/s."""
    command = [sys.executable, "-m", "xlstm.bench_charlm", side, "--backend", backend_name,
               "--threads", str(threads), "--min-seconds", repr(min_seconds)]
    if repeats is not None:
        command += ["--repeats", str(repeats)]
    if device is not None:
        command += ["--device", str(device)]
    done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ))
    if done.returncode != 0:
        raise RuntimeError(f"the isolated {side} measurement failed (exit {done.returncode}): "
                           f"{done.stderr.strip()[-2000:]}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["tokens_per_second"])


def spread(values: list[float] | None) -> dict[str, float] | None:
    """Median, smallest and largest of `values` (None stays None)."""
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def format_charlm(result: dict[str, Any]) -> list[str]:
    """The main job's lines: tokens/s of each side and their ratio, with the spread over runs."""
    config = CHARLM
    runs = len(result["xlstm"])
    over = f" (median of {runs} alternating runs, [min–max])" if runs > 1 else ""
    where = "each side in a fresh process of its own" if result["isolated"] else "both sides in this process"
    lines = [f"main job: one training step of the CharLM (embedding {config['embedding_size']} → "
             f"LSTM({config['hidden_size']}) → dense {config['vocab_size']}, softmax cross-entropy, clip "
             f"{config['clip_norm']:g}, Adam {config['learning_rate']:g}; batch {config['batch']}, "
             f"window {config['window']}), float32, {where}{over}",
             "  paths            " + "; ".join(f"{part}: {path}" for part, path in result["paths"].items()
                                             if part != "layer-norm LSTM")]

    def figure(name: str, values: list[float] | None, unit: str, digits: str) -> str:
        if values is None:
            return f"  {name:<17}—  (not measured: {result['torch_reason']})"
        middle = spread(values)
        text = f"  {name:<17}{middle['median']:{digits}}{unit}"
        return text + (f"  [{middle['min']:{digits}}–{middle['max']:{digits}}]" if runs > 1 else "")

    lines.append(figure("xlstm", result["xlstm"], " tokens/s", ",.0f"))
    lines.append(figure("torch", result["torch"], " tokens/s", ",.0f"))
    lines.append(figure("xlstm/torch", result["ratio"], "× torch's throughput (above 1: xlstm is faster)", ".2f"))
    return lines


def main(argv: list[str] | None = None) -> int:
    """The child of an isolated run: time one side alone and print {"tokens_per_second": …} as JSON."""
    parser = argparse.ArgumentParser(prog="python -m xlstm.bench_charlm",
                                     description="time one side of the main job alone in this process")
    parser.add_argument("side", choices=SIDES)
    parser.add_argument("--backend", default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--min-seconds", type=float, required=True)
    args = parser.parse_args(argv)
    os.environ[THREADS_VARIABLE] = str(args.threads)
    if args.side == "xlstm":
        backend = get_backend(args.backend, args.device)
        rate = tokens_per_second(xlstm_training_step(backend), backend.synchronize, args.repeats, args.min_seconds)
    else:
        step, reason = torch_training_step(args.threads)
        if step is None:
            parser.error(f"torch is not available: {reason}")
        rate = tokens_per_second(step, lambda: None, args.repeats, args.min_seconds)
    print(json.dumps({"side": args.side, "tokens_per_second": rate, "torch_loaded": "torch" in sys.modules}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
