"""The mLSTM cell of xLSTM (Beck et al. 2024): a matrix memory per head, read by a query, with exponential gating.

One fused weight matrix W [3H + 2NH (+ H), 1 + I]: column 0 is the bias, columns 1..I multiply x_t; row blocks
are q, k, v (H each, head j owns units j·DH … (j+1)·DH − 1), the input and forget gate pre-activations ĩ, f̃
(one per head) and, with `output_gate`, the output gate o (H). There is no hidden-to-hidden weight: every
pre-activation comes from x_t alone, which is what makes the parallel form possible.

    a          = [1, x_t] · Wᵀ
    q, k, v    = a_q, a_k / √DH, a_v          per head [DH]
    C_t, n_t, m_t, h̃_t                       see `mlstm_recurrent` (the recurrence) and `mlstm_parallel`
    h_t        = σ(a_o) ⊙ h̃_t                 (h̃_t itself when output_gate=False)

`unroll` runs the recurrent form or the parallel form (the same numbers); `form="auto"`, measured fastest
(README, "xLSTM cells"), runs the parallel form over consecutive chunks of CHUNK_SIZE steps.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable

from xlstm_backends import Backend
from xlstm import init
from xlstm.checks import check_bool, device_of, namespace_of
from xlstm.functional import sigmoid
from xlstm.mlstm_parallel import chunkwise_form, parallel_form
from xlstm.mlstm_recurrent import MLSTMState, recurrent_form
from xlstm.recurrent_cell import RecurrentCell, Unrolling

FORMS = ("auto", "recurrent", "parallel")
CHUNK_SIZE = 32  # form="auto": the parallel form over chunks of this many steps (measured fastest; README)


class MLSTMCell(RecurrentCell):
    """Holds the mLSTM's fused weights and settings; `dynamic_rnn` runs it through `unroll`.

    num_heads divides num_units; output_gate=False gives h = h̃ (what a cell converted from NX-AI's has); eps
    guards the normaliser; form is "auto" (parallel, in chunks), "recurrent" or "parallel" (the whole window).
    """

    state_type = MLSTMState

    def __init__(
        self,
        num_units: int,
        input_size: int,
        *,
        num_heads: int = 1,
        output_gate: bool = True,
        eps: float = 1e-6,
        form: str = "auto",
        initializer: Any = None,
        bias_initializer: Any = 0.0,
        weights: Any = None,
        dtype: Any = None,
        seed: int | None = None,
        backend: str | Backend | None = None,
        device: Any = None,
    ) -> None:
        self._set_up(num_units, input_size, dtype, backend, device, weights)
        self._set_heads(num_heads)
        self.output_gate = check_bool("output_gate", output_gate)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0.0 < eps < math.inf:
            raise ValueError(f"eps must be a positive finite number, got {eps!r}")
        self.eps = float(eps)
        if form not in FORMS:
            raise ValueError(f"form must be one of {', '.join(map(repr, FORMS))}, got {form!r}")
        self.form = form
        shape = (self.num_rows, 1 + self.input_size)
        if weights is not None:
            self.weights = self.parameter("weights", weights, shape,
                                          "[3H + 2NH + H, 1 + I] (rows q, k, v, ĩ, f̃, o)" if self.output_gate
                                          else "[3H + 2NH, 1 + I] (rows q, k, v, ĩ, f̃)")
        else:
            self.weights = self._initial_weights(shape, initializer, bias_initializer, seed)

    @property
    def num_rows(self) -> int:
        """Rows of the fused weights: q, k, v (H each), ĩ, f̃ (NH each), o (H, with the output gate)."""
        return 3 * self.num_units + 2 * self.num_heads + (self.num_units if self.output_gate else 0)

    def _initial_weights(self, shape: tuple[int, int], initializer: Any, bias_initializer: Any,
                         seed: int | None) -> Any:
        """Input columns from `initializer` (glorot_uniform), the bias column from `bias_initializer`, except the
        forget gates' biases: linspace(3, 6) over the heads, as the reference starts them (memory kept early on)."""
        xp = self.backend.xp
        weights = init.fused_weights(shape, initializer, bias_initializer, self.dtype, self.backend.random(seed, stream=0))
        forget = 3 * self.num_units + self.num_heads
        forget_bias = xp.linspace(3.0, 6.0, self.num_heads, dtype=self.dtype, device=self.backend.device)
        bias = xp.concat([weights[:forget, :1], forget_bias[:, None], weights[forget + self.num_heads:, :1]], axis=0)
        return xp.concat([bias, weights[:, 1:]], axis=1)

    def state_shapes(self, batch_size: int | None) -> MLSTMState:
        lead = () if batch_size is None else (batch_size,)
        heads, size = self.num_heads, self.head_size
        return MLSTMState(lead + (heads, size, size), lead + (heads, size), lead + (heads,))

    def parameters(self) -> dict[str, Any]:
        return {"weights": self.weights}

    def config(self) -> dict[str, Any]:
        return {"num_units": self.num_units, "input_size": self.input_size, "num_heads": self.num_heads,
                "output_gate": self.output_gate, "eps": self.eps, "form": self.form}

    def form_for(self, steps: int) -> Callable[..., tuple]:
        """The form `unroll` runs a window of `steps` steps in: "auto" is the parallel form over chunks of
        CHUNK_SIZE steps, "parallel" the whole window at once (both by the backend's `mlstm_kernels()` when it has
        them); an empty window has only the recurrent form."""
        if steps == 0 or self.form == "recurrent":
            return recurrent_form
        kernels = self.backend.library.mlstm_kernels()  # the backend's fused parallel form, the same numbers
        parallel = parallel_form if kernels is None else kernels.parallel_form
        if self.form == "parallel":
            return parallel
        return functools.partial(chunkwise_form, chunk_size=CHUNK_SIZE, parallel=parallel)

    def unroll(self, x: Any, state: MLSTMState, valid: Any, with_backward: bool) -> Unrolling:
        xp = namespace_of(x=x, weights=self.weights)
        steps, batch, units, heads = x.shape[0], x.shape[1], self.num_units, self.num_heads
        kernels = self.backend.library.mlstm_kernels()
        if self.form == "auto" and steps > 0 and hasattr(kernels, "unroll"):  # the backend runs the whole cell
            return Unrolling(*kernels.unroll(x, self.weights, state, valid, self.eps, heads, self.output_gate,
                                             CHUNK_SIZE, with_backward))
        ones = xp.ones((steps * batch, 1), dtype=x.dtype, device=device_of(x))
        x_flat = xp.concat([ones, xp.reshape(x, (steps * batch, self.input_size))], axis=1)  # [1, x_t]
        # Every pre-activation of every step, bias included, in one [T·B, 1 + I] × [1 + I, rows] matmul.
        a = xp.reshape(x_flat @ xp.matrix_transpose(self.weights), (steps, batch, self.num_rows))
        per_head = lambda start: xp.reshape(a[..., start:start + units],  # noqa: E731  [T, B, NH, DH]
                                            (steps, batch, heads, self.head_size))
        gates = 3 * units  # ĩ in rows gates … gates + NH − 1, f̃ in the next NH, then o
        form = self.form_for(steps)
        h_tilde, final, core_backward = form(per_head(0), per_head(units), per_head(2 * units),
                                             a[..., gates:gates + heads], a[..., gates + heads:gates + 2 * heads],
                                             state, valid, self.eps, with_backward)
        h_tilde = xp.reshape(h_tilde, (steps, batch, units))
        o = sigmoid(a[..., gates + 2 * heads:]) if self.output_gate else None
        outputs = h_tilde if o is None else o * h_tilde
        if not with_backward:
            return Unrolling(outputs, final, None)

        def backward(d_outputs: Any, d_final_state: Any) -> dict[str, Any]:
            """Through the output gate, the form's own VJP, then the input projection (one matmul each)."""
            d_outputs = xp.zeros_like(outputs) if d_outputs is None else d_outputs
            d_h_tilde = d_outputs if o is None else d_outputs * o
            core = core_backward(xp.reshape(d_h_tilde, (steps, batch, heads, self.head_size)), d_final_state)
            blocks = [xp.reshape(core[name], (steps, batch, units)) for name in ("q", "k", "v")] + [core["i"], core["f"]]
            if o is not None:
                blocks.append(d_outputs * h_tilde * o * (1.0 - o))
            d_a = xp.reshape(xp.concat(blocks, axis=-1), (steps * batch, self.num_rows))
            d_weights = xp.matrix_transpose(d_a) @ x_flat
            d_inputs = xp.reshape(d_a @ self.weights[:, 1:], (steps, batch, self.input_size))
            return {"weights": d_weights, "inputs": d_inputs, "initial_state": core["initial_state"]}

        return Unrolling(outputs, final, backward)
