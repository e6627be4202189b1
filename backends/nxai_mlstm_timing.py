"""NX-AI's pure-PyTorch mLSTM (`parallel_stabilized_simple` + autograd) timed as the baseline of xlstm's MLSTMCell.

The same computation as `xlstm.MLSTMCell(output_gate=False)`: one linear projection of x to q, k, v and the
gate pre-activations (their cell derives the gates from q, k, v; the work is the same matmul size), then
their parallel form; the training step is the forward plus `backward()` of ½Σ h̃² to the weights and the
inputs. Returns plain numbers, like `torch_reference`; torch and the reference load only inside.
"""
from __future__ import annotations

from typing import Any

from xlstm_backends import nxai_reference
from xlstm_backends.torch_reference import median_ms


def time_reference_mlstm(batch: int, steps: int, input_size: int, units: int, heads: int, *,
                         threads: int | None = None, repeats: int | None = None, min_seconds: float = 0.5,
                         seed: int = 0, chunk_size: int | None = None) -> tuple[dict[str, Any] | None, str | None]:
    """({"forward_ms", "training_ms", "threads"}, None) for the reference in float32 on the CPU, or (None, why).
    With `chunk_size` (dividing steps) their `chunkwise_simple` runs instead of `parallel_stabilized_simple`."""
    reason = nxai_reference.unavailable_reason()
    if reason is not None:
        return None, reason
    import torch

    functions = nxai_reference.reference_module("blocks.mlstm.backends")
    if chunk_size is not None and (chunk_size < 1 or steps % chunk_size):
        return None, f"chunkwise_simple needs a chunk_size dividing steps {steps}, got {chunk_size}"
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        generator = torch.Generator().manual_seed(seed)
        projection = torch.nn.Linear(input_size, 3 * units + 2 * heads)
        with torch.no_grad():
            projection.weight.copy_(0.1 * torch.randn(projection.weight.shape, generator=generator))
        inputs = torch.randn(batch, steps, input_size, generator=generator).requires_grad_(True)
        mask = torch.tril(torch.ones(steps, steps, dtype=torch.bool))

        def h_tilde() -> Any:
            a = projection(inputs)
            q, k, v = (a[..., j * units:(j + 1) * units].reshape(batch, steps, heads, -1).transpose(1, 2)
                       for j in range(3))
            gates = a[..., 3 * units:].transpose(1, 2)[..., None]  # [B, 2NH, T, 1]
            if chunk_size is None:
                return functions.parallel_stabilized_simple(q, k, v, gates[:, :heads], gates[:, heads:], mask)
            return functions.chunkwise_simple(q, k, v, gates[:, :heads, :, 0], gates[:, heads:, :, 0],
                                              chunk_size=chunk_size)

        def forward() -> None:
            with torch.no_grad():
                h_tilde()

        def training_step() -> None:
            projection.zero_grad(set_to_none=True)
            inputs.grad = None
            h = h_tilde()
            (0.5 * (h * h).sum()).backward()

        forward_timing = median_ms(forward, lambda: None, repeats, min_seconds)
        training_timing = median_ms(training_step, lambda: None, repeats, min_seconds)
        used_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(previous_threads)
    return {"forward_ms": forward_timing.median_ms, "training_ms": training_timing.median_ms,
            "threads": used_threads}, None
