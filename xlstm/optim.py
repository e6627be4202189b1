"""Optimisers (SGD, Adam, AdamW) and gradient clipping, written against the array API.

Parameters and gradients are dicts name → array with the same keys, e.g.
`{"weights": W, "kernel": K, "bias": b}`; the names are opaque strings. `step` is
functional: it returns new parameter arrays and never writes into the caller's arrays
(nor into the optimiser's buffers, which `state_dict` shares). The update rules are PyTorch's
(`torch.optim.SGD`, `Adam`, `AdamW`), formula for formula. In-place operators (`+=`, part of
the standard) are used only on arrays the update itself has just made.

    optimizer = xlstm.optim.Adam(learning_rate=1e-3)
    grads, norm = xlstm.optim.clip_by_global_norm(grads, 5.0)
    params = optimizer.step(params, grads)
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable, NamedTuple

from xlstm_backends import dtype_name, library_of
from xlstm import flat
from xlstm.checks import check_float, device_of, namespace_of

STATE_KEYS = ("optimizer", "hyperparameters", "step", "state")


class _Group(NamedTuple):
    """The parameters of one dtype, packed: where each lies, their last values and the buffers."""

    slots: list[flat.Slot]
    params: Any  # flat buffer of the parameters as the last step returned them
    returned: dict[str, Any]  # those parameters as `step` handed them out: views of `params`
    buffers: dict[str, Any]  # buffer name → flat buffer, laid out like `params`


class Optimizer:
    """What every optimiser shares: input checks, packed buffers, step count, state_dict.

    A step packs every parameter and gradient of one dtype into one flat buffer (a concat),
    runs the update rule once over it and hands the new parameters out as views of one new
    buffer; the optimiser's buffers stay flat between steps. Parameters passed back as
    `step` returned them (the same array objects) are not packed again. A subclass sets
    `buffer_names` and implements `hyperparameters()` and `_update()`.
    """

    buffer_names: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.step_count = 0                          # steps taken so far
        self._groups: list[_Group] = []              # the packed state, one group per parameter dtype
        self._loaded: dict[str, dict[str, Any]] = {}  # buffers from load_state_dict, packed at the next step

    @property
    def state(self) -> dict[str, dict[str, Any]]:
        """Parameter name → {buffer name → array}: views of the packed buffers."""
        if self._loaded:
            return {name: dict(buffers) for name, buffers in self._loaded.items()}
        state: dict[str, dict[str, Any]] = {}
        for group in self._groups:
            if not group.buffers:
                continue
            xp = namespace_of(params=group.params)
            per_buffer = {buffer: flat.views(xp, value, group.slots) for buffer, value in group.buffers.items()}
            state.update({slot.name: {buffer: per_buffer[buffer][slot.name] for buffer in self.buffer_names}
                          for slot in group.slots})
        return state

    def hyperparameters(self) -> dict[str, Any]:
        """The constructor's arguments, as plain Python values."""
        raise NotImplementedError

    def _update(self, xp: Any, param: Any, grad: Any, buffers: dict[str, Any], step: int) -> tuple[Any, dict]:
        """The update of a (flat) parameter array: (new parameter, its new buffers)."""
        raise NotImplementedError

    def step(self, params: dict[str, Any], grads: dict[str, Any]) -> dict[str, Any]:
        """Apply one update and return the new parameters (a new dict of new arrays)."""
        xp = self._check_step(params, grads)
        step = self.step_count + 1
        new_params: dict[str, Any] = {}
        groups = []
        for group in self._packed(xp, params):
            param, buffers = self._update(xp, group.params, flat.concat(xp, grads, group.slots), group.buffers, step)
            returned = flat.views(xp, param, group.slots)
            new_params.update(returned)
            groups.append(_Group(group.slots, param, returned, buffers))
        self.step_count, self._groups, self._loaded = step, groups, {}
        return {name: new_params[name] for name in params}

    def _packed(self, xp: Any, params: dict[str, Any]) -> list[_Group]:
        """The groups for this step: the last step's layout and buffers when `params` matches it,
        the parameters packed anew unless they are the very arrays the last step returned."""
        if self._same_layout(params):
            return [group if all(params[slot.name] is group.returned[slot.name] for slot in group.slots)
                    else group._replace(params=flat.concat(xp, params, group.slots)) for group in self._groups]
        state = self.state   # checked against params by _check_step: same names, shapes and dtypes
        by_dtype: dict[str, dict[str, Any]] = {}
        for name, param in params.items():
            by_dtype.setdefault(dtype_name(param.dtype), {})[name] = param
        groups = []
        for arrays in by_dtype.values():
            slots = flat.layout(arrays)
            buffers = {buffer: flat.concat(xp, {name: state[name][buffer] for name in arrays}, slots)
                       for buffer in self.buffer_names} if state else {}
            groups.append(_Group(slots, flat.concat(xp, arrays, slots), {}, buffers))
        return groups

    def _same_layout(self, params: dict[str, Any]) -> bool:
        """Whether `params` has the names, order, shapes and dtypes the packed state was made for."""
        if self._loaded or not self._groups:
            return False
        slots = [(slot, group) for group in self._groups for slot in group.slots]
        return len(slots) == len(params) and all(
            slot.name in params and tuple(params[slot.name].shape) == slot.shape
            and params[slot.name].dtype == group.params.dtype for slot, group in slots)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: kind, hyperparameters, step count, buffers by parameter name.

        The buffers are views of the optimiser's own arrays, shared rather than copied (nothing
        here changes an array in place); a checkpoint writer may convert them with `xlstm.to_numpy`.
        """
        return {
            "optimizer": type(self).__name__,
            "hyperparameters": self.hyperparameters(),
            "step": self.step_count,
            "state": self.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned (its arrays on the backend of the parameters to come)."""
        kind = type(self).__name__
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict from {kind}.state_dict(), got {type(state).__name__}")
        missing = [key for key in STATE_KEYS if key not in state]
        if missing:
            raise ValueError(f"state lacks the keys {missing}; "
                             f"expected those of {kind}.state_dict(): {list(STATE_KEYS)}")
        if state["optimizer"] != kind:
            raise ValueError(f"state was saved by a {state['optimizer']!r} optimiser and cannot be loaded "
                             f"into a {kind!r} one")
        hyperparameters = state["hyperparameters"]
        expected = sorted(self.hyperparameters())
        if not isinstance(hyperparameters, dict) or sorted(hyperparameters) != expected:
            raise ValueError(f"state['hyperparameters'] must be a dict with the keys {expected}, "
                             f"got {hyperparameters!r}")
        restored = type(self)(**hyperparameters)    # the constructor checks every value
        step = state["step"]
        if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
            raise ValueError(f"state['step'] must be a non-negative integer, got {step!r}")
        buffers = _check_loaded_buffers(state["state"], restored.buffer_names, int(step))
        for name, value in restored.hyperparameters().items():
            setattr(self, name, value)
        self.buffer_names = restored.buffer_names
        self.step_count, self._groups, self._loaded = int(step), [], buffers

    def __repr__(self) -> str:
        settings = ", ".join(f"{name}={value!r}" for name, value in self.hyperparameters().items())
        return f"{type(self).__name__}({settings})"

    def _check_step(self, params: dict[str, Any], grads: dict[str, Any]) -> Any:
        """Check params, grads and the state agree (keys, backend, shapes, dtypes); return xp."""
        for argument, value in (("params", params), ("grads", grads)):
            if not isinstance(value, dict):
                raise TypeError(f"{argument} must be a dict of name → array, got {type(value).__name__}")
        if not params:
            raise ValueError("params must not be empty")
        _check_same_keys("grads", grads, "params", params)
        # The packed state was made for the last step's parameters: unchanged names, shapes and
        # dtypes need only its backend checked; anything else is checked parameter by parameter.
        same_layout = self._same_layout(params)
        state = {} if same_layout else self.state
        if state:
            _check_same_keys("params", params, "the optimiser's state (from earlier steps)", state)
        arrays = {f"params[{name!r}]": p for name, p in params.items()}
        arrays.update({f"grads[{name!r}]": g for name, g in grads.items()})
        arrays.update({f"state[{name!r}][{buffer!r}]": b for name, buffers in state.items() for buffer, b in buffers.items()})
        if same_layout:
            arrays.update({f"the optimiser's packed {buffer!r}": b
                           for group in self._groups for buffer, b in group.buffers.items()})
        xp = namespace_of(**arrays)
        for name, param in params.items():
            check_float(f"params[{name!r}]", param, xp)
            _check_like(f"grads[{name!r}]", grads[name], f"params[{name!r}]", param, xp)
            for buffer, value in state.get(name, {}).items():
                _check_like(f"state[{name!r}][{buffer!r}]", value, f"params[{name!r}]", param, xp)
        return xp


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov momentum and L2 weight decay.

    As `torch.optim.SGD` with dampening 0: g ← g + wd·p; b ← g on the first step, then
    b ← μ·b + g; p ← p − lr·(g + μ·b) with Nesterov, p ← p − lr·b without.
    """

    def __init__(self, learning_rate: float, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0) -> None:
        super().__init__()
        self.learning_rate = _number("learning_rate", learning_rate, lambda v: v > 0.0, "> 0")
        self.momentum = _number("momentum", momentum, lambda v: v >= 0.0, ">= 0")
        if not isinstance(nesterov, bool):
            raise TypeError(f"nesterov must be True or False, got {nesterov!r}")
        if nesterov and self.momentum == 0.0:
            raise ValueError("nesterov=True requires momentum > 0, got momentum=0.0")
        self.nesterov = nesterov
        self.weight_decay = _number("weight_decay", weight_decay, lambda v: v >= 0.0, ">= 0")
        self.buffer_names = ("momentum_buffer",) if self.momentum > 0.0 else ()

    def hyperparameters(self) -> dict[str, Any]:
        return {"learning_rate": self.learning_rate, "momentum": self.momentum,
                "nesterov": self.nesterov, "weight_decay": self.weight_decay}

    def _update(self, xp: Any, param: Any, grad: Any, buffers: dict[str, Any], step: int) -> tuple[Any, dict]:
        if self.weight_decay != 0.0:
            grad = grad + self.weight_decay * param
        if self.momentum == 0.0:
            return param - self.learning_rate * grad, {}
        previous = buffers.get("momentum_buffer")
        if previous is None:                        # first step: the buffer starts as (a copy of) g
            buffer = xp.asarray(grad, copy=True)
        else:
            buffer = self.momentum * previous + grad
        direction = grad + self.momentum * buffer if self.nesterov else buffer
        return param - self.learning_rate * direction, {"momentum_buffer": buffer}


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction, as `torch.optim.Adam` (amsgrad=False).

    m ← β1·m + (1−β1)·g; v ← β2·v + (1−β2)·g²;
    p ← p − lr/(1−β1ᵗ) · m / (√v/√(1−β2ᵗ) + ε).
    """

    buffer_names = ("exp_avg", "exp_avg_sq")

    def __init__(self, learning_rate: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999,
                 epsilon: float = 1e-8) -> None:
        super().__init__()
        self.learning_rate = _number("learning_rate", learning_rate, lambda v: v > 0.0, "> 0")
        self.beta1 = _number("beta1", beta1, lambda v: 0.0 <= v < 1.0, "in [0, 1)")
        self.beta2 = _number("beta2", beta2, lambda v: 0.0 <= v < 1.0, "in [0, 1)")
        self.epsilon = _number("epsilon", epsilon, lambda v: v > 0.0, "> 0")

    def hyperparameters(self) -> dict[str, Any]:
        return {"learning_rate": self.learning_rate, "beta1": self.beta1,
                "beta2": self.beta2, "epsilon": self.epsilon}

    def _update(self, xp: Any, param: Any, grad: Any, buffers: dict[str, Any], step: int) -> tuple[Any, dict]:
        return self._adam_update(xp, param, grad, buffers, step, 1.0)

    def _adam_update(self, xp: Any, param: Any, grad: Any, buffers: dict[str, Any], step: int,
                     decay: float) -> tuple[Any, dict]:
        """The update of p·decay (AdamW's decoupled weight decay; 1.0 for Adam), in the library's
        fused kernel (`Library.optimizer_kernels`) when it has one."""
        if not buffers:                             # first step: both moments start at zero
            buffers = {"exp_avg": xp.zeros_like(param), "exp_avg_sq": xp.zeros_like(param)}
        step_size = self.learning_rate / (1.0 - self.beta1 ** step)        # Python floats
        bias_correction2_sqrt = math.sqrt(1.0 - self.beta2 ** step)
        kernels = library_of(param).optimizer_kernels()
        if kernels is not None:
            param, exp_avg, exp_avg_sq = kernels.adam(
                param, grad, buffers["exp_avg"], buffers["exp_avg_sq"], beta1=self.beta1, beta2=self.beta2,
                epsilon=self.epsilon, step_size=step_size, bias_correction2_sqrt=bias_correction2_sqrt, decay=decay)
            return param, {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
        if decay != 1.0:                            # p·1.0 is p: Adam skips the pass
            param = param * decay
        # The formulas above, operation for operation; `op=` only on arrays made here, so that
        # no pass allocates a new array it does not have to.
        exp_avg = self.beta1 * buffers["exp_avg"]                          # first moment
        exp_avg += (1.0 - self.beta1) * grad
        exp_avg_sq = grad * grad                                           # second moment
        exp_avg_sq *= 1.0 - self.beta2
        exp_avg_sq += self.beta2 * buffers["exp_avg_sq"]
        denominator = xp.sqrt(exp_avg_sq)
        denominator /= bias_correction2_sqrt
        denominator += self.epsilon
        update = exp_avg / denominator
        update *= step_size
        return param - update, {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), as `torch.optim.AdamW`.

    p ← p − lr·wd·p (that is, p·(1 − lr·wd)), then the Adam update.
    """

    def __init__(self, learning_rate: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999,
                 epsilon: float = 1e-8, weight_decay: float = 0.01) -> None:
        super().__init__(learning_rate, beta1, beta2, epsilon)
        self.weight_decay = _number("weight_decay", weight_decay, lambda v: v >= 0.0, ">= 0")

    def hyperparameters(self) -> dict[str, Any]:
        return {**super().hyperparameters(), "weight_decay": self.weight_decay}

    def _update(self, xp: Any, param: Any, grad: Any, buffers: dict[str, Any], step: int) -> tuple[Any, dict]:
        return self._adam_update(xp, param, grad, buffers, step, 1.0 - self.learning_rate * self.weight_decay)


def clip_by_global_norm(grads: dict[str, Any], max_norm: float) -> tuple[dict[str, Any], Any]:
    """Scale all gradients by max_norm / max(global_norm, max_norm), as `tf.clip_by_global_norm`.

    Returns the clipped gradients and the global norm √(Σ‖g‖²) before clipping, a 0-d array
    (kept on the device: nothing is copied to the host). A non-finite norm makes every
    clipped gradient NaN, as in TensorFlow, so a blown-up step cannot pass unnoticed.
    """
    if not isinstance(grads, dict):
        raise TypeError(f"grads must be a dict of name → array, got {type(grads).__name__}")
    if not grads:
        raise ValueError("grads must not be empty")
    max_norm = _number("max_norm", max_norm, lambda v: v > 0.0, "> 0")
    xp = namespace_of(**{f"grads[{name!r}]": g for name, g in grads.items()})
    first_name, first = next(iter(grads.items()))
    check_float(f"grads[{first_name!r}]", first, xp)
    for name, grad in grads.items():
        check_float(f"grads[{name!r}]", grad, xp, first.dtype)

    # One dot product per gradient, its flat view with itself: no squared copy, one pass each.
    squares = [xp.vecdot(flat_grad, flat_grad) for flat_grad in (xp.reshape(g, (-1,)) for g in grads.values())]
    global_norm = xp.sqrt(sum(squares[1:], squares[0]))
    limit = xp.asarray(max_norm, dtype=global_norm.dtype, device=device_of(global_norm))
    nan = xp.asarray(math.nan, dtype=global_norm.dtype, device=device_of(global_norm))
    scale = xp.where(xp.isfinite(global_norm), limit / xp.maximum(global_norm, limit), nan)
    return {name: grad * scale for name, grad in grads.items()}, global_norm


def _number(name: str, value: Any, ok: Callable[[float], bool], expected: str) -> float:
    """`value` as a Python float, or a TypeError/ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number {expected}, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and ok(value)):
        raise ValueError(f"{name} must be a finite number {expected}, got {value!r}")
    return value


def _check_same_keys(name: str, given: dict[str, Any], reference_name: str, reference: dict[str, Any]) -> None:
    """`given` must have exactly the keys of `reference`; the error lists what is missing and extra."""
    missing = [key for key in reference if key not in given]
    extra = [key for key in given if key not in reference]
    if missing or extra:
        parts = ([f"lacks {missing}"] if missing else []) + ([f"has extra {extra}"] if extra else [])
        raise ValueError(f"{name} must have the same keys as {reference_name}: it {' and '.join(parts)}")


def _check_like(name: str, x: Any, reference_name: str, reference: Any, xp: Any) -> None:
    """`x` must have the shape and dtype of `reference`."""
    if tuple(x.shape) != tuple(reference.shape):
        raise ValueError(f"{name} must have the shape of {reference_name} {list(reference.shape)}, "
                         f"got {list(x.shape)}")
    check_float(name, x, xp, reference.dtype)


def _check_loaded_buffers(buffers: Any, buffer_names: tuple[str, ...], step: int) -> dict[str, dict[str, Any]]:
    """state['state'] must map parameter names to {buffer name → array}; returns a copy of the dicts."""
    if not isinstance(buffers, dict):
        raise TypeError("state['state'] must be a dict of parameter name → buffers, "
                        f"got {type(buffers).__name__}")
    if buffers and (step == 0 or not buffer_names):
        raise ValueError(f"state['state'] must be empty for this optimiser at step {step}, "
                         f"got buffers for {list(buffers)}")
    if not buffers and step > 0 and buffer_names:
        raise ValueError(f"state['state'] must hold the buffers {list(buffer_names)} of every parameter "
                         f"after {step} steps, got none")
    copied = {}
    for name, entry in buffers.items():
        if not isinstance(entry, dict) or sorted(entry) != sorted(buffer_names):
            raise ValueError(f"state['state'][{name!r}] must be a dict with the keys {list(buffer_names)}, "
                             f"got {entry!r}")
        copied[name] = dict(entry)
    arrays = {f"state['state'][{name!r}][{b!r}]": x for name, entry in copied.items() for b, x in entry.items()}
    if arrays:
        namespace_of(**arrays)   # every buffer is an array, all of one backend and device
    return copied


