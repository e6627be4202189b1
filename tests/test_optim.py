"""Optimisers and gradient clipping against oracles: a float64 NumPy transcription of the
published formulas (written here, independent of xlstm), torch.optim, and tf.clip_by_global_norm's
formula; state_dict round trips (bit-exact) and bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest

import xlstm
from xlstm.optim import SGD, Adam, AdamW, clip_by_global_norm

SHAPES = {"weights": (4, 6), "kernel": (3, 2), "bias": (2,), "cell_0/weights": (2, 3)}
STEPS = 5

CONFIGS = [
    ("SGD", {"learning_rate": 0.1}),
    ("SGD", {"learning_rate": 0.1, "weight_decay": 0.1}),
    ("SGD", {"learning_rate": 0.1, "momentum": 0.9}),
    ("SGD", {"learning_rate": 0.05, "momentum": 0.8, "nesterov": True, "weight_decay": 0.01}),
    ("Adam", {}),
    ("Adam", {"learning_rate": 0.01, "beta1": 0.5, "beta2": 0.9, "epsilon": 1e-6}),
    ("AdamW", {}),
    ("AdamW", {"learning_rate": 0.01, "beta1": 0.0, "beta2": 0.99, "epsilon": 1e-7, "weight_decay": 0.1}),
]
CONFIG_IDS = [f"{kind}-{i}" for i, (kind, _) in enumerate(CONFIGS)]
OPTIMIZERS = {"SGD": SGD, "Adam": Adam, "AdamW": AdamW}


def _problem(seed: int = 0) -> tuple[dict, list[dict]]:
    """float64 NumPy parameters and one gradient dict per step."""
    rng = np.random.default_rng(seed)
    params = {name: rng.standard_normal(shape) for name, shape in SHAPES.items()}
    grads = [{name: rng.standard_normal(shape) for name, shape in SHAPES.items()} for _ in range(STEPS)]
    return params, grads


def _on(backend, arrays: dict, dtype: str = "float64") -> dict:
    return {name: xlstm.asarray(a, dtype=dtype, backend=backend) for name, a in arrays.items()}


def _home(arrays: dict) -> dict:
    return {name: xlstm.to_numpy(a) for name, a in arrays.items()}


def _run(optimizer, params: dict, grads: list[dict], backend) -> list[dict]:
    """Parameters (NumPy) after each step of `optimizer` on `backend`."""
    current, history = _on(backend, params), []
    for g in grads:
        current = optimizer.step(current, _on(backend, g))
        history.append(_home(current))
    return history


# The published formulas, transcribed in float64 NumPy ------------------------------------

def _reference_sgd(params, grads, learning_rate, momentum=0.0, nesterov=False, weight_decay=0.0):
    """torch.optim.SGD's documented algorithm with dampening 0."""
    p, buffers, history = {k: v.copy() for k, v in params.items()}, {}, []
    for step_grads in grads:
        for k in p:
            g = step_grads[k] + weight_decay * p[k]
            if momentum != 0.0:
                buffers[k] = g.copy() if k not in buffers else momentum * buffers[k] + g
                g = g + momentum * buffers[k] if nesterov else buffers[k]
            p[k] = p[k] - learning_rate * g
        history.append({k: v.copy() for k, v in p.items()})
    return history


def _reference_adam(params, grads, learning_rate=1e-3, beta1=0.9, beta2=0.999, epsilon=1e-8,
                    weight_decay=0.0, decoupled=False):
    """Kingma & Ba's Adam with bias correction (ε outside the root, as torch); AdamW when decoupled."""
    p, history = {k: v.copy() for k, v in params.items()}, []
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for t, step_grads in enumerate(grads, start=1):
        for k in p:
            if decoupled:
                p[k] = p[k] - learning_rate * weight_decay * p[k]
            g = step_grads[k]
            m[k] = beta1 * m[k] + (1 - beta1) * g
            v[k] = beta2 * v[k] + (1 - beta2) * g**2
            m_hat = m[k] / (1 - beta1**t)
            v_hat = v[k] / (1 - beta2**t)
            p[k] = p[k] - learning_rate * m_hat / (np.sqrt(v_hat) + epsilon)
        history.append({k: x.copy() for k, x in p.items()})
    return history


def _reference(kind, settings, params, grads):
    if kind == "SGD":
        return _reference_sgd(params, grads, **settings)
    if kind == "Adam":
        return _reference_adam(params, grads, **settings)
    return _reference_adam(params, grads, **{"weight_decay": 0.01, **settings}, decoupled=True)  # AdamW's default


def _worst(history: list[dict], expected: list[dict]) -> float:
    return max(np.max(np.abs(h[k] - e[k])) for h, e in zip(history, expected) for k in h)


# Oracles -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, settings", CONFIGS, ids=CONFIG_IDS)
def test_matches_published_formulas(backend, kind, settings):
    params, grads = _problem()
    history = _run(OPTIMIZERS[kind](**settings), params, grads, backend)
    expected = _reference(kind, settings, params, grads)
    assert _worst(history, expected) <= 1e-12
    assert _worst(history[-1:], [params]) > 1e-3   # the parameters did move


def _torch_optimizer(torch, kind, settings, tensors):
    s = {"learning_rate": 1e-3, "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8, **settings}
    if kind == "SGD":
        return torch.optim.SGD(tensors, lr=s["learning_rate"], momentum=s.get("momentum", 0.0),
                               nesterov=s.get("nesterov", False), weight_decay=s.get("weight_decay", 0.0))
    adam = {"lr": s["learning_rate"], "betas": (s["beta1"], s["beta2"]), "eps": s["epsilon"]}
    if kind == "Adam":
        return torch.optim.Adam(tensors, **adam)
    return torch.optim.AdamW(tensors, **adam, weight_decay=s.get("weight_decay", 0.01))


@pytest.mark.parametrize("kind, settings", CONFIGS, ids=CONFIG_IDS)
def test_matches_torch_optim(backend, kind, settings):
    torch = pytest.importorskip("torch")
    params, grads = _problem(seed=1)
    tensors = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
    reference = _torch_optimizer(torch, kind, settings, list(tensors.values()))
    expected = []
    for step_grads in grads:
        for k, tensor in tensors.items():
            tensor.grad = torch.tensor(step_grads[k], dtype=torch.float64)
        reference.step()
        expected.append({k: t.detach().numpy().copy() for k, t in tensors.items()})
    history = _run(OPTIMIZERS[kind](**settings), params, grads, backend)
    assert _worst(history, expected) <= 1e-12


@pytest.mark.parametrize("kind, settings", [CONFIGS[3], CONFIGS[7]], ids=[CONFIG_IDS[3], CONFIG_IDS[7]])
def test_float32_stays_float32(backend, kind, settings):
    params, grads = _problem()
    current = _on(backend, params, "float32")
    optimizer = OPTIMIZERS[kind](**settings)
    for g in grads:
        current = optimizer.step(current, _on(backend, g, "float32"))
    assert all(xlstm.to_numpy(p).dtype == np.float32 for p in current.values())
    assert _worst([_home(current)], _reference(kind, settings, params, grads)[-1:]) <= 1e-5


def test_step_leaves_the_callers_arrays_alone(backend):
    params, grads = _problem()
    on_params, on_grads = _on(backend, params), _on(backend, grads[0])
    optimizer = SGD(learning_rate=0.1, momentum=0.9)
    new = optimizer.step(on_params, on_grads)
    new = optimizer.step(new, on_grads)
    assert new is not on_params and all(new[k] is not on_params[k] for k in params)
    for k in params:
        assert np.array_equal(xlstm.to_numpy(on_params[k]), params[k])
        assert np.array_equal(xlstm.to_numpy(on_grads[k]), grads[0][k])


@pytest.mark.parametrize("kind, settings", [CONFIGS[3], CONFIGS[5], CONFIGS[7]],
                         ids=[CONFIG_IDS[3], CONFIG_IDS[5], CONFIG_IDS[7]])
def test_packed_step_takes_back_its_own_arrays_or_copies_alike(backend, kind, settings):
    """Parameters handed back as `step` returned them (views of one packed buffer, not packed
    again) and fresh copies of them give bit-identical steps, both on the published formulas."""
    params, grads = _problem(seed=2)
    own, copied = OPTIMIZERS[kind](**settings), OPTIMIZERS[kind](**settings)
    mine, theirs = _on(backend, params), _on(backend, params)
    for g in grads:
        mine = own.step(mine, _on(backend, g))
        theirs = copied.step(_on(backend, _home(theirs)), _on(backend, g))
        assert list(mine) == list(params)   # the caller's order of names
        for k in params:
            assert np.array_equal(xlstm.to_numpy(mine[k]), xlstm.to_numpy(theirs[k]))
    assert _worst([_home(mine)], _reference(kind, settings, params, grads)[-1:]) <= 1e-12


def test_parameters_of_two_dtypes_are_packed_apart(backend):
    """float32 and float64 parameters in one step: each keeps its dtype and follows the formulas."""
    params, grads = _problem(seed=3)
    single = {"kernel", "bias"}
    dtype_of = lambda k: "float32" if k in single else "float64"  # noqa: E731
    on = lambda arrays: {k: xlstm.asarray(a, dtype=dtype_of(k), backend=backend) for k, a in arrays.items()}  # noqa: E731
    optimizer, current = Adam(learning_rate=0.01), on(params)
    for g in grads:
        current = optimizer.step(current, on(g))
    expected = _reference("Adam", {"learning_rate": 0.01}, params, grads)[-1]
    for k, value in _home(current).items():
        assert value.dtype == np.dtype(dtype_of(k))
        assert np.max(np.abs(value - expected[k])) <= (1e-5 if k in single else 1e-12)
    assert {k: tuple(b["exp_avg"].shape) for k, b in optimizer.state.items()} == {k: v.shape for k, v in params.items()}


def test_state_follows_parameters_given_in_another_order(backend):
    """Steps with the names in another order give what steps in one order give, buffers included."""
    params, grads = _problem(seed=4)
    optimizer, reference = Adam(learning_rate=0.01), Adam(learning_rate=0.01)
    current = reference_params = _on(backend, params)
    for step, g in enumerate(grads):
        names = list(params)[::-1] if step % 2 else list(params)
        current = optimizer.step({k: current[k] for k in names}, _on(backend, {k: g[k] for k in names}))
        reference_params = reference.step(reference_params, _on(backend, g))
    for k in params:
        assert np.array_equal(xlstm.to_numpy(current[k]), xlstm.to_numpy(reference_params[k]))
        for buffer in ("exp_avg", "exp_avg_sq"):
            assert np.array_equal(xlstm.to_numpy(optimizer.state_dict()["state"][k][buffer]),
                                  xlstm.to_numpy(reference.state_dict()["state"][k][buffer]))


# clip_by_global_norm -------------------------------------------------------------------------

def test_clip_by_global_norm_clips(backend):
    _, grads = _problem()
    norm = math.sqrt(sum(float(np.sum(g**2)) for g in grads[0].values()))   # about 6
    clipped, global_norm = clip_by_global_norm(_on(backend, grads[0]), 2.0)
    assert tuple(global_norm.shape) == ()
    assert abs(float(xlstm.to_numpy(global_norm)) - norm) <= 1e-12
    for k, g in _home(clipped).items():
        np.testing.assert_allclose(g, grads[0][k] * 2.0 / max(norm, 2.0), rtol=0, atol=1e-12)
    clipped_norm = math.sqrt(sum(float(np.sum(g**2)) for g in _home(clipped).values()))
    assert abs(clipped_norm - 2.0) <= 1e-12


def test_clip_by_global_norm_leaves_small_gradients_unchanged(backend):
    _, grads = _problem()
    norm = math.sqrt(sum(float(np.sum(g**2)) for g in grads[0].values()))
    clipped, global_norm = clip_by_global_norm(_on(backend, grads[0], "float32"), 100.0)
    assert abs(float(xlstm.to_numpy(global_norm)) - norm) <= 1e-5
    for k, g in _home(clipped).items():
        assert g.dtype == np.float32
        assert np.array_equal(g, grads[0][k].astype(np.float32))   # scale exactly 1


def test_clip_by_global_norm_non_finite_norm_gives_nan(backend):
    grads = {"a": np.array([1.0, np.inf]), "b": np.array([2.0])}
    clipped, global_norm = clip_by_global_norm(_on(backend, grads), 1.0)
    assert math.isinf(float(xlstm.to_numpy(global_norm)))
    assert all(np.all(np.isnan(g)) for g in _home(clipped).values())   # tf.clip_by_global_norm's rule


# state_dict round trip ---------------------------------------------------------------------

def _state_to_numpy(state: dict) -> dict:
    """What a checkpoint writer does: arrays to NumPy, the rest as is."""
    return {**state, "state": {name: _home(buffers) for name, buffers in state["state"].items()}}


def _state_from_numpy(state: dict, backend) -> dict:
    return {**state, "state": {name: _on(backend, buffers) for name, buffers in state["state"].items()}}


@pytest.mark.parametrize("kind, settings", CONFIGS, ids=CONFIG_IDS)
def test_state_dict_round_trip_is_exact(backend, kind, settings):
    params, grads = _problem()
    optimizer = OPTIMIZERS[kind](**settings)
    current = _on(backend, params)
    for g in grads[:3]:
        current = optimizer.step(current, _on(backend, g))
    saved, saved_params = _state_to_numpy(optimizer.state_dict()), _home(current)
    assert saved["optimizer"] == kind and saved["step"] == 3
    for g in grads[3:]:
        current = optimizer.step(current, _on(backend, g))

    resumed = OPTIMIZERS[kind](learning_rate=0.5)     # other settings: loading must restore them
    resumed.load_state_dict(_state_from_numpy(saved, backend))
    assert resumed.hyperparameters() == optimizer.hyperparameters()
    again = _on(backend, saved_params)
    for g in grads[3:]:
        again = resumed.step(again, _on(backend, g))
    for k in params:
        assert np.array_equal(xlstm.to_numpy(again[k]), xlstm.to_numpy(current[k]))
    assert resumed.step_count == optimizer.step_count == 5


# Bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("make, match", [
    (lambda: SGD(learning_rate=0.0), "learning_rate must be a finite number > 0, got 0.0"),
    (lambda: SGD(learning_rate=math.nan), "learning_rate must be a finite number > 0"),
    (lambda: SGD(learning_rate=0.1, momentum=-0.5), "momentum must be a finite number >= 0"),
    (lambda: SGD(learning_rate=0.1, nesterov=True), "nesterov=True requires momentum > 0"),
    (lambda: SGD(learning_rate=0.1, weight_decay=-1.0), "weight_decay must be a finite number >= 0"),
    (lambda: Adam(learning_rate=-1e-3), "learning_rate must be a finite number > 0"),
    (lambda: Adam(beta1=1.0), r"beta1 must be a finite number in \[0, 1\), got 1.0"),
    (lambda: Adam(beta2=-0.1), r"beta2 must be a finite number in \[0, 1\)"),
    (lambda: Adam(epsilon=0.0), "epsilon must be a finite number > 0"),
    (lambda: AdamW(weight_decay=-0.01), "weight_decay must be a finite number >= 0"),
])
def test_bad_hyperparameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_hyperparameters_of_the_wrong_type():
    with pytest.raises(TypeError, match="learning_rate must be a number > 0, got '0.1'"):
        SGD(learning_rate="0.1")
    with pytest.raises(TypeError, match="nesterov must be True or False, got 1"):
        SGD(learning_rate=0.1, momentum=0.9, nesterov=1)
    with pytest.raises(TypeError, match="beta1 must be a number"):
        Adam(beta1=True)


def test_keys_must_match(backend):
    params, grads = _problem()
    on_params, on_grads = _on(backend, params), _on(backend, grads[0])
    optimizer = Adam()
    missing = {k: v for k, v in on_grads.items() if k != "bias"}
    with pytest.raises(ValueError, match=r"grads must have the same keys as params: it lacks \['bias'\]"):
        optimizer.step(on_params, missing)
    with pytest.raises(ValueError, match=r"it has extra \['cell_1/bias'\]"):
        optimizer.step(on_params, {**on_grads, "cell_1/bias": on_grads["bias"]})
    with pytest.raises(TypeError, match="grads must be a dict of name → array, got list"):
        optimizer.step(on_params, list(on_grads.values()))
    with pytest.raises(ValueError, match="params must not be empty"):
        optimizer.step({}, {})
    assert optimizer.step_count == 0 and optimizer.state == {}     # nothing happened
    optimizer.step(on_params, on_grads)
    fewer = {k: v for k, v in on_params.items() if k != "kernel"}
    with pytest.raises(ValueError, match=r"params must have the same keys as the optimiser's state.*lacks \['kernel'\]"):
        optimizer.step(fewer, {k: on_grads[k] for k in fewer})


def test_shapes_and_dtypes_must_match(backend):
    params, grads = _problem()
    on_params, on_grads = _on(backend, params), _on(backend, grads[0])
    wrong_shape = {**on_grads, "kernel": xlstm.asarray(np.zeros((2, 3)), dtype="float64", backend=backend)}
    with pytest.raises(ValueError, match=r"grads\['kernel'\] must have the shape of params\['kernel'\] \[3, 2\], got \[2, 3\]"):
        SGD(learning_rate=0.1).step(on_params, wrong_shape)
    wrong_dtype = {**on_grads, "bias": xlstm.asarray(grads[0]["bias"], dtype="float32", backend=backend)}
    with pytest.raises(TypeError, match=r"grads\['bias'\] must have dtype float64 .*got float32"):
        SGD(learning_rate=0.1).step(on_params, wrong_dtype)
    integers = {**on_params, "bias": xlstm.asarray(np.array([1, 2]), backend=backend)}
    with pytest.raises(TypeError, match=r"params\['bias'\] must be a float32 or float64 array"):
        SGD(learning_rate=0.1).step(integers, on_grads)


def test_one_backend_per_step():
    params, grads = _problem()
    numpy_params = _on("numpy", params)
    with pytest.raises(TypeError, match=r"grads\['weights'\] are arrays of different libraries"):
        SGD(learning_rate=0.1).step(numpy_params, _on("array_api_strict", grads[0]))
    strict = xlstm.asarray(params["bias"], backend="array_api_strict", device="device1")
    with pytest.raises(ValueError, match=r"params\['bias'\] are on different devices"):
        SGD(learning_rate=0.1).step({**_on("array_api_strict", params), "bias": strict},
                                    _on("array_api_strict", grads[0]))
    with pytest.raises(TypeError, match=r"grads\['bias'\] must be an array of a known backend"):
        SGD(learning_rate=0.1).step(numpy_params, {**_on("numpy", grads[0]), "bias": [1.0, 2.0]})


def test_loaded_state_must_be_on_the_parameters_backend():
    params, grads = _problem()
    optimizer = Adam()
    optimizer.step(_on("numpy", params), _on("numpy", grads[0]))
    resumed = Adam()
    resumed.load_state_dict(_state_from_numpy(_state_to_numpy(optimizer.state_dict()), "array_api_strict"))
    with pytest.raises(TypeError, match=r"state\['weights'\]\['exp_avg'\] are arrays of different libraries"):
        resumed.step(_on("numpy", params), _on("numpy", grads[1]))


def test_bad_state_dicts():
    params, grads = _problem()
    optimizer = SGD(learning_rate=0.1, momentum=0.9)
    optimizer.step(_on("numpy", params), _on("numpy", grads[0]))
    state = optimizer.state_dict()
    with pytest.raises(ValueError, match="state was saved by a 'SGD' optimiser and cannot be loaded into a 'Adam' one"):
        Adam().load_state_dict(state)
    with pytest.raises(ValueError, match="saved by a 'Adam' optimiser .* into a 'AdamW' one"):
        AdamW().load_state_dict(Adam().state_dict())
    with pytest.raises(TypeError, match="state must be a dict from SGD.state_dict"):
        SGD(learning_rate=0.1).load_state_dict([state])
    with pytest.raises(ValueError, match=r"state lacks the keys \['step'\]"):
        SGD(learning_rate=0.1).load_state_dict({k: v for k, v in state.items() if k != "step"})
    with pytest.raises(ValueError, match="state\\['step'\\] must be a non-negative integer, got -1"):
        SGD(learning_rate=0.1).load_state_dict({**state, "step": -1})
    with pytest.raises(ValueError, match="learning_rate must be a finite number > 0"):
        SGD(learning_rate=0.1).load_state_dict({**state, "hyperparameters": {**state["hyperparameters"],
                                                                            "learning_rate": -1.0}})
    with pytest.raises(ValueError, match=r"state\['hyperparameters'\] must be a dict with the keys"):
        SGD(learning_rate=0.1).load_state_dict({**state, "hyperparameters": {"learning_rate": 0.1}})
    renamed = {"weights": {"velocity": state["state"]["weights"]["momentum_buffer"]}}
    with pytest.raises(ValueError, match=r"state\['state'\]\['weights'\] must be a dict with the keys \['momentum_buffer'\]"):
        SGD(learning_rate=0.1).load_state_dict({**state, "state": renamed})
    with pytest.raises(ValueError, match=r"state\['state'\] must be empty for this optimiser at step 0"):
        SGD(learning_rate=0.1).load_state_dict({**state, "step": 0})
    listed = {"weights": {"momentum_buffer": [1.0]}}
    with pytest.raises(TypeError, match=r"state\['state'\]\['weights'\]\['momentum_buffer'\] must be an array"):
        SGD(learning_rate=0.1).load_state_dict({**state, "state": listed})
    with pytest.raises(ValueError, match="must hold the buffers"):
        Adam().load_state_dict({**Adam().state_dict(), "step": 2})
