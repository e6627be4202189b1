"""Training on a streamed file: metrics.jsonl across an interrupted run, --eval-tokens, the cache
on --resume, flag help, and the bad input of issue 9 (exit 2, nothing overwritten)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import xlstm
from xlstm.__main__ import build_parser, main
from xlstm.checkpoint import load_checkpoint
from xlstm.metrics import read_metrics
from xlstm.models import CharLM
from xlstm.training import TrainConfig, train

TEXT = ("the quick brown fox jumps over the lazy dog. " * 12) + "pack my box with five dozen liquor jugs. " * 6
TINY = {"batch_size": 2, "window": 8, "hidden_size": 8, "embedding_size": 4, "num_layers": 1,
        "validation_fraction": 0.2, "eval_every": 3, "checkpoint_every": 3}
STEP_FIELDS = {"step", "loss", "tokens_per_s", "learning_rate", "grad_norm"}
EVAL_FIELDS = {"step", "validation_loss", "bits_per_token"}


def _quiet_train(text, out, steps, resume=False, **settings):
    config = TrainConfig(steps=steps, **{**TINY, **settings})
    return train(text, config, out, resume=resume, write=lambda line: None, progress=False)


def _without_timing(records):
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in records]


def test_metrics_log_of_an_interrupted_and_resumed_run_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    text = tmp_path / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    _quiet_train(text, tmp_path / "whole", 8, dropout_keep_prob=0.8)
    whole = read_metrics(tmp_path / "whole" / "metrics.jsonl")

    real, calls = CharLM.loss_and_grads, []

    def dies_at_step_8(self, *args):  # steps 7 and 8 come after the checkpoint at 6
        calls.append(1)
        if len(calls) == 8:
            raise KeyboardInterrupt
        return real(self, *args)

    monkeypatch.setattr(CharLM, "loss_and_grads", dies_at_step_8)
    with pytest.raises(KeyboardInterrupt):
        _quiet_train(text, tmp_path / "parts", 8, dropout_keep_prob=0.8)
    monkeypatch.setattr(CharLM, "loss_and_grads", real)
    cut = read_metrics(tmp_path / "parts" / "metrics.jsonl")
    assert load_checkpoint(tmp_path / "parts").step == 6 and max(r["step"] for r in cut) == 7

    _quiet_train(text, tmp_path / "parts", 8, resume=True, dropout_keep_prob=0.8)
    parts = read_metrics(tmp_path / "parts" / "metrics.jsonl")
    assert _without_timing(parts) == _without_timing(whole)
    assert [r["step"] for r in whole if "loss" in r] == list(range(1, 9))
    assert [r["step"] for r in whole if "validation_loss" in r] == [3, 6, 8]
    for record in whole:
        assert set(record) in (STEP_FIELDS, EVAL_FIELDS), record
        assert all(isinstance(v, (int, float)) and np.isfinite(v) for v in record.values())
        if "validation_loss" in record:
            assert record["bits_per_token"] == pytest.approx(record["validation_loss"] / np.log(2))
        else:
            assert record["learning_rate"] == 5e-3 and record["grad_norm"] > 0


def test_a_file_trains_exactly_like_the_same_text_in_memory(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    from_file = _quiet_train(text, tmp_path / "file", 4)
    from_str = _quiet_train(TEXT, tmp_path / "str", 4)
    assert (tmp_path / "file" / "tokens.bin").exists() and not (tmp_path / "str" / "tokens.bin").exists()
    assert from_file.validation_loss == from_str.validation_loss and from_file.sample == from_str.sample
    assert from_file.unigram_entropy_bits == pytest.approx(from_str.unigram_entropy_bits, rel=1e-12)
    for name, value in from_str.checkpoint.model.parameters().items():
        np.testing.assert_array_equal(xlstm.to_numpy(from_file.checkpoint.model.parameters()[name]),
                                      xlstm.to_numpy(value), err_msg=name)


def test_eval_tokens_evaluates_only_the_head_of_the_validation_text(tmp_path):
    split = len(TEXT) - round(len(TEXT) * 0.2)
    tail_changed = TEXT[: split + 40] + TEXT[split + 40 :][::-1]  # same characters, other order after 40
    head_changed = TEXT[:split] + TEXT[split:][::-1]
    loss = {name: _quiet_train(text, tmp_path / name, 1, eval_tokens=20).validation_loss
            for name, text in (("same", TEXT), ("tail", tail_changed), ("head", head_changed))}
    assert loss["tail"] == loss["same"] != loss["head"]
    everything = _quiet_train(TEXT, tmp_path / "all", 1, eval_tokens=None).validation_loss
    assert everything == _quiet_train(TEXT, tmp_path / "big", 1, eval_tokens=10**9).validation_loss
    assert everything != loss["same"]


def _cli_train(text: Path, out: Path, *extra: str) -> int:
    tiny = [part for name, value in TINY.items() for part in ("--" + name.replace("_", "-"), str(value))]
    return main(["train", "--text", str(text), "--out", str(out), *tiny, *extra])


@pytest.mark.parametrize("value, message", [("0", "expected a positive number of tokens or 'all', got '0'"),
                                            ("-4", "got '-4'"), ("lots", "got 'lots'"), ("1.5", "got '1.5'")])
def test_bad_eval_tokens_exit_2_naming_the_flag(tmp_path, capsys, value, message):
    text = tmp_path / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    with pytest.raises(SystemExit) as exit_:
        _cli_train(text, tmp_path / "run", "--steps", "2", "--eval-tokens", value)
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert "--eval-tokens" in error and message in error
    assert not (tmp_path / "run").exists()


def test_bad_input_of_a_streamed_run_exits_2_and_overwrites_nothing(tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    run = tmp_path / "run"
    assert _cli_train(text, run, "--steps", "3") == 0
    saved = {name: (run / name).read_bytes() for name in ("checkpoint.npz", "tokens.bin", "tokens.json",
                                                          "metrics.jsonl")}
    other = tmp_path / "other.txt"
    other.write_text(TEXT.upper(), encoding="utf-8")
    broken = tmp_path / "broken.txt"
    broken.write_bytes(TEXT.encode("utf-8")[:100] + b"\xc3(" + b"rest")
    cases = [
        (lambda: _cli_train(text, run, "--steps", "6", "--resume", "--eval-tokens", "5"),
         "eval_tokens (--eval-tokens) must be None ('all') or an integer of at least window + 1 = 9, got 5"),
        (lambda: _cli_train(other, run, "--steps", "6", "--resume"), "different text"),
        (lambda: _cli_train(broken, run, "--steps", "6", "--resume"), "byte 100 (b'\\xc3') cannot be decoded"),
        (lambda: _cli_train(text, run, "--steps", "6", "--resume", "--level", "word"), "--level 'char' → 'word'"),
        (lambda: _cli_train(tmp_path, tmp_path / "new", "--steps", "2"), "is a directory"),
    ]
    for run_it, message in cases:
        assert run_it() == 2
        assert message in capsys.readouterr().err
    assert {name: (run / name).read_bytes() for name in saved} == saved
    assert not (tmp_path / "new").exists()


def test_resume_reuses_the_token_cache(tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    assert _cli_train(text, tmp_path / "run", "--steps", "3") == 0
    assert "token cache" in capsys.readouterr().out
    inode = (tmp_path / "run" / "tokens.bin").stat().st_ino
    assert _cli_train(text, tmp_path / "run", "--steps", "4", "--resume") == 0
    assert "token cache" not in capsys.readouterr().out
    assert (tmp_path / "run" / "tokens.bin").stat().st_ino == inode


def test_every_train_and_sample_flag_has_help_with_its_default():
    commands = build_parser()._subparsers._group_actions[0].choices
    for command in ("train", "sample"):
        for action in commands[command]._actions:
            if action.option_strings and action.dest != "help":
                assert action.help and len(action.help) > 10, (command, action.dest)
        text = commands[command].format_help()
        assert text.count("(default:") >= len([a for a in commands[command]._actions
                                                if a.option_strings and a.dest != "help"]) - 1, text
    assert "evaluate the first N tokens" in commands["train"].format_help()


def test_config_eval_tokens_is_checked():
    assert TrainConfig().eval_tokens == 50_000  # the default corpus's whole validation split
    for bad in (0, 64, True, 2.5, "all"):
        with pytest.raises(ValueError, match=r"eval_tokens \(--eval-tokens\)"):
            TrainConfig(eval_tokens=bad)
    assert TrainConfig(eval_tokens=None).eval_tokens is None and TrainConfig(eval_tokens=65).eval_tokens == 65


def test_metrics_log_reader_skips_a_line_cut_by_a_crash_and_refuses_garbage(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n" + '{"step": 2, "lo', encoding="utf-8")
    assert read_metrics(path) == [{"step": 1, "loss": 2.0}]
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 2 is not a JSON object"):
        read_metrics(path)


def test_save_to_a_directory_and_boolean_lengths_are_refused(tmp_path):
    cell = xlstm.LSTMCell(2, 3, backend="numpy")
    with pytest.raises(ValueError, match="is a directory; give a file name inside it"):
        xlstm.save(cell, tmp_path)
    assert list(tmp_path.iterdir()) == []
    inputs = xlstm.asarray(np.zeros((2, 3, 3)), dtype="float32", backend="numpy")
    with pytest.raises(TypeError, match=r"sequence_length\[0\] must be an integer, got True"):
        xlstm.dynamic_rnn(cell, inputs, sequence_length=[True, 3])
