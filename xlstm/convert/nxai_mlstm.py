"""NX-AI's mLSTM (the `xlstm` 2.0.6 package) → `xlstm.MLSTMCell`.

Their `mLSTMLayer` computes q, k, v with three `LinearHeadwiseExpand` projections (weight
[P, out/P, in/P]: block-diagonal over P projection heads, optional bias [out]) and its `mLSTMCell`
computes the gates from them: ĩ, f̃ = `igate`, `fgate` (nn.Linear(3H → NH)) of concat(q, k, v). Our cell
computes every pre-activation from x directly, so when q, k and v read the same input x the gate rows are
the composition W_gate · [W_q; W_k; W_v] (bias W_gate · [b_q; b_k; b_v] + b_gate): the same numbers.
(In their layer q and k read the convolved input and v the plain one; there the three projections and the
gates do not fold into one cell.) Their cell's `outnorm` and their layer's SiLU output branch lie outside
the cell: the converted cell has `output_gate=False` and computes h̃ itself. torch is never imported here:
modules are read through `state_dict()` and tensors moved with `xlstm_backends.asarray`.
"""
from __future__ import annotations

from typing import Any

from xlstm_backends import Backend, asarray, get_backend
from xlstm.checks import namespace_of
from xlstm.mlstm import MLSTMCell, MLSTMState

_PROJECTIONS = ("q_proj", "k_proj", "v_proj")


def from_nxai_mlstm(q_proj: Any, k_proj: Any, v_proj: Any, cell: Any, dtype: Any = None,
                    backend: str | Backend | None = None, device: Any = None) -> MLSTMCell:
    """An `MLSTMCell` (output_gate=False) computing NX-AI's h̃ (their cell's output before `outnorm`) from x,
    given their q/k/v `LinearHeadwiseExpand` modules (or state dicts: weight, bias) and their `mLSTMCell`
    (or its state dict: igate.weight, igate.bias, fgate.weight, fgate.bias; outnorm.weight is ignored)."""
    target = get_backend(backend, device)
    projections = [_projection(name, module, target) for name, module in zip(_PROJECTIONS, (q_proj, k_proj, v_proj))]
    (w_q, b_q), (w_k, b_k), (w_v, b_v) = projections
    units, input_size = w_q.shape
    for name, (weight, _) in zip(_PROJECTIONS, projections):
        if tuple(weight.shape) != (units, input_size):
            raise ValueError(f"{name} must map {input_size} inputs to {units} outputs like q_proj (q, k and v read "
                             f"the same input), got {weight.shape[1]} → {weight.shape[0]}")
    gates = _state_dict("cell", cell)
    for key in ("igate.weight", "igate.bias", "fgate.weight", "fgate.bias"):
        if key not in gates:
            raise ValueError(f"cell must be NX-AI's mLSTMCell or its state dict with {key!r}; it has "
                             f"{sorted(gates)}")
    w_i, w_f = asarray(gates["igate.weight"], backend=target), asarray(gates["fgate.weight"], backend=target)
    num_heads = w_i.shape[0]
    for name, weight in (("igate.weight", w_i), ("fgate.weight", w_f)):
        if weight.ndim != 2 or tuple(weight.shape) != (num_heads, 3 * units):
            raise ValueError(f"cell's {name} must be [num_heads, 3H] = [{num_heads}, {3 * units}] (its input is "
                             f"concat(q, k, v)), got {list(weight.shape)}")
    xp = namespace_of(q_proj=w_q, igate=w_i)
    qkv_weight, qkv_bias = xp.concat([w_q, w_k, w_v], axis=0), xp.concat([b_q, b_k, b_v], axis=0)
    rows = [w_q, w_k, w_v]
    biases = [b_q, b_k, b_v]
    for gate, weight in (("igate", w_i), ("fgate", w_f)):
        rows.append(weight @ qkv_weight)
        biases.append(weight @ qkv_bias + asarray(gates[f"{gate}.bias"], dtype=weight.dtype, backend=target))
    weights = xp.concat([xp.concat(biases, axis=0)[:, None], xp.concat(rows, axis=0)], axis=1)
    return MLSTMCell(units, input_size, num_heads=num_heads, output_gate=False, weights=weights,
                     dtype=dtype, backend=target)


def from_nxai_mlstm_state(mlstm_state: tuple, dtype: Any = None, backend: str | Backend | None = None,
                          device: Any = None) -> MLSTMState:
    """Their `mLSTMCell.step` state (c [B, NH, DH, DH], n [B, NH, DH, 1], m [B, NH, 1, 1]) as an MLSTMState: the
    same layout (C sums k vᵀ with k scaled by 1/√DH), the trailing axes dropped."""
    if not isinstance(mlstm_state, (tuple, list)) or len(mlstm_state) != 3:
        raise TypeError(f"mlstm_state must be their (c_state, n_state, m_state), got {type(mlstm_state).__name__}")
    C, n, m = (asarray(part, dtype=dtype, backend=get_backend(backend, device)) for part in mlstm_state)
    batch, heads, size = C.shape[0], C.shape[1], C.shape[-1]
    for name, part, shape in (("c_state", C, (batch, heads, size, size)), ("n_state", n, (batch, heads, size, 1)),
                              ("m_state", m, (batch, heads, 1, 1))):
        if tuple(part.shape) != shape:
            raise ValueError(f"mlstm_state's {name} must have shape {list(shape)}, got {list(part.shape)}")
    xp = namespace_of(c_state=C, n_state=n, m_state=m)
    return MLSTMState(C, xp.reshape(n, (batch, heads, size)), xp.reshape(m, (batch, heads)))


def to_nxai_mlstm_state(state: MLSTMState) -> tuple[Any, Any, Any]:
    """An MLSTMState as torch tensors in their `mLSTMCell.step` layout: (c, n [B, NH, DH, 1], m [B, NH, 1, 1])."""
    C, n, m = state
    torch_tensor = lambda x: asarray(x, backend="torch")  # noqa: E731
    return torch_tensor(C), torch_tensor(n[..., None]), torch_tensor(m[..., None, None])


def _state_dict(name: str, module: Any) -> dict[str, Any]:
    """A module's state dict, or the given mapping."""
    state = module.state_dict() if hasattr(module, "state_dict") else module
    if not isinstance(state, dict):
        raise TypeError(f"{name} must be an NX-AI module or its state dict, got {type(module).__name__}")
    return state


def _projection(name: str, module: Any, target: Backend) -> tuple[Any, Any]:
    """A `LinearHeadwiseExpand` as a dense (weight [out, in], bias [out]): its heads' blocks on the diagonal."""
    state = _state_dict(name, module)
    if "weight" not in state:
        raise ValueError(f"{name} must be a LinearHeadwiseExpand or its state dict with 'weight', has {sorted(state)}")
    blocks = asarray(state["weight"], backend=target)
    if blocks.ndim != 3:
        raise ValueError(f"{name}.weight must be [heads, out/heads, in/heads], got {list(blocks.shape)}")
    xp = namespace_of(**{f"{name}_weight": blocks})
    heads, out_per_head, in_per_head = blocks.shape
    eye = xp.eye(heads, dtype=blocks.dtype, device=target.device)
    dense = xp.reshape(blocks[:, :, None, :] * eye[:, None, :, None], (heads * out_per_head, heads * in_per_head))
    if state.get("bias") is None:
        return dense, xp.zeros((dense.shape[0],), dtype=dense.dtype, device=target.device)
    bias = asarray(state["bias"], dtype=dense.dtype, backend=target)
    if tuple(bias.shape) != (dense.shape[0],):
        raise ValueError(f"{name}.bias must be [{dense.shape[0]}], got {list(bias.shape)}")
    return dense, bias
