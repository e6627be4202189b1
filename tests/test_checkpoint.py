"""Checkpoint files: atomic writes, refusal of corrupt, foreign and newer files, any backend."""
from __future__ import annotations

import numpy as np
import pytest

import xlstm
from xlstm_backends import storage
from xlstm.checkpoint import FORMAT, Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from xlstm.data import Vocabulary
from xlstm.models import CharLM


def _checkpoint(backend=None):
    vocabulary = Vocabulary("hello world")
    model = CharLM(len(vocabulary), embedding_size=3, hidden_size=4, num_layers=2, layer_norm=True, seed=1,
                   backend=backend)
    optimizer = xlstm.optim.Adam()
    optimizer.step(model.parameters(), {k: v * 0.5 for k, v in model.parameters().items()})
    return Checkpoint(model, vocabulary, {"steps": 3}, 3, optimizer.state_dict(), model.zero_state(2),
                      [{"step": 1, "loss": 2.5}])


def test_round_trip_across_backends_is_bit_exact(backend, tmp_path):
    saved = _checkpoint(backend)
    save_checkpoint(tmp_path / "c.npz", saved)
    for target in ("numpy", backend):
        loaded = load_checkpoint(tmp_path / "c.npz", backend=target)
        for name, value in saved.model.parameters().items():
            np.testing.assert_array_equal(xlstm.to_numpy(loaded.model.parameters()[name]), xlstm.to_numpy(value))
        assert loaded.vocabulary == saved.vocabulary and loaded.step == 3 and loaded.history == saved.history
        exp_avg = loaded.optimizer_state["state"]["cell_1/norm_gain"]["exp_avg"]
        np.testing.assert_array_equal(xlstm.to_numpy(exp_avg),
                                      xlstm.to_numpy(saved.optimizer_state["state"]["cell_1/norm_gain"]["exp_avg"]))
        assert len(loaded.carried_state) == 2


def test_crash_mid_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "c.npz"
    save_checkpoint(path, _checkpoint())
    before = path.read_bytes()

    def crash(file, **arrays):
        file.write(b"half a checkpoint")
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(storage.numpy, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, _checkpoint())
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"], "no temporary file is left behind"


def test_newer_foreign_and_damaged_files_are_refused(tmp_path):
    path = tmp_path / "c.npz"
    save_checkpoint(path, _checkpoint())
    header, arrays = storage.read_arrays(path)
    storage.write_arrays(tmp_path / "newer.npz", {**header, "version": 99}, arrays)
    with pytest.raises(CheckpointError, match="format version 99; this xlstm reads versions up to 1"):
        load_checkpoint(tmp_path / "newer.npz")
    storage.write_arrays(tmp_path / "foreign.npz", {"format": "something-else"}, {})
    with pytest.raises(CheckpointError, match="is not an xlstm CharLM checkpoint"):
        load_checkpoint(tmp_path / "foreign.npz")
    del arrays["model/embedding"]
    storage.write_arrays(tmp_path / "damaged.npz", header, arrays)
    with pytest.raises(CheckpointError, match="is damaged: KeyError"):
        load_checkpoint(tmp_path / "damaged.npz")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.npz")
    assert header["format"] == FORMAT
