"""PyTorch through array-api-compat: a second real library (and an oracle in the tests)."""
from __future__ import annotations

import sys
from typing import Any

import numpy

from xlstm_backends.library import Library


class TorchLibrary(Library):
    name = "torch"
    description = "PyTorch via array-api-compat ('cpu' or 'cuda:N')"

    def unavailable_reason(self) -> str | None:
        try:
            import torch  # noqa: F401
        except ImportError:
            return "torch is not installed (pip install 'xlstm-array[torch]')"
        return None

    def namespace(self) -> Any:
        import array_api_compat.torch

        return array_api_compat.torch

    def parse_device(self, spec: Any) -> Any:
        import torch

        try:
            device = torch.device("cpu" if spec is None else spec)
        except (RuntimeError, TypeError) as error:
            raise ValueError(f"device for backend 'torch' must be like 'cpu' or 'cuda:0', got {spec!r}") from error
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {spec!r} for backend 'torch' needs CUDA, which torch cannot find here")
        return device

    def owns(self, x: Any) -> bool:
        torch = sys.modules.get("torch")  # no tensor can exist before torch is imported
        return torch is not None and isinstance(x, torch.Tensor)

    def to_host(self, x: Any) -> numpy.ndarray:
        return x.detach().cpu().numpy().copy()

    def from_host(self, x: numpy.ndarray, device: Any) -> Any:
        import torch

        return torch.from_numpy(numpy.array(x, copy=True)).to(device)

    def scatter_add_rows(self, num_rows: int, ids: Any, values: Any) -> Any:
        """`Tensor.index_add_`: the rows of values added into a zero table at ids."""
        import torch

        total = torch.zeros((num_rows, values.shape[1]), dtype=values.dtype, device=values.device)
        return total.index_add_(0, ids, values)

    def synchronize(self, device: Any) -> None:
        import torch

        if device.type == "cuda":
            torch.cuda.synchronize(device)
