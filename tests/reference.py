"""An independent float64 NumPy LSTM, written plainly from the equations in DESIGN.md.

It shares no code with xlstm: loops over steps and rows, gates sliced by name, layer
norm spelled out. Tests compare every backend against it.
"""
from __future__ import annotations

import numpy as np


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def normalise(v: np.ndarray, gain: np.ndarray, shift: np.ndarray, eps: float) -> np.ndarray:
    """Layer norm of one vector v [H]: zero mean, unit (biased) variance, then gain and shift."""
    mean = v.mean()
    var = ((v - mean) ** 2).mean()
    return (v - mean) / np.sqrt(var + eps) * gain + shift


def reference_step(W, x, c, h, forget_bias=1.0, layer_norm=False, gain=None, shift=None,
                   eps=1e-12, mask=None):
    """One step for a single example: x [I], c, h [H] → (c_new, h_new)."""
    W = np.asarray(W, np.float64)
    H = c.shape[0]
    z = np.concatenate([[1.0], x, h])  # [1, x, h]
    if layer_norm:
        z[0] = 0.0  # the bias column is unused: the norm's shift plays that role
    a = W @ z  # [4H]
    a_f, a_i, a_c, a_o = a[:H], a[H:2 * H], a[2 * H:3 * H], a[3 * H:]
    if layer_norm:
        a_f = normalise(a_f, gain[0], shift[0], eps)
        a_i = normalise(a_i, gain[1], shift[1], eps)
        a_c = normalise(a_c, gain[2], shift[2], eps)
        a_o = normalise(a_o, gain[3], shift[3], eps)
    f = sigmoid(a_f + forget_bias)
    i = sigmoid(a_i)
    g = np.tanh(a_c)
    if mask is not None:
        g = g * mask
    o = sigmoid(a_o)
    c_new = f * c + i * g
    if layer_norm:
        c_new = normalise(c_new, gain[4], shift[4], eps)
    h_new = o * np.tanh(c_new)
    return c_new, h_new


def reference_rnn(W, inputs, c0=None, h0=None, lengths=None, masks=None, **cell):
    """inputs [B, T, I] → outputs [B, T, H], final c, h [B, H]; zero outputs past lengths.

    masks, when given, are [T, B, H] candidate dropout masks (already scaled).
    """
    inputs = np.asarray(inputs, np.float64)
    B, T, _ = inputs.shape
    H = np.asarray(W).shape[0] // 4
    c = np.zeros((B, H)) if c0 is None else np.array(c0, np.float64)
    h = np.zeros((B, H)) if h0 is None else np.array(h0, np.float64)
    lengths = [T] * B if lengths is None else list(lengths)
    outputs = np.zeros((B, T, H))
    for b in range(B):
        for t in range(lengths[b]):
            mask = None if masks is None else masks[t, b]
            c[b], h[b] = reference_step(W, inputs[b, t], c[b], h[b], mask=mask, **cell)
            outputs[b, t] = h[b]
    return outputs, c, h
