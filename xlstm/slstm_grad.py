"""Backpropagation through time for `SLSTMCell`: the step's vector–Jacobian product and the loop around it.

The backward step reads the forward step (`slstm_step_internals`) bottom up; each line below
undoes one line there. Two places need care:

- The stabiliser m_t = max(log σ(f̃) + m_{t-1}, ĩ), or ĩ where n_{t-1} = 0 (the first-step rule), is
  differentiated through the branch the forward took: its gradient goes to whichever argument was the
  maximum (to ĩ on a tie, which random data never produce), or to ĩ under the first-step rule. The
  rule's condition n_{t-1} = 0 is a comparison, so it passes no gradient.
- The clamps i' = min(exp(u_i), 1) and f' = min(exp(u_f), 1): the derivative of min(e^u, 1) is e^u
  where u < 0 and 0 where u > 0. In the max branch the exponents are ≤ 0 by construction and the one
  that is 0 is x − max(x, y) with x the maximum, whose own gradient is 0 — so there the clamp never
  changes a gradient. Under the first-step rule u_i = ĩ − ĩ = 0 (gradient 0 again), but u_f =
  log σ(f̃) + m_{t-1} − ĩ can be > 0: then f' = 1 is a constant and passes no gradient. Taking
  the derivative as e^u where u ≤ 0, else 0, is therefore exact everywhere the forward is
  differentiable (what torch autograd computes through NX-AI's code, up to its ½ on exact ties).
"""
from __future__ import annotations

from typing import Any, NamedTuple

from xlstm.checks import device_of, namespace_of
from xlstm.functional import sigmoid
from xlstm.recurrent_cell import split_gradient
from xlstm.slstm import SLSTMCell, SLSTMState, block_diagonal, head_blocks, slstm_step_internals


class SLSTMStepGradients(NamedTuple):
    """What one backward step returns: the pre-activations' gradient and the previous state's (but h's)."""

    preactivations: Any  # d a   [B, 4H]: gates i, f, z, o
    c_prev: Any  # d c_{t-1}     [B, H]
    n_prev: Any  # d n_{t-1}     [B, H]
    m_prev: Any  # d m_{t-1}     [B, H]  (h_{t-1} reaches the step only through a: d h_{t-1} = d a · R)


def slstm_step_vjp(preactivations: Any, previous: SLSTMState, d: SLSTMState) -> SLSTMStepGradients:
    """The step's vector–Jacobian product: from the new state's gradient d (c, n, m, h) back to a and
    the previous c, n, m. The forward's lines, undone from the last to the first."""
    xp = namespace_of(preactivations=preactivations, d_c=d.c)
    k = slstm_step_internals(preactivations, previous)
    zero = xp.zeros_like(k.m)
    # h = o · c / n
    d_o = d.h * k.c / k.n
    d_c = d.c + d.h * k.o / k.n
    d_n = d.n - d.h * k.h / k.n
    # n = f' n_{t-1} + i'   and   c = f' c_{t-1} + i' z
    d_f = d_c * previous.c + d_n * previous.n
    d_i = d_c * k.z + d_n
    d_z = d_c * k.i
    d_c_prev, d_n_prev = d_c * k.f, d_n * k.f
    # i' = min(exp(ĩ − m), 1),  f' = min(exp(log σ(f̃) + m_{t-1} − m), 1): e^u below the clamp, 0 above it
    d_u_i = xp.where(k.i_raw - k.m <= 0.0, d_i * k.i, zero)
    d_u_f = xp.where(k.log_f_plus_m - k.m <= 0.0, d_f * k.f, zero)
    d_m = d.m - d_u_i - d_u_f
    # m = ĩ (first step) or max(log σ(f̃) + m_{t-1}, ĩ)
    m_is_i = k.first | (k.i_raw >= k.log_f_plus_m)
    d_i_raw = d_u_i + xp.where(m_is_i, d_m, zero)
    d_log_f_plus_m = d_u_f + xp.where(m_is_i, zero, d_m)
    # log σ(f̃) + m_{t-1};  z = tanh(z̃);  o = σ(õ)
    d_f_raw = d_log_f_plus_m * sigmoid(-k.f_raw)
    d_z_raw = d_z * (1.0 - k.z * k.z)
    d_o_raw = d_o * k.o * (1.0 - k.o)
    d_a = xp.concat([d_i_raw, d_f_raw, d_z_raw, d_o_raw], axis=1)
    return SLSTMStepGradients(d_a, d_c_prev, d_n_prev, d_log_f_plus_m)


def slstm_backward(cell: SLSTMCell, x: Any, preactivations: list, states: list, valid: Any,
                   d_outputs: Any, d_final_state: SLSTMState | None) -> dict[str, Any]:
    """BPTT over a run of `cell.unroll`: x [T, B, I], each step's a [B, 4H] and entering state, valid [T, B, 1]
    or None, d_outputs [T, B, H] or None → {"weights", "recurrent_weights", "inputs", "initial_state"}."""
    xp = namespace_of(x=x, weights=cell.weights)
    steps, batch, H, I = x.shape[0], x.shape[1], cell.num_units, cell.input_size
    recurrent = block_diagonal(cell.recurrent_weights)  # [4H, H]
    zeros = xp.zeros((batch, H), dtype=cell.dtype, device=device_of(x))
    d_state = SLSTMState(zeros, zeros, zeros, zeros) if d_final_state is None else SLSTMState(*d_final_state)
    d_preactivations = [None] * steps
    for t in reversed(range(steps)):
        valid_t = None if valid is None else valid[t, ...]  # [B, 1]
        # Rows past their length carried the state unchanged and output zeros: their gradient skips the step.
        inside, skipped = split_gradient(valid_t, d_state)
        if d_outputs is not None:
            d_out = d_outputs[t, ...] if valid_t is None else xp.where(valid_t, d_outputs[t, ...], zeros)
            inside = inside._replace(h=inside.h + d_out)
        step = slstm_step_vjp(preactivations[t], states[t], inside)
        d_preactivations[t] = step.preactivations
        d_state = SLSTMState(step.c_prev, step.n_prev, step.m_prev, step.preactivations @ recurrent)
        if skipped is not None:
            d_state = SLSTMState(*(a + b for a, b in zip(d_state, skipped)))

    rows = steps * batch
    d_a = (xp.reshape(xp.stack(d_preactivations, axis=0), (rows, 4 * H)) if steps
           else xp.zeros((0, 4 * H), dtype=cell.dtype, device=device_of(x)))  # [T·B, 4H]
    previous_h = (xp.reshape(xp.stack([s.h for s in states], axis=0), (rows, H)) if steps
                  else xp.zeros((0, H), dtype=cell.dtype, device=device_of(x)))  # [T·B, H]
    d_a_t = xp.matrix_transpose(d_a)  # [4H, T·B]
    d_weights = xp.concat([xp.sum(d_a, axis=0)[:, None], d_a_t @ xp.reshape(x, (rows, I))], axis=1)  # [4H, 1+I]
    d_recurrent = head_blocks(d_a_t @ previous_h, cell.num_heads)  # [NH, 4·DH, DH]
    d_inputs = xp.reshape(d_a @ cell.weights[:, 1:], (steps, batch, I))  # [T, B, I]
    return {"weights": d_weights, "recurrent_weights": d_recurrent, "inputs": d_inputs, "initial_state": d_state}
