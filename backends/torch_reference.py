"""PyTorch's own LSTM (`torch.nn.LSTM`: oneDNN on a CPU, cuDNN on a GPU) timed as the reference
for `python -m xlstm bench`, plus the one timing rule both sides of the benchmark use.

Everything here returns plain Python numbers (milliseconds, thread counts, strings), so
`xlstm/bench.py` never touches a torch object. torch is imported only inside the functions:
importing this module costs nothing when torch is not installed, and the functions say so
(`None` plus the reason) instead of failing.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

from xlstm_backends.torch_backend import TorchLibrary

MIN_REPEATS = 3  # the fewest timed runs the adaptive rule takes
MAX_REPEATS = 100_000  # a guard for very fast calls
MAX_WARMUP = 100


@dataclass(frozen=True)
class Timing:
    """The median of the timed runs of one call, in milliseconds, and how many runs it took."""

    median_ms: float
    repeats: int


def median_ms(
    run: Callable[[], Any],
    synchronize: Callable[[], None],
    repeats: int | None = None,
    min_seconds: float = 0.5,
    warmup: int = 1,
) -> Timing:
    """Time `run()` to the end of its device work (`synchronize()` before each clock stops).

    Untimed warm-up runs first: at least `warmup` of them, and more (up to MAX_WARMUP) until
    they add up to a tenth of `min_seconds`, so caches, allocators and oneDNN's primitives
    are settled. Then `repeats` timed runs, or, when `repeats` is None, as many as it takes
    for the timed runs to add up to `min_seconds` but at least MIN_REPEATS.
    """
    warmed, started = 0, time.perf_counter()
    while warmed < warmup or (warmed < MAX_WARMUP and time.perf_counter() - started < 0.1 * min_seconds):
        run()
        synchronize()
        warmed += 1
    samples: list[float] = []
    while True:
        start = time.perf_counter()
        run()
        synchronize()
        samples.append(time.perf_counter() - start)
        if repeats is not None:
            if len(samples) >= repeats:
                break
        elif len(samples) >= MIN_REPEATS and (sum(samples) >= min_seconds or len(samples) >= MAX_REPEATS):
            break
    return Timing(median_ms=1e3 * statistics.median(samples), repeats=len(samples))


def unavailable_reason() -> str | None:
    """None when torch can be imported here, otherwise one line saying why not."""
    return TorchLibrary().unavailable_reason()


def reference_device(backend_name: str, device: Any) -> str:
    """The torch device that matches a backend's device: CUDA for a GPU backend, else 'cpu'."""
    if backend_name == "torch":
        return str(device)
    if backend_name == "cupy":
        return f"cuda:{int(getattr(device, 'id', 0))}"
    return "cpu"


def module_description(device: str) -> str:
    """What the reference runs: torch.nn.LSTM, and on a CUDA device the cuDNN version behind it."""
    description = "torch.nn.LSTM(batch_first=True)"
    if unavailable_reason() is None and device.startswith("cuda"):
        import torch

        if torch.backends.cudnn.is_available() and torch.backends.cudnn.enabled:
            return f"{description} with cuDNN {torch.backends.cudnn.version()}"
        return f"{description} without cuDNN"
    return description


def accelerator_name(backend_name: str, device: Any) -> str | None:
    """The GPU's name when the backend runs on one (cupy, or torch on CUDA), else None."""
    try:
        if backend_name == "cupy":
            import cupy

            name = cupy.cuda.runtime.getDeviceProperties(int(device.id))["name"]
            return name.decode() if isinstance(name, bytes) else str(name)
        if backend_name == "torch" and getattr(device, "type", None) == "cuda":
            import torch

            return torch.cuda.get_device_name(device)
    except Exception as error:  # a description only: never fail the benchmark over it
        return f"unknown GPU ({error})"
    return None


def get_threads() -> int | None:
    """torch's intra-op thread count, or None without torch."""
    if unavailable_reason() is not None:
        return None
    import torch

    return torch.get_num_threads()


def set_threads(count: int) -> int | None:
    """Set torch's intra-op thread count; return the previous one (None without torch)."""
    if unavailable_reason() is not None:
        return None
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    return previous


def time_torch_lstm(
    batch: int,
    steps: int,
    input_size: int,
    hidden: int,
    *,
    device: str = "cpu",
    threads: int | None = None,
    repeats: int | None = None,
    min_seconds: float = 0.5,
    warmup: int = 1,
    seed: int = 0,
) -> tuple[dict[str, Any] | None, str | None]:
    """Time `torch.nn.LSTM(input_size, hidden, batch_first=True)` in float32 on `device`.

    Returns ({"forward_ms", "forward_repeats", "training_ms", "training_repeats",
    "threads", "device"}, None), or (None, reason) when torch cannot run it. The forward
    runs under `torch.no_grad()`; the training step is the forward plus `loss.backward()`
    for loss = ½Σ outputs² (every output), with the gradient of the inputs too (as
    xlstm's backward computes it). `threads` sets torch's thread count for the
    measurement only.
    """
    reason = unavailable_reason()
    if reason is not None:
        return None, reason
    import torch

    try:
        torch_device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        return None, f"torch cannot use device {device!r}: {error}"
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        return None, f"torch cannot find CUDA for device {device!r}"
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            lstm = torch.nn.LSTM(input_size, hidden, batch_first=True).to(device=torch_device, dtype=torch.float32)
        inputs = torch.randn(batch, steps, input_size, generator=generator, dtype=torch.float32).to(torch_device)
        training_inputs = inputs.clone().requires_grad_(True)

        def synchronize() -> None:
            if torch_device.type == "cuda":
                torch.cuda.synchronize(torch_device)

        def forward() -> None:
            with torch.no_grad():
                lstm(inputs)

        def training_step() -> None:
            lstm.zero_grad(set_to_none=True)
            training_inputs.grad = None
            outputs, _ = lstm(training_inputs)
            loss = 0.5 * (outputs * outputs).sum()
            loss.backward()

        forward_timing = median_ms(forward, synchronize, repeats, min_seconds, warmup)
        training_timing = median_ms(training_step, synchronize, repeats, min_seconds, warmup)
        used_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(previous_threads)
    return {
        "forward_ms": forward_timing.median_ms,
        "forward_repeats": forward_timing.repeats,
        "training_ms": training_timing.median_ms,
        "training_repeats": training_timing.repeats,
        "threads": used_threads,
        "device": str(torch_device),
    }, None


def lstm_outputs(state_dict: dict[str, Any], inputs: Any, device: str,
                 dtype: str) -> tuple[Any, str | None]:
    """Outputs [B, T, H] of a unidirectional `torch.nn.LSTM(batch_first=True)` holding
    `state_dict` (from `xlstm.convert.to_pytorch`) on `device` in `dtype`: (outputs, None), or
    (None, reason) when torch cannot run there. An oracle for `python -m xlstm selftest`."""
    reason = unavailable_reason()
    if reason is not None:
        return None, reason
    import torch

    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        return None, f"torch cannot find CUDA for device {device!r}"
    layers = sum(1 for name in state_dict if name.startswith("weight_ih_l"))
    hidden, input_size = state_dict["weight_hh_l0"].shape[1], state_dict["weight_ih_l0"].shape[1]
    torch_dtype = getattr(torch, dtype)
    lstm = torch.nn.LSTM(input_size, hidden, num_layers=layers, batch_first=True).to(device=device, dtype=torch_dtype)
    lstm.load_state_dict(state_dict)
    with torch.no_grad():
        outputs, _ = lstm(torch.as_tensor(inputs, dtype=torch_dtype, device=device))
    return outputs.cpu().numpy(), None


def charlm_training_step(
    vocab_size: int,
    embedding_size: int,
    hidden_size: int,
    batch: int,
    window: int,
    *,
    learning_rate: float,
    clip_norm: float,
    threads: int | None = None,
    seed: int = 0,
) -> tuple[Callable[[], None] | None, str | None]:
    """One training step of the CharLM in PyTorch, as a callable, or (None, reason) without torch.

    The model of `python -m xlstm train`: `nn.Embedding` → one-layer `nn.LSTM` → `nn.Linear`,
    mean softmax cross-entropy over every position, `clip_grad_norm_`, `torch.optim.Adam`, on
    the CPU in float32, fed fixed random token ids. `threads` sets torch's thread count while
    the callable runs (each call sets it and puts the previous count back).
    """
    reason = unavailable_reason()
    if reason is not None:
        return None, reason
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        embedding = torch.nn.Embedding(vocab_size, embedding_size)
        lstm = torch.nn.LSTM(embedding_size, hidden_size, batch_first=True)
        dense = torch.nn.Linear(hidden_size, vocab_size)
    parameters = [*embedding.parameters(), *lstm.parameters(), *dense.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (batch, window + 1), generator=generator)
    inputs, targets = ids[:, :-1], ids[:, 1:]

    def step() -> None:
        previous = torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            optimizer.zero_grad(set_to_none=True)
            outputs, _ = lstm(embedding(inputs))
            logits = dense(outputs)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab_size), targets.reshape(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, clip_norm)
            optimizer.step()
            loss.item()  # the training loop reads the loss every step, as xlstm's does
        finally:
            torch.set_num_threads(previous)

    return step, None
