"""The CUDA source of the fused LSTM steps, as `cupy.ElementwiseKernel` takes it.

Kept apart from `cupy_kernels.py` (which builds the kernels from these strings) so that it
imports without CuPy: the tests compile the very same strings on the CPU with g++ and for
real GPUs with NVRTC.

A kernel runs one thread per unit (b, j) of the [B, H] state, i = b·H + j. Parameters follow
CuPy's rules: a plain array parameter is the element at i of its broadcast (inputs read-only),
a `raw` one the whole array indexed by the body, a scalar is passed by value, and `T` is the
arrays' float type.
"""
from __future__ import annotations

from typing import NamedTuple


class ElementwiseSource(NamedTuple):
    """The arguments of one `cupy.ElementwiseKernel(in_params, out_params, operation, name, preamble=)`."""

    in_params: str
    out_params: str
    operation: str
    name: str
    preamble: str = ""


# σ(x) = ½·tanh(½x) + ½: one transcendental, and it never overflows.
_SIGMOID = r"""
template <typename F> __device__ F sigmoid(F x) { return F(0.5) * tanh(F(0.5) * x) + F(0.5); }
"""

# Gate k ∈ {f, i, c, o} of unit (b, j) sits at row + k·H of the step's [B, 4H] arrays.
_UNIT_ROW = r"""
const ptrdiff_t unit = i;  // i may be a 32-bit index; 4*B*H need not fit one
const ptrdiff_t row = (unit / units) * 4 * units + unit % units;
"""

_FORWARD_STEP = _UNIT_ROW + r"""
const T f = sigmoid(recurrent[row] + projected[row]);
const T in_gate = sigmoid(recurrent[row + units] + projected[row + units]);
const T g = tanh(recurrent[row + 2 * units] + projected[row + 2 * units]);
const T o = sigmoid(recurrent[row + 3 * units] + projected[row + 3 * units]);
const T c = f * c_prev + in_gate * (g * mask);
const T h = o * tanh(c);
// Finished rows (valid false) keep their state and output zero. In inference c_new is c_prev
// and h_new is h_prev (one buffer updated in place): each is read before it is written.
c_new = valid ? c : c_prev;
h_new = valid ? h : h_prev;
output = valid ? h : T(0);
"""

# Training keeps the activated gates (g before dropout) for the backward pass.
_KEEP_GATES = r"""
gates[row] = f;
gates[row + units] = in_gate;
gates[row + 2 * units] = g;
gates[row + 3 * units] = o;
"""

# dh and dc arrive as the gradients w.r.t. h_t and c_t (dh without this step's output
# gradient) and leave as those w.r.t. h_{t-1} and c_{t-1}; the GEMM after the kernel adds
# d_a·W_h to dh.
_BACKWARD_STEP = _UNIT_ROW + r"""
const T f = gates[row];
const T in_gate = gates[row + units];
const T g = gates[row + 2 * units];
const T o = gates[row + 3 * units];
const T dh_t = valid ? dh + d_output : T(0);  // padded steps take no gradient...
const T tanh_c = tanh(c);
const T dc_t = (valid ? dc : T(0)) + dh_t * o * (T(1) - tanh_c * tanh_c);
d_gates[row] = dc_t * c_prev * f * (T(1) - f);
d_gates[row + units] = dc_t * (g * mask) * in_gate * (T(1) - in_gate);
d_gates[row + 2 * units] = dc_t * in_gate * mask * (T(1) - g * g);
d_gates[row + 3 * units] = dh_t * tanh_c * o * (T(1) - o);
dc = valid ? dc_t * f : dc;  // ...and pass the state's gradient straight through
dh = valid ? T(0) : dh;
"""

_FORWARD_IN = "raw T recurrent, raw T projected, T c_prev, T h_prev, T mask, bool valid, int32 units"
_FORWARD_OUT = "T c_new, T h_new, T output"

FORWARD_STEP = ElementwiseSource(_FORWARD_IN, _FORWARD_OUT, _FORWARD_STEP, "xlstm_lstm_forward_step", _SIGMOID)
"""The fused pointwise forward step: gates from the step's two products, then c, h and the output."""

FORWARD_STEP_KEEP_GATES = ElementwiseSource(_FORWARD_IN, _FORWARD_OUT + ", raw T gates", _FORWARD_STEP + _KEEP_GATES,
                                            "xlstm_lstm_forward_step_keep_gates", _SIGMOID)
"""The forward step of training, which also writes the activated gates."""

BACKWARD_STEP = ElementwiseSource("raw T gates, T c_prev, T c, T d_output, T mask, bool valid, int32 units",
                                  "T dh, T dc, raw T d_gates", _BACKWARD_STEP, "xlstm_lstm_backward_step")
"""The fused pointwise backward step; dh and dc are updated in place."""

ALL_KERNELS = (FORWARD_STEP, FORWARD_STEP_KEEP_GATES, BACKWARD_STEP)
