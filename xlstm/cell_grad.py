"""Backward pass of one LSTM step: the mirror image of `xlstm.cell.lstm_step`.

Given what the forward step saw (raw pre-activations a and c_{t-1}) and the gradients
arriving at its outputs (dh_t, dc_t), it returns the gradients of a, c_{t-1} and of the
layer-norm gains and shifts. The forward's intermediate values are recomputed from a
(by the same `lstm_step_internals`), which is cheap next to the matmuls and keeps what
the unroller saves per step to a and c_{t-1}.
"""
from __future__ import annotations

from typing import Any, NamedTuple

from xlstm.cell import CellSettings, lstm_step_internals
from xlstm.checks import namespace_of


class StepGrads(NamedTuple):
    preactivations: Any  # d a,        [B, 4H]
    c_prev: Any  # d c_{t-1},          [B, H]
    norm_gain: Any  # d gain,          [5, H] (None without layer norm)
    norm_shift: Any  # d shift,        [5, H] (None without layer norm)


def layer_norm_vjp(normalised: Any, inverse_std: Any, gain: Any, dy: Any) -> tuple[Any, Any, Any]:
    """Gradients of y = x̂·gain + shift w.r.t. x, gain and shift (gain/shift summed over axis 0).

    dx = (1/σ)·(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂)), with dx̂ = dy·gain.
    """
    xp = namespace_of(normalised=normalised, dy=dy)
    d_normalised = dy * gain
    dx = inverse_std * (
        d_normalised
        - xp.mean(d_normalised, axis=-1, keepdims=True)
        - normalised * xp.mean(d_normalised * normalised, axis=-1, keepdims=True)
    )
    return dx, xp.sum(dy * normalised, axis=0), xp.sum(dy, axis=0)


def lstm_step_vjp(
    preactivations: Any,
    c_prev: Any,
    dh: Any,
    dc: Any,
    settings: CellSettings,
    norm_gain: Any = None,
    norm_shift: Any = None,
    dropout_mask: Any = None,
) -> StepGrads:
    """Backpropagate dh_t and dc_t (gradients of the step's outputs) through one step."""
    xp = namespace_of(preactivations=preactivations, c_prev=c_prev, dh=dh, dc=dc)
    batch, units = c_prev.shape[0], c_prev.shape[1]
    k = lstm_step_internals(preactivations, c_prev, settings, norm_gain, norm_shift, dropout_mask)

    # Backward, from h_t = o ⊙ tanh(c_t) down to the pre-activations.
    d_o = dh * k.tanh_c
    d_c = dc + dh * k.o * (1.0 - k.tanh_c * k.tanh_c)
    if settings.layer_norm:
        d_c, d_state_gain, d_state_shift = layer_norm_vjp(k.c_normalised, k.c_inverse_std, norm_gain[4, :], d_c)
    d_f, d_c_prev = d_c * c_prev, d_c * k.f
    d_i, d_g = d_c * k.g, d_c * k.i
    if dropout_mask is not None:
        d_g = d_g * dropout_mask
    d_a = xp.concat([d_f * k.f * (1.0 - k.f), d_i * k.i * (1.0 - k.i), d_g * (1.0 - k.g_raw * k.g_raw),
                     d_o * k.o * (1.0 - k.o)], axis=1)
    if not settings.layer_norm:
        return StepGrads(d_a, d_c_prev, None, None)
    d_gates, d_gates_gain, d_gates_shift = layer_norm_vjp(
        k.gates_normalised, k.gates_inverse_std, norm_gain[:4, :], xp.reshape(d_a, (batch, 4, units)))
    return StepGrads(
        xp.reshape(d_gates, (batch, 4 * units)),
        d_c_prev,
        xp.concat([d_gates_gain, d_state_gain[None, :]], axis=0),
        xp.concat([d_gates_shift, d_state_shift[None, :]], axis=0),
    )
