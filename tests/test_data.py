"""Text data: vocabulary, default corpus, loading, train/validation split, BPTT batches."""
from __future__ import annotations

import array
import json

import array_api_compat
import numpy as np
import pytest

import xlstm_backends as backends
import xlstm
from xlstm.data import (
    DEFAULT_CORPUS_FILES,
    BatchStream,
    Vocabulary,
    default_corpus,
    load_text,
    split_train_validation,
)

ARTICLE = "long ago the mice had a general council to consider the"


# Vocabulary


def test_char_vocabulary_round_trip():
    text = "hello world\n"
    vocabulary = Vocabulary(text)
    assert vocabulary.level == "char"
    assert vocabulary.tokens == ("\n", " ", "d", "e", "h", "l", "o", "r", "w")
    assert len(vocabulary) == 9
    ids = vocabulary.encode(text)
    assert ids[:3] == [4, 3, 5] and all(type(i) is int for i in ids)
    assert vocabulary.decode(ids) == text
    assert vocabulary.decode(np.asarray(ids)) == text  # array elements index too


def test_word_vocabulary_is_the_articles():
    vocabulary = Vocabulary(ARTICLE, level="word")
    assert vocabulary.tokens == ("a", "ago", "consider", "council", "general", "had", "long", "mice", "the", "to")
    assert vocabulary.encode("the mice") == [8, 7]
    assert vocabulary.decode(vocabulary.encode(ARTICLE)) == ARTICLE
    assert vocabulary.decode(vocabulary.encode("  the\n\tmice ")) == "the mice"  # whitespace collapses


def test_unknown_tokens_are_named_with_their_position():
    with pytest.raises(ValueError, match=r"unknown character 'x' at position 2 of the text"):
        Vocabulary("hello").encode("hex")
    with pytest.raises(ValueError, match=r"unknown character '\\t' at position 0"):
        Vocabulary("hello").encode("\the")
    with pytest.raises(ValueError, match=r"unknown word 'cat' at word 2 of the text"):
        Vocabulary(ARTICLE, level="word").encode("the mice cat had")


def test_decode_refuses_ids_outside_the_vocabulary():
    vocabulary = Vocabulary("abc")
    with pytest.raises(ValueError, match=r"ids\[1\] = 3 is not an id of this vocabulary \(0 to 2\)"):
        vocabulary.decode([0, 3])
    with pytest.raises(ValueError, match=r"ids\[0\] = -1"):
        vocabulary.decode([-1])
    with pytest.raises(TypeError, match="ids must be an iterable of integers"):
        vocabulary.decode([0.0])
    with pytest.raises(TypeError, match="ids must be an iterable of integers"):
        vocabulary.decode("abc")


@pytest.mark.parametrize("level", ["char", "word"])
def test_to_dict_from_dict_round_trip_through_json(level):
    vocabulary = Vocabulary(ARTICLE + "\n", level=level)
    data = json.loads(json.dumps(vocabulary.to_dict()))
    restored = Vocabulary.from_dict(data)
    assert restored == vocabulary and hash(restored) == hash(vocabulary)
    assert restored.encode(ARTICLE) == vocabulary.encode(ARTICLE)


def test_equality():
    assert Vocabulary("abc") == Vocabulary("cabbage"[:3] + "c")
    assert Vocabulary("abc") != Vocabulary("abd")
    assert Vocabulary("a b", level="char") != Vocabulary("a b", level="word")
    assert Vocabulary("abc") != {"level": "char", "tokens": ["a", "b", "c"]}


@pytest.mark.parametrize(
    "data, error, message",
    [
        (["a", "b"], TypeError, "vocabulary data must be a dict, got list"),
        ({"tokens": ["a"]}, ValueError, r"exactly the keys 'level' and 'tokens', got \['tokens'\]"),
        ({"level": "char", "tokens": ["a"], "x": 1}, ValueError, "exactly the keys"),
        ({"level": "byte", "tokens": ["a"]}, ValueError, "vocabulary level must be 'char' or 'word', got 'byte'"),
        ({"level": "char", "tokens": []}, ValueError, "vocabulary tokens must be a non-empty list of str"),
        ({"level": "char", "tokens": "abc"}, ValueError, "vocabulary tokens must be a non-empty list of str"),
        ({"level": "char", "tokens": ["a", 2]}, ValueError, r"tokens\[1\] = 2 is not a valid character"),
        ({"level": "char", "tokens": ["a", "bc"]}, ValueError, r"tokens\[1\] = 'bc' is not a valid character"),
        ({"level": "word", "tokens": ["a b"]}, ValueError, r"tokens\[0\] = 'a b' is not a valid word"),
        ({"level": "word", "tokens": [""]}, ValueError, r"tokens\[0\] = '' is not a valid word"),
        ({"level": "char", "tokens": ["b", "a"]}, ValueError, "must be sorted and distinct"),
        ({"level": "char", "tokens": ["a", "a"]}, ValueError, "must be sorted and distinct"),
    ],
)
def test_from_dict_refuses_malformed_data(data, error, message):
    with pytest.raises(error, match=message):
        Vocabulary.from_dict(data)


def test_vocabulary_bad_input():
    with pytest.raises(ValueError, match="text must contain at least one character, got ''"):
        Vocabulary("")
    with pytest.raises(ValueError, match="text must contain at least one word"):
        Vocabulary(" \n ", level="word")
    with pytest.raises(ValueError, match="level must be 'char' or 'word', got 'chars'"):
        Vocabulary("abc", level="chars")
    with pytest.raises(TypeError, match="text must be a str, got bytes"):
        Vocabulary(b"abc")
    with pytest.raises(TypeError, match="text must be a str, got list"):
        Vocabulary("abc").encode(["a"])


# Default corpus


def test_default_corpus_is_deterministic_python_source():
    corpus = default_corpus()
    assert len(corpus) == 1_000_000
    assert corpus == default_corpus()
    assert corpus.startswith('"""Text wrapping and filling.')  # textwrap.py, the first file
    assert corpus.count("def ") > 1000 and "class " in corpus and "import " in corpus
    assert corpus.isascii() and "\r" not in corpus
    assert default_corpus(1000) == corpus[:1000]
    assert len(DEFAULT_CORPUS_FILES) == len(set(DEFAULT_CORPUS_FILES))


@pytest.mark.parametrize("max_chars", [0, -1, 1.5, True, "10"])
def test_default_corpus_refuses_bad_max_chars(max_chars):
    with pytest.raises(ValueError, match="max_chars must be a positive integer"):
        default_corpus(max_chars)


# Loading text


def test_load_text_normalises_newlines_and_drops_a_bom(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes("\ufeffé line\r\nnext\rlast\n".encode())
    assert load_text(path) == "é line\nnext\nlast\n"
    assert load_text(str(path)) == "é line\nnext\nlast\n"


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "has 0 characters; a language model needs at least 2"),
        (b"a", "has 1 character; a language model needs at least 2"),
        (b"\xef\xbb\xbf", "has 0 characters"),
        (b"ab\xff\xfecd", r"is not UTF-8 text: byte 2 \(b'\\xff'\) cannot be decoded"),
    ],
)
def test_load_text_refuses_unusable_files(tmp_path, content, message):
    path = tmp_path / "t.txt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        load_text(path)


def test_load_text_refuses_missing_files_and_directories(tmp_path):
    with pytest.raises(ValueError, match=r"text file '.*nope\.txt' does not exist"):
        load_text(tmp_path / "nope.txt")
    with pytest.raises(ValueError, match="is a directory, not a text file"):
        load_text(tmp_path)
    with pytest.raises(TypeError, match="path must be a str or os.PathLike, got int"):
        load_text(3)


# Train / validation split


def test_split_is_contiguous_with_the_tail_for_validation():
    ids = list(range(100))
    train, validation = split_train_validation(ids)
    assert train == list(range(90)) and validation == list(range(90, 100))
    train, validation = split_train_validation(array.array("q", ids), validation_fraction=0.25)
    assert isinstance(train, array.array) and list(train) + list(validation) == ids and len(validation) == 25


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5, float("nan"), float("inf")])
def test_split_refuses_fractions_outside_zero_one(fraction):
    with pytest.raises(ValueError, match="validation_fraction must be strictly between 0 and 1"):
        split_train_validation(list(range(100)), fraction)


def test_split_bad_input():
    with pytest.raises(TypeError, match="validation_fraction must be a float, got str"):
        split_train_validation(list(range(100)), "0.1")
    with pytest.raises(TypeError, match="validation_fraction must be a float, got bool"):
        split_train_validation(list(range(100)), True)
    with pytest.raises(ValueError, match="of 10 tokens leaves 9 for training and 1 for validation"):
        split_train_validation(list(range(10)), 0.1)
    with pytest.raises(TypeError, match="ids must be a sequence of token ids"):
        split_train_validation("some text")


# BPTT batches


def _host(stream, step):
    inputs, targets = stream.window(step)
    return xlstm.to_numpy(inputs), xlstm.to_numpy(targets)


def test_rows_continue_across_windows_and_targets_are_shifted_inputs():
    ids = list(range(103))  # ids equal their positions: rows of 25, (25 - 1) // 5 = 4 windows
    stream = BatchStream(ids, batch_size=4, window=5, backend="numpy")
    assert len(stream) == 4 and stream.batch_size == 4 and stream.window_length == 5
    for k in range(len(stream)):
        inputs, targets = _host(stream, k)
        assert inputs.shape == targets.shape == (4, 5) and inputs.dtype == np.int64
        np.testing.assert_array_equal(inputs[:, 0], [25 * b + 5 * k for b in range(4)])
        np.testing.assert_array_equal(targets, inputs + 1)  # the next token of the same row
        if k + 1 < len(stream):
            following, _ = _host(stream, k + 1)
            np.testing.assert_array_equal(following[:, 0], targets[:, -1])  # row b continues


def test_window_wraps_around_epochs_and_equals_iteration():
    stream = BatchStream(list(range(50)) * 3, batch_size=3, window=4, backend="numpy")
    epoch = [(xlstm.to_numpy(x), xlstm.to_numpy(y)) for x, y in stream]
    assert len(epoch) == len(stream) == (50 - 1) // 4
    for step in range(3 * len(stream)):
        inputs, targets = _host(stream, step)
        np.testing.assert_array_equal(inputs, epoch[step % len(stream)][0])
        np.testing.assert_array_equal(targets, epoch[step % len(stream)][1])


def test_a_window_longer_than_the_rows_allow_is_refused():
    with pytest.raises(
        ValueError,
        match=r"too short for batch_size 4 and window 10: its 40 tokens make 4 rows of 10, and each row needs "
        r"at least window \+ 1 = 11 .*44 tokens in all",
    ):
        BatchStream(list(range(40)), batch_size=4, window=10)
    BatchStream(list(range(44)), batch_size=4, window=10)  # exactly enough: one window


@pytest.mark.parametrize(
    "ids, batch_size, window, error, message",
    [
        ([], 1, 1, ValueError, "its 0 tokens"),
        ([0, 1], 0, 1, ValueError, "batch_size must be a positive integer, got 0"),
        ([0, 1], 1, 0, ValueError, "window must be a positive integer, got 0"),
        ([0, 1], 1.0, 1, ValueError, "batch_size must be a positive integer, got 1.0"),
        ([0, -1, 2], 1, 1, ValueError, "ids must be non-negative token ids, got -1"),
        ([0, 1.5, 2], 1, 1, TypeError, "ids must hold only integers"),
        ("abc", 1, 1, TypeError, "ids must be a sequence of token ids"),
    ],
)
def test_batch_stream_bad_input(ids, batch_size, window, error, message):
    with pytest.raises(error, match=message):
        BatchStream(ids, batch_size, window)


def test_window_refuses_bad_steps():
    stream = BatchStream(list(range(10)), 1, 3)
    for step in (-1, 1.0, True):
        with pytest.raises(ValueError, match="step must be a non-negative integer"):
            stream.window(step)


def test_batches_are_int64_on_the_requested_backend(backend):
    stream = BatchStream(array.array("q", range(30)), batch_size=2, window=4, backend=backend)
    for inputs, targets in stream:
        for x in (inputs, targets):
            assert backends.library_of(x).name == backend.name
            assert array_api_compat.device(x) == backend.device
            assert x.dtype == backend.xp.int64 and tuple(x.shape) == (2, 4)
    np.testing.assert_array_equal(xlstm.to_numpy(stream.window(1)[0]), [[4, 5, 6, 7], [19, 20, 21, 22]])
