"""`python -m xlstm train --cell slstm|mlstm|PATTERN`: the language model with xLSTM cells learns,
resumes exactly, samples, and refuses bad cell flags by name."""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from xlstm.__main__ import main
from xlstm.checkpoint import load_checkpoint
from xlstm.training import TrainConfig, train

TEXT = "the quick brown fox jumps over the lazy dog. " * 40
TINY = ["--batch-size", "2", "--window", "8", "--hidden-size", "8", "--embedding-size", "4", "--num-heads", "2",
        "--eval-every", "3", "--checkpoint-every", "3", "--validation-fraction", "0.2"]
PATTERNS = [("slstm", "1"), ("mlstm", "1"), ("mlstm,slstm", "2"), ("lstm,mlstm", "2")]


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def _train(text_file: Path, out: Path, cell: str, layers: str, *extra: str) -> int:
    return main(["train", "--text", str(text_file), "--out", str(out), *TINY, "--cell", cell, "--num-layers", layers,
                 *extra])


@pytest.mark.parametrize(("cell", "layers"), PATTERNS)
def test_resume_equals_uninterrupted_run_and_samples(text_file, tmp_path, capsys, cell, layers):
    assert _train(text_file, tmp_path / "whole", cell, layers, "--steps", "6") == 0
    assert _train(text_file, tmp_path / "parts", cell, layers, "--steps", "3") == 0
    assert _train(text_file, tmp_path / "parts", cell, layers, "--steps", "6", "--resume") == 0
    whole, parts = load_checkpoint(tmp_path / "whole"), load_checkpoint(tmp_path / "parts")
    assert [h["loss"] for h in whole.history] == [h["loss"] for h in parts.history]
    for name, value in whole.model.parameters().items():
        assert (value == parts.model.parameters()[name]).all(), name
    for mine, theirs in zip(whole.carried_state, parts.carried_state, strict=True):
        assert type(mine) is type(theirs)
        for a, b in zip(mine, theirs, strict=True):
            np.testing.assert_array_equal(a, b)
    kinds = cell.split(",") * (int(layers) if "," not in cell else 1)
    assert [type(c).__name__.lower().removesuffix("cell") for c in whole.model.stack.cells] == kinds
    capsys.readouterr()
    assert main(["sample", str(tmp_path / "whole"), "--prompt", "the ", "--length", "20", "--seed", "1"]) == 0
    assert capsys.readouterr().out.startswith("the ")


@pytest.mark.parametrize("cell", ["slstm", "mlstm"])
def test_learns_a_repeated_sentence(tmp_path, cell):
    """Validation bits per character fall far below the unigram entropy (~4.2 bits).

    Short runs are chaotic in float32 rounding (150 steps at 0.02 ended between 0.4 and 2.3 bits with
    the chunk size alone changed), so this one is long and gentle enough to end far below the bound
    for any seed: seeds 0-5 gave at most 0.62 bits (mLSTM) and 0.04 (sLSTM) against the bound's 1.1."""
    entropy = -sum(n / len(TEXT) * math.log2(n / len(TEXT)) for n in Counter(TEXT).values())
    config = TrainConfig(steps=400, batch_size=4, window=16, embedding_size=8, hidden_size=32, num_heads=4,
                         num_layers=1, cell=cell, validation_fraction=0.1, learning_rate=0.01, eval_every=400,
                         checkpoint_every=400)
    result = train(TEXT, config, tmp_path / "run", write=lambda line: None, progress=False)
    assert result.validation_loss / math.log(2) < entropy / 4, (result.validation_loss, entropy)


def test_bad_cell_flags_exit_2_by_name(text_file, tmp_path, capsys):
    cases = [(("gru", "1"), "cell must name kinds among lstm, slstm, mlstm"),
             (("slstm,mlstm", "3"), "names 2 layers but num_layers is 3"),
             (("slstm", "1", "--layer-norm"), "--layer-norm and --dropout-keep-prob apply to lstm cells only"),
             (("mlstm", "1", "--num-heads", "3"), "--num-heads 3 must divide --hidden-size 8")]
    for arguments, message in cases:
        assert _train(text_file, tmp_path / "run", *arguments, "--steps", "2") == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    assert _train(text_file, tmp_path / "run", "slstm", "1", "--steps", "3") == 0
    assert _train(text_file, tmp_path / "run", "mlstm", "1", "--steps", "6", "--resume") == 2
    assert "--cell 'slstm' → 'mlstm'" in capsys.readouterr().err
