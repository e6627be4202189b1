"""Softmax cross-entropy with TensorFlow's semantics, for one step or a whole sequence."""
from __future__ import annotations

from typing import Any

from xlstm.checks import check_float, check_integer, check_range, check_shape, device_of, namespace_of
from xlstm.functional import log_softmax

REDUCTIONS = ("none", "sum", "mean")


def softmax_cross_entropy(logits: Any, labels: Any, weights: Any = None, reduction: str = "mean") -> Any:
    """-log softmax(logits)[label] per row, like `tf.nn.sparse_softmax_cross_entropy_with_logits`.

    logits [..., V], integer labels [...] in [0, V), optional weights [...].
    reduction: "none" (per-row losses, times weights), "sum" (Σ w·loss) or
    "mean" (Σ w·loss / Σ w; 0 when all weights are 0).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    xp = namespace_of(logits=logits, labels=labels, weights=weights)
    losses = _per_row_losses(logits, labels, xp)
    if weights is None:
        weights = xp.ones_like(losses)
    else:
        check_float("weights", weights, xp)
        check_shape("weights", weights, tuple(labels.shape), "same shape as labels")
        weights = xp.astype(weights, logits.dtype)
    weighted = losses * weights
    if reduction == "none":
        return weighted
    total = xp.sum(weighted)
    if reduction == "sum":
        return total
    return _safe_divide(total, xp.sum(weights), xp)


def sequence_loss(
    logits: Any,
    targets: Any,
    weights: Any,
    average_across_timesteps: bool = True,
    average_across_batch: bool = True,
) -> Any:
    """Weighted cross-entropy over [B, T, V] logits, like `tf.contrib.seq2seq.sequence_loss`.

    Averaging over an axis divides the weighted sum by the sum of weights along it
    (plus TensorFlow's 1e-12); without averaging the losses keep that axis.
    """
    xp = namespace_of(logits=logits, targets=targets, weights=weights)
    check_shape("logits", logits, (None, None, None), "[batch, time, vocabulary]")
    losses = _per_row_losses(logits, targets, xp)
    check_float("weights", weights, xp)
    check_shape("weights", weights, tuple(targets.shape), "[batch, time], like targets")
    weights = xp.astype(weights, logits.dtype)
    weighted = losses * weights
    axes = tuple(axis for axis, average in ((0, average_across_batch), (1, average_across_timesteps)) if average)
    if not axes:
        return weighted
    return xp.sum(weighted, axis=axes) / (xp.sum(weights, axis=axes) + 1e-12)


def _per_row_losses(logits: Any, labels: Any, xp: Any) -> Any:
    """Checks logits and labels, then returns -log p(label) with the labels' shape."""
    check_float("logits", logits, xp)
    if logits.ndim < 1:
        raise ValueError("logits must have a class axis, got a scalar")
    check_integer("labels", labels, xp)
    check_shape("labels", labels, tuple(logits.shape[:-1]), "logits' shape without its class axis")
    classes = logits.shape[-1]
    check_range("labels", labels, xp, 0, classes - 1, f"class indices for {classes} classes")
    chosen = labels[..., None] == xp.arange(classes, device=device_of(logits))
    log_probabilities = log_softmax(logits)
    return -xp.sum(xp.where(chosen, log_probabilities, xp.zeros_like(log_probabilities)), axis=-1)


def _safe_divide(numerator: Any, denominator: Any, xp: Any) -> Any:
    """numerator / denominator, and 0 where the denominator is 0."""
    nonzero = denominator != 0
    safe = xp.where(nonzero, denominator, xp.ones_like(denominator))
    return xp.where(nonzero, numerator / safe, xp.zeros_like(numerator))
