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
"""
from __future__ import annotations

import gc
import statistics
from typing import Any, Callable

from xlstm import optim
from xlstm.models import CharLM
from xlstm_backends import to_numpy, torch_reference
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


def measure_charlm(backend: Any, threads: int, runs: int, repeats: int | None,
                   min_seconds: float) -> dict[str, Any]:
    """Tokens per second of xlstm's and PyTorch's training step, `runs` alternating runs.

    Returns {"tokens_per_step", "xlstm": [tokens/s per run], "torch": [...] or None,
    "ratio": [xlstm/torch throughput per run] or None, "torch_reason"}.
    """
    config = CHARLM
    tokens = config["batch"] * config["window"]
    mine = xlstm_training_step(backend)
    theirs, reason = torch_reference.charlm_training_step(
        config["vocab_size"], config["embedding_size"], config["hidden_size"], config["batch"], config["window"],
        learning_rate=config["learning_rate"], clip_norm=config["clip_norm"], threads=threads)
    result: dict[str, Any] = {"tokens_per_step": tokens, "xlstm": [], "torch": None if theirs is None else [],
                              "ratio": None if theirs is None else [], "torch_reason": reason}
    for _ in range(runs):
        gc.collect()
        rate = tokens / (1e-3 * median_ms(mine, backend.synchronize, repeats, min_seconds).median_ms)
        result["xlstm"].append(rate)
        if theirs is not None:
            gc.collect()
            reference = tokens / (1e-3 * median_ms(theirs, lambda: None, repeats, min_seconds).median_ms)
            result["torch"].append(reference)
            result["ratio"].append(rate / reference)
    return result


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
    lines = [f"main job: one training step of the CharLM (embedding {config['embedding_size']} → "
             f"LSTM({config['hidden_size']}) → dense {config['vocab_size']}, softmax cross-entropy, clip "
             f"{config['clip_norm']:g}, Adam {config['learning_rate']:g}; batch {config['batch']}, "
             f"window {config['window']}), float32{over}"]

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
