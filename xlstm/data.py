"""Text data for language models: vocabulary, corpus, train/validation split, BPTT batches.

Text is read in pieces (`read_text_chunks`); token ids stay host-side, in a list or in a token
file's memory map (`xlstm.corpus`), until `BatchStream` moves them to a backend as int64.
"""
from __future__ import annotations

import array
import codecs
import math
import operator
import os
import sysconfig
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from xlstm_backends import Backend, asarray, get_backend, library_of
from xlstm.checks import check_integer, check_positive_int, namespace_of

LEVELS = ("char", "word")

# The default corpus: well-known pure-Python standard-library modules, read in this order.
# Each exists on CPython 3.10 to 3.13 and is ASCII-only there (a small character
# vocabulary); together they hold about 1.3 million characters.
DEFAULT_CORPUS_FILES = (
    "textwrap.py",
    "string.py",
    "collections/__init__.py",
    "difflib.py",
    "argparse.py",
    "dataclasses.py",
    "enum.py",
    "inspect.py",
    "typing.py",
    "shutil.py",
    "tempfile.py",
    "configparser.py",
    "pprint.py",
    "calendar.py",
    "contextlib.py",
    "copy.py",
    "queue.py",
    "csv.py",
    "logging/__init__.py",
    "unittest/case.py",
    "ast.py",
    "json/__init__.py",
    "json/decoder.py",
    "json/encoder.py",
    "threading.py",
    "subprocess.py",
    "optparse.py",
    "sched.py",
    "abc.py",
    "fnmatch.py",
    "glob.py",
)


class Vocabulary:
    """The sorted distinct characters (or whitespace-separated words) of a text, numbered 0..n-1.

    Sorting makes the ids depend only on the set of tokens, so one text always gives one vocabulary.
    """

    def __init__(self, text: str, level: str = "char") -> None:
        _check_level(level)
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        tokens = sorted(set(_split(text, level)))
        if not tokens:
            raise ValueError(f"text must contain at least one {_noun(level)}, got {text!r:.80}")
        self._set(tuple(tokens), level)

    @classmethod
    def from_distinct(cls, tokens: Iterable[str], level: str) -> Vocabulary:
        """The vocabulary of a text whose distinct tokens are `tokens` (gathered while streaming it)."""
        _check_level(level)
        vocabulary = cls.__new__(cls)
        vocabulary._set(tuple(sorted(tokens)), level)
        if not vocabulary.tokens:
            raise ValueError(f"the text must contain at least one {_noun(level)}")
        return vocabulary

    def _set(self, tokens: tuple[str, ...], level: str) -> None:
        self._tokens = tokens
        self._level = level
        self._ids = {token: i for i, token in enumerate(tokens)}

    @property
    def tokens(self) -> tuple[str, ...]:
        """The tokens in id order."""
        return self._tokens

    @property
    def level(self) -> str:
        """'char' or 'word'."""
        return self._level

    def __len__(self) -> int:
        return len(self._tokens)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocabulary):
            return NotImplemented
        return (self._level, self._tokens) == (other._level, other._tokens)

    def __hash__(self) -> int:
        return hash((self._level, self._tokens))

    def __repr__(self) -> str:
        return f"Vocabulary(level={self._level!r}, size={len(self)})"

    def encode(self, text: str) -> list[int]:
        """The ids of `text`'s tokens; an unknown token is a ValueError naming it and its position."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        tokens = _split(text, self._level)
        try:
            return [self._ids[token] for token in tokens]
        except KeyError:
            position, token = next((p, t) for p, t in enumerate(tokens) if t not in self._ids)
            where = "position" if self._level == "char" else "word"
            raise ValueError(
                f"unknown {_noun(self._level)} {token!r} at {where} {position} of the text: "
                f"it is not in the vocabulary of {len(self)} {_noun(self._level)}s"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        """The text of `ids` (words are joined with single spaces)."""
        try:
            values = [operator.index(i) for i in ids]
        except TypeError:
            raise TypeError(f"ids must be an iterable of integers, got {type(ids).__name__}") from None
        bad = next((p for p, i in enumerate(values) if not 0 <= i < len(self)), None)
        if bad is not None:
            raise ValueError(f"ids[{bad}] = {values[bad]} is not an id of this vocabulary (0 to {len(self) - 1})")
        separator = "" if self._level == "char" else " "
        return separator.join(self._tokens[i] for i in values)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data for checkpoints: {'level': ..., 'tokens': [...]}."""
        return {"level": self._level, "tokens": list(self._tokens)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Vocabulary:
        """The vocabulary `to_dict` saved; a malformed dict is a ValueError/TypeError saying what is wrong."""
        if not isinstance(data, Mapping):
            raise TypeError(f"vocabulary data must be a dict, got {type(data).__name__}")
        keys = set(data)
        if keys != {"level", "tokens"}:
            raise ValueError(
                "vocabulary data must have exactly the keys 'level' and 'tokens', "
                f"got {sorted(keys, key=str)}"
            )
        level, tokens = data["level"], data["tokens"]
        _check_level(level, name="vocabulary level")
        if not isinstance(tokens, (list, tuple)) or not tokens:
            raise ValueError(f"vocabulary tokens must be a non-empty list of str, got {tokens!r:.80}")
        for position, token in enumerate(tokens):
            if not isinstance(token, str) or _split(token, level) != [token]:
                raise ValueError(f"vocabulary tokens[{position}] = {token!r} is not a valid {_noun(level)}")
            if position and tokens[position - 1] >= token:
                raise ValueError(
                    f"vocabulary tokens must be sorted and distinct, as Vocabulary makes them: "
                    f"tokens[{position - 1}] = {tokens[position - 1]!r} comes before tokens[{position}] = {token!r}"
                )
        vocabulary = cls.__new__(cls)
        vocabulary._set(tuple(tokens), level)
        return vocabulary


def _check_level(level: Any, name: str = "level") -> None:
    if level not in LEVELS:
        raise ValueError(f"{name} must be 'char' or 'word', got {level!r}")


def _split(text: str, level: str) -> list[str]:
    return list(text) if level == "char" else text.split()


def _noun(level: str) -> str:
    return "character" if level == "char" else "word"


def default_corpus(max_chars: int = 1_000_000) -> str:
    """The first `max_chars` characters of the stdlib files in DEFAULT_CORPUS_FILES, concatenated.

    Needs no download; it is fixed for a given Python installation (the files differ slightly
    between Python versions). Newlines are normalised to '\\n'.
    """
    check_positive_int("max_chars", max_chars)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    parts: list[str] = []
    length = 0
    for name in DEFAULT_CORPUS_FILES:
        if length >= max_chars:
            break
        path = stdlib / name
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise FileNotFoundError(
                f"the default corpus needs the standard-library source file {path}, which cannot be read "
                f"({error.strerror or error}); this Python ships without its sources: give a text file instead"
            ) from None
        parts.append(text)
        length += len(text)
    return "".join(parts)[:max_chars]


CHUNK_BYTES = 1 << 20  # bytes read at a time when streaming a text file (1 MiB)


def read_text_chunks(
    path: str | os.PathLike[str], chunk_bytes: int = CHUNK_BYTES, digest: Any = None
) -> Iterator[str]:
    """The UTF-8 text of the file at `path` in pieces, normalised as `load_text` describes.

    Reads `chunk_bytes` at a time through an incremental decoder, so a character split between
    two reads is still whole; a '\\r' ending a piece waits for the next, so '\\r\\n' across a
    boundary is one newline. Every byte read also goes to `digest.update` when one is given.
    """
    file = checked_text_file(path)
    check_positive_int("chunk_bytes", chunk_bytes)
    decoder = codecs.getincrementaldecoder("utf-8")()
    held, started, offset = "", False, 0
    try:
        stream = file.open("rb")
    except OSError as error:
        raise ValueError(f"cannot read text file {str(file)!r}: {error.strerror or error}") from None
    with stream:
        while True:
            data = stream.read(chunk_bytes)
            if digest is not None:
                digest.update(data)
            try:
                text = decoder.decode(data, final=not data)
            except UnicodeDecodeError as error:
                pending = len(decoder.getstate()[0])  # undecoded bytes carried from the previous read
                raise ValueError(
                    f"text file {str(file)!r} is not UTF-8 text: byte {offset - pending + error.start} "
                    f"({error.object[error.start:error.start + 1]!r}) cannot be decoded"
                ) from None
            offset += len(data)
            if text and not started:  # a byte-order mark can only lead the whole text
                text, started = text.removeprefix("\ufeff"), True
            text, held = held + text, ""
            if data and text.endswith("\r"):
                text, held = text[:-1], "\r"
            if text:
                yield text.replace("\r\n", "\n").replace("\r", "\n")
            if not data:
                return


def checked_text_file(path: Any) -> Path:
    """`path` as a Path to an existing file; otherwise a TypeError/ValueError saying what it is."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    file = Path(path)
    if not file.exists():
        raise ValueError(f"text file {str(file)!r} does not exist")
    if file.is_dir():
        raise ValueError(f"text file {str(file)!r} is a directory, not a text file")
    return file


def check_text_length(path: str | os.PathLike[str], length: int) -> None:
    """A text of fewer than two characters has nothing to predict: a ValueError saying so."""
    if length < 2:
        raise ValueError(
            f"text file {str(path)!r} has {length} character{'s' if length != 1 else ''}; "
            "a language model needs at least 2 (an input and the character that follows it)"
        )


def load_text(path: str | os.PathLike[str]) -> str:
    """The UTF-8 text of the file at `path`, with newlines normalised to '\\n' and a leading BOM dropped.

    A missing file, a directory, undecodable bytes and a text of fewer than two characters
    (nothing to predict) are ValueErrors that say which.
    """
    text = "".join(read_text_chunks(path))
    check_text_length(path, len(text))
    return text


def split_train_validation(
    ids: Sequence[int], validation_fraction: float = 0.1
) -> tuple[Sequence[int], Sequence[int]]:
    """(train, validation): the head and the tail of `ids`, the tail holding `validation_fraction` of them.

    A contiguous split keeps the validation text unseen and its sequence intact for BPTT windows.
    """
    _check_ids_type(ids)
    if isinstance(validation_fraction, bool) or not isinstance(validation_fraction, (int, float)):
        raise TypeError(f"validation_fraction must be a float, got {type(validation_fraction).__name__}")
    if not (math.isfinite(validation_fraction) and 0 < validation_fraction < 1):
        raise ValueError(f"validation_fraction must be strictly between 0 and 1, got {validation_fraction!r}")
    validation_size = round(len(ids) * validation_fraction)
    train_size = len(ids) - validation_size
    if min(train_size, validation_size) < 2:
        raise ValueError(
            f"validation_fraction {validation_fraction} of {len(ids)} tokens leaves {train_size} for training "
            f"and {validation_size} for validation; each part needs at least 2 (an input and its target)"
        )
    return ids[:train_size], ids[train_size:]


def _check_ids_type(ids: Any) -> None:
    if library_of(ids) is not None:  # a host array, such as a token file's memory map
        return
    if isinstance(ids, (str, bytes)) or not isinstance(ids, (Sequence, array.array)):
        raise TypeError(f"ids must be a sequence of token ids (a list, array.array or host array), "
                        f"got {type(ids).__name__}")


class BatchStream:
    """Contiguous [batch_size, window] windows of a token sequence for truncated BPTT (the PTB reader's).

    `ids` is cut into `batch_size` equal rows (the remainder is dropped); window k has
    inputs = rows[:, k*window : (k+1)*window] and targets one step ahead, so row b of window
    k+1 continues row b of window k and the LSTM state can carry across windows. A list's
    token matrix is put on the backend once, as int64, and windows are slices of it; an array
    (a memory map) stays where it is, and each window moves to the backend as int64 when asked.
    """

    def __init__(
        self,
        ids: Sequence[int],
        batch_size: int,
        window: int,
        *,
        backend: str | Backend | None = None,
        device: Any = None,
    ) -> None:
        _check_ids_type(ids)
        check_positive_int("batch_size", batch_size)
        check_positive_int("window", window)
        row_length = len(ids) // batch_size
        num_windows = max(row_length - 1, 0) // window
        if num_windows == 0:
            raise ValueError(
                f"the text is too short for batch_size {batch_size} and window {window}: its {len(ids)} tokens "
                f"make {batch_size} rows of {row_length}, and each row needs at least window + 1 = {window + 1} "
                f"(inputs and targets one step ahead), i.e. {batch_size * (window + 1)} tokens in all; "
                "use a smaller window or batch_size, or a longer text"
            )
        target = get_backend(backend, device)
        used = batch_size * row_length
        self.batch_size = batch_size
        self.window_length = window
        self.num_windows = num_windows
        self.backend = target
        if library_of(ids) is not None:
            # An array (a token file's memory map): the rows are a view of it, and each window
            # moves to the backend on its own, so memory does not grow with the text.
            self._source = namespace_of(ids=ids)
            check_integer("ids", ids, self._source)
            self._rows = self._source.reshape(ids[:used], (batch_size, row_length))
            return
        try:
            host = array.array("q", ids[:used])
        except (TypeError, OverflowError):
            raise TypeError("ids must hold only integers that fit in int64") from None
        if min(host) < 0:
            raise ValueError(f"ids must be non-negative token ids, got {min(host)}")
        self._source = None
        self._rows = target.xp.reshape(asarray(host, backend=target), (batch_size, row_length))

    def __len__(self) -> int:
        """The number of windows in one epoch."""
        return self.num_windows

    def window(self, step: int) -> tuple[Any, Any]:
        """(inputs, targets), each [batch_size, window] int64, at global step `step` (epochs wrap around).

        Window `step % len(self)` of an epoch; a step that is a multiple of len(self) starts a new
        epoch, where the carried state should be reset. Lets a resumed run see the same batches.
        """
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be a non-negative integer, got {step!r}")
        start = (step % self.num_windows) * self.window_length
        block = self._rows[:, start : start + self.window_length + 1]
        if self._source is not None:
            block = asarray(self._source.astype(block, self._source.int64), backend=self.backend)
        return block[:, :-1], block[:, 1:]

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        """One epoch of (inputs, targets) windows, in order."""
        return (self.window(k) for k in range(self.num_windows))

    def __repr__(self) -> str:
        return (
            f"BatchStream(batch_size={self.batch_size}, window={self.window_length}, "
            f"windows={self.num_windows}, backend={self.backend!r})"
        )
