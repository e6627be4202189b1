"""The baseline of `bench --task xlstm`: NX-AI's pure-PyTorch sLSTM and mLSTM code on the same CPU.

The timed reference runs what our cells run, with the reference's own core functions: one
matmul for the input projection (our weight layout), then sLSTM's `slstm_forward` with the
"slstm" pointwise function, or mLSTM's `parallel_stabilized_simple` and the output gate. The
training step adds `loss.backward()` for loss = ½Σ outputs² (PyTorch's autograd through their code).
"""
from __future__ import annotations

from typing import Any

from xlstm_backends.nxai_reference import reference_module, unavailable_reason
from xlstm_backends.torch_reference import median_ms


def time_reference_cell(kind: str, batch: int, steps: int, input_size: int, hidden: int, num_heads: int, *,
                        repeats: int | None = None, min_seconds: float = 0.5,
                        seed: int = 0) -> tuple[dict[str, Any] | None, str | None]:
    """({"forward_ms", "training_ms", "threads"}, None) for the reference's `kind` ("slstm" or "mlstm")
    cell in float32 on the CPU, or (None, why not)."""
    reason = unavailable_reason()
    if reason is not None:
        return None, reason
    import torch

    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, steps, input_size, generator=generator)
    run, parameters = (_slstm if kind == "slstm" else _mlstm)(x, hidden, num_heads, generator)

    def forward() -> None:
        with torch.no_grad():
            run()

    def training_step() -> None:
        for p in parameters:
            p.grad = None
        outputs = run()
        (0.5 * (outputs * outputs).sum()).backward()

    forward_timing = median_ms(forward, lambda: None, repeats, min_seconds)
    training_timing = median_ms(training_step, lambda: None, repeats, min_seconds)
    return {"forward_ms": forward_timing.median_ms, "training_ms": training_timing.median_ms,
            "threads": torch.get_num_threads()}, None


def _slstm(x: Any, hidden: int, num_heads: int, generator: Any) -> tuple[Any, list]:
    """The reference sLSTM over x [B, T, I] (a call giving outputs [T, B, H]) and what it differentiates."""
    import torch

    vanilla = reference_module("blocks.slstm.src.vanilla")
    head = hidden // num_heads
    scale = x.shape[-1] ** -0.5
    w = (torch.randn(4 * hidden, x.shape[-1], generator=generator) * scale).requires_grad_(True)
    r = (torch.randn(num_heads, 4 * head, head, generator=generator) * head ** -0.5).requires_grad_(True)
    b = torch.zeros(4 * hidden, requires_grad=True)
    states = torch.zeros(4, x.shape[0], hidden)
    time_major = x.transpose(0, 1).contiguous().requires_grad_(True)
    pointwise = vanilla.slstm_pointwise_function_registry["slstm"]

    def run() -> Any:
        all_states, _, _ = vanilla.slstm_forward(time_major @ w.T, states, r, b, pointwise)
        return all_states[0, 1:]

    return run, [w, r, b, time_major]


def _mlstm(x: Any, hidden: int, num_heads: int, generator: Any) -> tuple[Any, list]:
    """The reference mLSTM (parallel form, a sigmoid output gate) over x [B, T, I] (a call giving outputs
    [B, T, H]) and what it differentiates."""
    import torch

    backends = reference_module("blocks.mlstm.backends")
    batch, steps, _ = x.shape
    head = hidden // num_heads
    rows = 4 * hidden + 2 * num_heads  # q, k, v, i, f, o
    w = (torch.randn(rows, x.shape[-1], generator=generator) * x.shape[-1] ** -0.5).requires_grad_(True)
    b = torch.zeros(rows, requires_grad=True)
    inputs = x.clone().requires_grad_(True)

    def heads(z: Any, size: int) -> Any:  # [B, T, NH·size] → [B, NH, T, size]
        return z.reshape(batch, steps, num_heads, size).transpose(1, 2)

    def run() -> Any:
        z = inputs @ w.T + b
        q, k, v, gates, o = torch.split(z, [hidden, hidden, hidden, 2 * num_heads, hidden], dim=-1)
        h = backends.parallel_stabilized_simple(heads(q, head), heads(k, head), heads(v, head),
                                                heads(gates[..., :num_heads], 1), heads(gates[..., num_heads:], 1))
        return torch.sigmoid(o) * h.transpose(1, 2).reshape(batch, steps, hidden)

    return run, [w, b, inputs]
