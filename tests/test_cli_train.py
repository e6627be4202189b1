"""`python -m xlstm train` / `sample` end to end on a tiny text: resume, checkpoints, bad input."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from xlstm.__main__ import main
from xlstm.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TEXT = ("the quick brown fox jumps over the lazy dog. " * 12) + "pack my box with five dozen liquor jugs. " * 6
TINY = ["--batch-size", "2", "--window", "8", "--hidden-size", "8", "--embedding-size", "4", "--num-layers", "2",
        "--eval-every", "3", "--checkpoint-every", "3", "--validation-fraction", "0.2"]


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def _train(text_file: Path, out: Path, *extra: str) -> int:
    return main(["train", "--text", str(text_file), "--out", str(out), *TINY, *extra])


def test_train_then_sample(text_file, tmp_path, capsys):
    assert _train(text_file, tmp_path / "run", "--steps", "4") == 0
    printed = capsys.readouterr().out
    assert "unigram entropy" in printed and "bits per char" in printed and "sample" in printed
    checkpoint = load_checkpoint(tmp_path / "run")
    assert checkpoint.step == 4 and len(checkpoint.history) == 4
    assert main(["sample", str(tmp_path / "run"), "--prompt", "the ", "--length", "30", "--seed", "1"]) == 0
    first = capsys.readouterr().out
    assert first.startswith("the ") and len(first.rstrip("\n")) == 34
    main(["sample", str(tmp_path / "run" / "checkpoint.npz"), "--prompt", "the ", "--length", "30", "--seed", "1"])
    assert capsys.readouterr().out == first


def test_resume_equals_uninterrupted_run(text_file, tmp_path):
    assert _train(text_file, tmp_path / "whole", "--steps", "6", "--dropout-keep-prob", "0.8") == 0
    assert _train(text_file, tmp_path / "parts", "--steps", "3", "--dropout-keep-prob", "0.8") == 0
    assert _train(text_file, tmp_path / "parts", "--steps", "6", "--dropout-keep-prob", "0.8", "--resume") == 0
    whole, parts = load_checkpoint(tmp_path / "whole"), load_checkpoint(tmp_path / "parts")
    assert [h["loss"] for h in whole.history] == [h["loss"] for h in parts.history]
    for name, value in whole.model.parameters().items():
        assert (value == parts.model.parameters()[name]).all(), name


def test_same_seed_same_numbers(text_file, tmp_path):
    _train(text_file, tmp_path / "a", "--steps", "3")
    _train(text_file, tmp_path / "b", "--steps", "3")
    assert load_checkpoint(tmp_path / "a").history == load_checkpoint(tmp_path / "b").history


@pytest.mark.parametrize("damage", ["truncate", "garbage", "foreign"])
def test_corrupt_checkpoint_refused_and_kept(text_file, tmp_path, capsys, damage):
    _train(text_file, tmp_path / "run", "--steps", "3")
    path = tmp_path / "run" / "checkpoint.npz"
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    else:
        import numpy

        numpy.savez(path, weights=numpy.zeros(3))
    before = path.read_bytes()
    capsys.readouterr()
    assert main(["sample", str(tmp_path / "run")]) == 2
    assert _train(text_file, tmp_path / "run", "--steps", "6", "--resume") == 2
    error = capsys.readouterr().err
    assert "corrupt" in error or "not an xlstm" in error
    assert path.read_bytes() == before, "a refused checkpoint must not be touched"


def test_bad_input_exits_2_without_overwriting(text_file, tmp_path, capsys):
    _train(text_file, tmp_path / "run", "--steps", "3")
    saved = (tmp_path / "run" / "checkpoint.npz").read_bytes()
    cases = [
        (lambda: _train(text_file, tmp_path / "run", "--steps", "6", "--resume", "--hidden-size", "16"),
         "--hidden-size 8 → 16"),
        (lambda: _train(text_file, tmp_path / "run", "--steps", "6"), "already holds a checkpoint"),
        (lambda: main(["sample", str(tmp_path / "run"), "--prompt", "Zebra"]), "unknown character 'Z'"),
        (lambda: _train(text_file, text_file, "--steps", "2"), "is a file"),
        (lambda: _train(text_file, tmp_path / "new", "--steps", "2", "--window", "500"), "too short"),
        (lambda: _train(text_file, tmp_path / "fresh", "--steps", "2", "--resume"), "no checkpoint"),
    ]
    for run, message in cases:
        assert run() == 2
        assert message in capsys.readouterr().err
    assert (tmp_path / "run" / "checkpoint.npz").read_bytes() == saved
    for content in ("", "a"):
        (tmp_path / "short.txt").write_text(content)
        assert main(["train", "--text", str(tmp_path / "short.txt"), "--out", str(tmp_path / "x")]) == 2
        assert "short.txt" in capsys.readouterr().err


def test_train_command_runs_as_a_process(text_file, tmp_path):
    result = subprocess.run([sys.executable, "-m", "xlstm", "train", "--text", str(text_file), "--out",
                             str(tmp_path / "run"), "--steps", "2", *TINY], cwd=ROOT, capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    assert result.returncode == 0, result.stderr
    assert "validation:" in result.stdout
