"""Softmax cross-entropy with TensorFlow's semantics, for one step or a whole sequence,
and their vector–Jacobian products (d loss / d logits = softmax − one-hot, weighted)."""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

from xlstm_backends import library_of
from xlstm.checks import check_float, check_integer, check_range, check_shape, device_of, namespace_of

REDUCTIONS = ("none", "sum", "mean")
SEQUENCE_EPSILON = 1e-12  # TensorFlow's sequence_loss adds it to the sum of weights


class _Scored(NamedTuple):
    """Per-row losses and what their gradient needs."""

    xp: Any
    losses: Any  # -log p(label), the labels' shape
    exps: Any  # [..., V] e^(logit − the row's largest logit)
    sums: Any  # the labels' shape: Σ of each row's exps, softmax's denominator
    labels: Any  # the labels, checked to lie in [0, V)
    weights: Any  # the labels' shape, the logits' dtype
    kernels: Any  # the library's fused loss kernels, or None (the generic code)


def _score(logits: Any, labels: Any, weights: Any) -> _Scored:
    """Check logits, labels and weights; compute every row's cross-entropy.

    loss = log Σ e^(z − max) − (z_label − max): one exp per logit and a gather of the labels'
    entries, without forming log-softmax over every class. A library with fused loss kernels
    (`Library.loss_kernels`) computes the same after the checks.
    """
    xp = namespace_of(logits=logits, labels=labels, weights=weights)
    check_float("logits", logits, xp)
    if logits.ndim < 1:
        raise ValueError("logits must have a class axis, got a scalar")
    check_integer("labels", labels, xp)
    check_shape("labels", labels, tuple(logits.shape[:-1]), "logits' shape without its class axis")
    classes = logits.shape[-1]
    check_range("labels", labels, xp, 0, classes - 1, f"class indices for {classes} classes")
    if weights is None:
        weights = xp.ones(tuple(labels.shape), dtype=logits.dtype, device=device_of(logits))
    else:
        check_float("weights", weights, xp)
        check_shape("weights", weights, tuple(labels.shape), "same shape as the labels")
        weights = xp.astype(weights, logits.dtype)
    kernels = library_of(logits).loss_kernels()
    if kernels is not None:
        return _Scored(xp, *kernels.softmax_cross_entropy(logits, labels), labels, weights, kernels)
    shifted = logits - xp.max(logits, axis=-1, keepdims=True)  # e^shifted ≤ 1: no overflow
    exps = xp.exp(shifted)
    sums = xp.sum(exps, axis=-1)
    losses = xp.log(sums) - _at_labels(xp, shifted, labels)
    return _Scored(xp, losses, exps, sums, labels, weights, None)


def _at_labels(xp: Any, values: Any, labels: Any) -> Any:
    """values[..., label] for every row: one gather from the flattened values."""
    classes, rows = values.shape[-1], math.prod(labels.shape)
    flat_labels = xp.astype(xp.reshape(labels, (rows,)), xp.int64)
    positions = xp.arange(rows, dtype=xp.int64, device=device_of(values)) * classes + flat_labels
    return xp.reshape(xp.take(xp.reshape(values, (rows * classes,)), positions), tuple(labels.shape))


def _logits_gradient(scored: _Scored, row_scale: Any) -> Any:
    """d Σ row_scale·loss / d logits = (softmax − one-hot) · row_scale."""
    if scored.kernels is not None:
        return scored.kernels.softmax_cross_entropy_gradient(scored.exps, scored.sums, scored.labels, row_scale)
    xp = scored.xp
    gradient = scored.exps * (row_scale / scored.sums)[..., None]
    chosen = scored.labels[..., None] == xp.arange(scored.exps.shape[-1], device=device_of(scored.exps))
    gradient -= xp.astype(chosen, scored.exps.dtype) * row_scale[..., None]  # in place: made here
    return gradient


def _reduce(scored: _Scored, reduction: str) -> tuple[Any, Any]:
    """The reduced loss and each row's weight in it (d loss / d row loss)."""
    xp, weights = scored.xp, scored.weights
    if reduction == "none":
        return scored.losses * weights, weights
    if reduction == "sum":
        return xp.sum(scored.losses * weights), weights
    total = xp.sum(weights)
    nonzero = total != 0  # all weights zero: the mean is 0, and so is its gradient
    scale = xp.where(nonzero, weights / xp.where(nonzero, total, xp.ones_like(total)), xp.zeros_like(weights))
    return xp.sum(scored.losses * scale), scale


def softmax_cross_entropy(logits: Any, labels: Any, weights: Any = None, reduction: str = "mean") -> Any:
    """-log softmax(logits)[label] per row, like `tf.nn.sparse_softmax_cross_entropy_with_logits`.

    logits [..., V], integer labels [...] in [0, V), optional weights [...].
    reduction: "none" (per-row losses, times weights), "sum" (Σ w·loss) or
    "mean" (Σ w·loss / Σ w; 0 when all weights are 0).
    """
    return softmax_cross_entropy_vjp(logits, labels, weights, reduction)[0]


def softmax_cross_entropy_vjp(
    logits: Any, labels: Any, weights: Any = None, reduction: str = "mean"
) -> tuple[Any, Callable[..., Any]]:
    """The loss and `backward(cotangent=None)` → d loss / d logits (cotangent 1 by default)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    scored = _score(logits, labels, weights)
    loss, row_scale = _reduce(scored, reduction)
    reduced_axes = () if reduction == "none" else tuple(range(scored.losses.ndim))
    return loss, _backward_with_cotangent(scored, loss, row_scale, reduced_axes)


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
    return sequence_loss_vjp(logits, targets, weights, average_across_timesteps, average_across_batch)[0]


def sequence_loss_vjp(
    logits: Any,
    targets: Any,
    weights: Any,
    average_across_timesteps: bool = True,
    average_across_batch: bool = True,
) -> tuple[Any, Callable[..., Any]]:
    """`sequence_loss` and `backward(cotangent=None)` → d loss / d logits."""
    check_shape("logits", logits, (None, None, None), "[batch, time, vocabulary]")
    if weights is None:
        raise TypeError("weights must be a [batch, time] float array (sequence_loss requires it), got None")
    scored = _score(logits, targets, weights)
    xp = scored.xp
    axes = tuple(axis for axis, average in ((0, average_across_batch), (1, average_across_timesteps)) if average)
    if axes:
        denominator = xp.sum(scored.weights, axis=axes, keepdims=True) + SEQUENCE_EPSILON
        row_scale = scored.weights / denominator
        loss = xp.sum(scored.losses * row_scale, axis=axes)
    else:
        row_scale = scored.weights
        loss = scored.losses * row_scale
    return loss, _backward_with_cotangent(scored, loss, row_scale, axes)


def _backward_with_cotangent(scored: _Scored, loss: Any, row_scale: Any,
                             reduced_axes: tuple[int, ...]) -> Callable[..., Any]:
    """backward(cotangent) for a loss that is the Σ over `reduced_axes` of row_scale·row loss."""
    xp = scored.xp
    # The cotangent has the loss's shape; size-1 axes where the rows were summed let it broadcast.
    broadcast_shape = tuple(1 if axis in reduced_axes else size for axis, size in enumerate(row_scale.shape))

    def backward(cotangent: Any = None) -> Any:
        if cotangent is None:
            return _logits_gradient(scored, row_scale)
        if isinstance(cotangent, (int, float)) and not isinstance(cotangent, bool):
            return _logits_gradient(scored, row_scale * float(cotangent))
        namespace_of(cotangent=cotangent, loss=loss)
        check_shape("cotangent", cotangent, tuple(loss.shape), "like the loss")
        return _logits_gradient(scored, row_scale * xp.reshape(cotangent, broadcast_shape))

    return backward
