"""The GPU side of the benchmark's PyTorch reference, as far as a CPU-only torch shows it."""
from __future__ import annotations

import pytest

from xlstm_backends import torch_reference

torch = pytest.importorskip("torch")


def test_reference_names_cudnn_on_cuda_only():
    assert torch_reference.module_description("cpu") == "torch.nn.LSTM(batch_first=True)"
    on_cuda = torch_reference.module_description("cuda:0")
    if torch.backends.cudnn.is_available():
        assert f"cuDNN {torch.backends.cudnn.version()}" in on_cuda
    else:
        assert on_cuda.endswith("without cuDNN")


def test_cupy_bench_times_torch_on_the_same_gpu():
    class Device:
        id = 1

    assert torch_reference.reference_device("cupy", Device()) == "cuda:1"
    if not torch.cuda.is_available():
        result, reason = torch_reference.time_torch_lstm(1, 2, 3, 4, device="cuda:1")
        assert result is None and "CUDA" in reason
