"""What every array library adapter provides: the standard namespace plus what the standard lacks."""
from __future__ import annotations

from typing import Any

import numpy

GENERIC_CODE = "the generic array-API code"


class Library:
    """Adapter for one array library; subclasses fill in the library-specific parts.

    The array API standard has no host transfer, no random numbers and no device
    synchronisation; each adapter supplies those so `xlstm/` never has to name a library.
    """

    name: str = ""
    description: str = ""

    def unavailable_reason(self) -> str | None:
        """None when the library can run here, otherwise one line saying why not."""
        raise NotImplementedError

    def namespace(self) -> Any:
        """The array-API-compatible namespace (`xp`) of this library."""
        raise NotImplementedError

    def parse_device(self, spec: Any) -> Any:
        """Turn a user's device spec (None, a string, an int) into this library's device."""
        raise NotImplementedError

    def owns(self, x: Any) -> bool:
        """Whether `x` is an array of this library."""
        raise NotImplementedError

    def to_host(self, x: Any) -> numpy.ndarray:
        """Copy an array of this library into a NumPy array on the host."""
        raise NotImplementedError

    def from_host(self, x: numpy.ndarray, device: Any) -> Any:
        """Copy a NumPy array onto `device` of this library."""
        raise NotImplementedError

    def synchronize(self, device: Any) -> None:
        """Wait until queued work on `device` has finished (for honest timings)."""

    def scatter_add_rows(self, num_rows: int, ids: Any, values: Any) -> Any:
        """A [num_rows, E] array whose row r sums the rows values[k] ([N, E]) with ids[k] == r.

        The embedding gradient. This fallback is the one-hot product one_hot(ids)ᵀ · values,
        whose cost grows with num_rows; libraries with a scatter-add override it.
        """
        import array_api_compat

        xp = array_api_compat.array_namespace(ids, values)
        rows = xp.arange(num_rows, dtype=ids.dtype, device=array_api_compat.device(ids))
        one_hot = xp.astype(ids[:, None] == rows, values.dtype)
        return xp.matrix_transpose(one_hot) @ values

    def lstm_kernels(self) -> Any:
        """A module with fused `lstm_forward`/`lstm_backward` for this library, or None.

        None means xlstm runs its generic array-API code, which every library supports.
        """
        return None

    def lstm_layer_norm_kernels(self) -> Any:
        """Like `lstm_kernels`, for the layer-norm cell: a module whose `lstm_forward` also takes
        norm_gain, norm_shift and norm_epsilon and whose `lstm_backward` also returns their
        gradients; or None (the generic code)."""
        return None

    def loss_kernels(self) -> Any:
        """A module with fused `softmax_cross_entropy(logits, labels)` → (losses, exps, sums) and
        `softmax_cross_entropy_gradient(exps, sums, labels, row_scale)` for this library, or None
        (xlstm/losses.py's generic array-API code, the reference they must equal)."""
        return None

    def output_layer_kernels(self) -> Any:
        """An object with a fused `dense_softmax_cross_entropy(x, kernel, bias, labels, row_scale)` →
        (loss, d_x, d_kernel, d_bias) for a language model's output layer, or None (Dense.vjp and
        softmax_cross_entropy_vjp, the generic reference it must equal)."""
        return None

    def optimizer_kernels(self) -> Any:
        """A module with a fused `adam(param, grad, exp_avg, exp_avg_sq, ...)` over one flat buffer,
        or None (xlstm/optim.py's generic array-API update, the reference it must equal)."""
        return None

    def mlstm_kernels(self) -> Any:
        """A module whose `parallel_form` equals xlstm/mlstm_parallel.py's (same arguments and results) for this
        library, or None (the generic array-API code). It may also have `unroll(x, weights, state, valid, eps,
        num_heads, output_gate, chunk_size, with_backward)`, the whole `MLSTMCell.unroll` for form="auto"."""
        return None

    def slstm_kernels(self) -> Any:
        """A module with a fused `slstm_forward`/`slstm_backward` pair for this library (the sLSTM's whole time loop,
        same numbers as xlstm/slstm.py and xlstm/slstm_grad.py), or None (the generic array-API code)."""
        return None

    def kernel_paths(self) -> dict[str, str]:
        """Which code runs each part that may have kernels of its own (what `backends` and `bench`
        print): the kernel module's DESCRIPTION, or the generic array-API code."""
        modules = {"LSTM": self.lstm_kernels(), "layer-norm LSTM": self.lstm_layer_norm_kernels(),
                   "softmax cross-entropy": self.loss_kernels(), "output layer": self.output_layer_kernels(),
                   "optimizers": self.optimizer_kernels(), "mLSTM": self.mlstm_kernels(),
                   "sLSTM": self.slstm_kernels()}
        return {part: GENERIC_CODE if module is None else getattr(module, "DESCRIPTION", "the library's kernels")
                for part, module in modules.items()}
