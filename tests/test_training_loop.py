"""`xlstm.training.train` really trains: every step's update reaches the model, with the
configured learning rate and clipping; the LSTM state is carried from window to window;
and the loss on a learnable text falls well below its unigram entropy.

The loop is watched from outside through `CharLM.loss_and_grads` (wrapped, not replaced),
and the expected first update is recomputed here in float64 from the update rules of
PyTorch's SGD and Adam, so none of these checks uses the code under test as its oracle.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

import xlstm_backends as backends
from xlstm import to_numpy
from xlstm.models import CharLM
from xlstm.training import TrainConfig, train

TINY = dict(batch_size=2, window=4, embedding_size=4, hidden_size=6, num_layers=2, validation_fraction=0.2,
            eval_every=1000, checkpoint_every=1000, dtype="float64")


@dataclass
class StepRecord:
    """What one call of loss_and_grads saw and gave back, copied to NumPy."""

    parameters: dict[str, np.ndarray]  # the model's parameters when the step began
    inputs: np.ndarray
    state_in: list[np.ndarray] | None  # c and h of every layer, or None
    state_out: list[np.ndarray]
    grads: dict[str, np.ndarray]


def _host_state(state: Any) -> list[np.ndarray] | None:
    return None if state is None else [to_numpy(part) for layer in state for part in (layer.c, layer.h)]


@pytest.fixture
def steps(monkeypatch: pytest.MonkeyPatch) -> list[StepRecord]:
    """Every training step's record, in order, for the runs of the test that asks for it."""
    records: list[StepRecord] = []
    original = CharLM.loss_and_grads

    def watched(self: CharLM, inputs: Any, targets: Any, state: Any = None) -> Any:
        parameters = {name: to_numpy(value) for name, value in self.parameters().items()}
        result = original(self, inputs, targets, state)
        records.append(StepRecord(parameters, to_numpy(inputs), _host_state(state), _host_state(result.state),
                                  {name: to_numpy(value) for name, value in result.grads.items()}))
        return result

    monkeypatch.setattr(CharLM, "loss_and_grads", watched)
    return records


@pytest.fixture(autouse=True)
def no_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    """train() ends by sampling 300 tokens one at a time; these tests do not look at it (it is
    most of a tiny run's time, ~10 s on array_api_strict), so the sample is left empty."""
    monkeypatch.setattr(CharLM, "generate", lambda self, prompt, length, **options: [])


def _random_text(length: int, seed: int = 0) -> str:
    """Letters with no pattern: every window of it differs from every other."""
    return "".join(np.random.default_rng(seed).choice(list("abcdefgh"), size=length))


def _train(text: str, tmp_path, backend: backends.Backend, **settings: Any):
    config = TrainConfig(**{**TINY, **settings})
    return train(text, config, tmp_path / "run", backend=backend, write=lambda line: None, progress=False)


def test_every_step_updates_the_parameters_the_next_step_uses(backend, steps, tmp_path):
    result = _train(_random_text(120), tmp_path, backend, steps=6)
    final = {name: to_numpy(value) for name, value in result.checkpoint.model.parameters().items()}
    snapshots = [record.parameters for record in steps] + [final]
    assert len(steps) == 6
    for k, (before, after) in enumerate(zip(snapshots, snapshots[1:])):
        unchanged = [name for name in before if np.array_equal(before[name], after[name])]
        assert not unchanged, f"step {k + 1} left {unchanged} as they were"


def _clipped(grads: dict[str, np.ndarray], clip_norm: float) -> dict[str, np.ndarray]:
    """tf.clip_by_global_norm in float64: every gradient scaled by clip / max(‖g‖, clip)."""
    norm = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads.values()))
    scale = clip_norm / max(norm, clip_norm)
    return {name: g.astype(np.float64) * scale for name, g in grads.items()}


def _first_update(optimizer: str, parameter: np.ndarray, grad: np.ndarray, learning_rate: float) -> np.ndarray:
    """PyTorch's first step: SGD (momentum buffer = g) p − lr·g; Adam (m̂ = g, v̂ = g²) p − lr·g/(|g| + 1e-8)."""
    if optimizer == "sgd":
        return parameter - learning_rate * grad
    return parameter - learning_rate * grad / (np.abs(grad) + 1e-8)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("clip_norm", [1e-3, 1e6], ids=["clipped", "unclipped"])
def test_first_update_uses_the_learning_rate_and_clipping(backend, steps, tmp_path, optimizer, clip_norm):
    learning_rate = 0.03
    result = _train(_random_text(120), tmp_path, backend, steps=1, optimizer=optimizer,
                    learning_rate=learning_rate, clip_norm=clip_norm)
    (record,) = steps
    norm = math.sqrt(sum(float(np.sum(g ** 2)) for g in record.grads.values()))
    assert (norm > clip_norm) == (clip_norm < 1.0), f"the gradient norm {norm} does not suit this case"
    grads = _clipped(record.grads, clip_norm)
    for name, value in result.checkpoint.model.parameters().items():
        expected = _first_update(optimizer, record.parameters[name], grads[name], learning_rate)
        np.testing.assert_allclose(to_numpy(value), expected, rtol=1e-9, atol=1e-12, err_msg=name)


def test_state_is_carried_across_windows_and_reset_at_each_epoch(backend, steps, tmp_path):
    _train(_random_text(60), tmp_path, backend, steps=11)
    first_window = steps[0].inputs
    epoch_starts = [k for k, record in enumerate(steps) if np.array_equal(record.inputs, first_window)]
    assert len(epoch_starts) >= 3, "the run must cross at least two epoch boundaries"
    for k, record in enumerate(steps):
        if k in epoch_starts:
            assert record.state_in is None or not any(part.any() for part in record.state_in), \
                f"step {k + 1} starts an epoch from a state carried from the previous epoch's last window"
        else:
            assert record.state_in is not None, f"step {k + 1} started from the zero state, not the carried one"
            for got, carried in zip(record.state_in, steps[k - 1].state_out, strict=True):
                np.testing.assert_array_equal(got, carried, err_msg=f"state into step {k + 1}")


def _unigram_entropy_bits(text: str) -> float:
    return -sum(n / len(text) * math.log2(n / len(text)) for n in Counter(text).values())


def test_training_loss_falls_well_below_the_unigram_entropy(backend, tmp_path):
    """A repeated sentence: its next character is (nearly) determined by the ones before it.

    A check of learning, not of the array API (the exact tests above run on every backend):
    its 150 steps take ~20 s under array_api_strict and torch's threads on 2 busy cores.
    """
    if backend.name not in ("numpy", "cupy"):
        pytest.skip("a learning check, run on numpy and cupy; the exact tests above cover this backend")
    text = "the quick brown fox jumps over the lazy dog. " * 40
    entropy = _unigram_entropy_bits(text)  # about 4.2 bits per character
    result = _train(text, tmp_path, backend, steps=150, batch_size=4, window=16, embedding_size=8,
                    hidden_size=32, num_layers=1, validation_fraction=0.1, learning_rate=0.02, dtype="float32")
    last = [entry["loss"] for entry in result.checkpoint.history[-10:]]
    training_bits = sum(last) / len(last) / math.log(2)
    validation_bits = result.validation_loss / math.log(2)
    assert training_bits < entropy / 4, (training_bits, entropy)
    assert validation_bits < entropy / 4, (validation_bits, entropy)
