"""A text as token ids: encoded in memory for a str, or streamed from a file into a token cache.

The cache is two files in the run folder: `tokens.bin`, the ids in the narrowest unsigned
integer type that holds the vocabulary, read back as a memory map; and `tokens.json`, which
records the vocabulary and the text it came from (path, size, modification time, SHA-256).
A cache whose path, size and modification time match is reused without reading the text;
otherwise the text is read once, and a matching SHA-256 still reuses the cache.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Callable

from xlstm_backends.storage import write_atomically
from xlstm_backends.token_cache import (
    CharEncoder,
    count_token_file,
    map_token_file,
    smallest_unsigned,
    word_ids,
    write_token_file,
)
from xlstm.data import CHUNK_BYTES, Vocabulary, check_text_length, checked_text_file, read_text_chunks

TOKEN_FILE, HEADER_FILE = "tokens.bin", "tokens.json"
FORMAT, VERSION = "xlstm-token-cache", 1


def token_pieces(chunks: Iterable[str], level: str) -> Iterator[str | list[str]]:
    """The tokens of consecutive pieces of one text, piece by piece: the piece itself for
    characters, its words for words (a word cut by a piece boundary waits to be completed)."""
    if level == "char":
        yield from chunks
        return
    tail = ""
    for chunk in chunks:
        text = tail + chunk
        words = text.split()
        tail = words.pop() if words and not text[-1].isspace() else ""
        if words:
            yield words
    if tail:
        yield [tail]


class Corpus:
    """A vocabulary and the ids of the text in it: a list (text in memory) or a memory map (file)."""

    def __init__(self, vocabulary: Vocabulary, ids: Any, token_file: Path | None = None) -> None:
        self.vocabulary, self.ids, self._token_file = vocabulary, ids, token_file

    @classmethod
    def from_text(cls, text: str, level: str) -> Corpus:
        """Encode a text held in memory."""
        vocabulary = Vocabulary(text, level=level)
        return cls(vocabulary, vocabulary.encode(text))

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        level: str,
        cache_dir: str | os.PathLike[str],
        *,
        chunk_bytes: int = CHUNK_BYTES,
        check: Callable[[Vocabulary], Any] = lambda vocabulary: None,
        write: Callable[[str], Any] = print,
    ) -> Corpus:
        """Stream the UTF-8 file at `path` into the token cache in `cache_dir` (or reuse it).

        `check(vocabulary)` may refuse the text (by raising) before the cache is touched.
        """
        source = checked_text_file(path)
        cache_dir = Path(cache_dir)
        header = _read_header(cache_dir / HEADER_FILE)
        fingerprint = _fingerprint(source, level)
        if header is None or header["fingerprint"] != fingerprint:
            vocabulary, count, sha256 = _scan(source, level, chunk_bytes)
            check(vocabulary)
            if header is not None and header["sha256"] == sha256 and header["level"] == level:
                write(f"token cache {cache_dir / TOKEN_FILE}: the text's contents are unchanged, reused")
            else:
                header = _build(source, vocabulary, count, cache_dir, chunk_bytes)
                write(f"token cache {cache_dir / TOKEN_FILE}: {count:,} {level} ids as {header['dtype']}")
            _write_header(cache_dir / HEADER_FILE, {**header, "fingerprint": fingerprint, "sha256": sha256})
        return cls._mapped(header, cache_dir, check)

    @classmethod
    def from_cache(cls, cache_dir: str | os.PathLike[str], *,
                   check: Callable[[Vocabulary], Any] = lambda vocabulary: None) -> Corpus:
        """The token cache that `from_file` left in `cache_dir`, read-only and without the text
        (the other ranks of a data-parallel run, once rank 0 has built it)."""
        cache_dir = Path(cache_dir)
        header = _read_header(cache_dir / HEADER_FILE)
        if header is None:
            raise ValueError(f"there is no token cache in {str(cache_dir)!r} (its {HEADER_FILE} is missing or foreign); "
                             "with several machines, --out must be a folder that every machine sees")
        return cls._mapped(header, cache_dir, check)

    @classmethod
    def _mapped(cls, header: dict[str, Any], cache_dir: Path, check: Callable[[Vocabulary], Any]) -> Corpus:
        """The corpus a cache header describes, its vocabulary checked, its ids memory-mapped."""
        vocabulary = Vocabulary.from_dict({"level": header["level"], "tokens": header["tokens"]})
        check(vocabulary)
        ids = map_token_file(cache_dir / TOKEN_FILE, header["dtype"], header["count"])
        return cls(vocabulary, ids, cache_dir / TOKEN_FILE)

    def token_counts(self, stop: int) -> list[int]:
        """How often each token occurs among the first `stop` ids (zeros left out or not)."""
        if self._token_file is None:
            return list(Counter(self.ids[:stop]).values())
        return count_token_file(self._token_file, str(self.ids.dtype), stop, len(self.vocabulary))


def _fingerprint(source: Path, level: str) -> dict[str, Any]:
    """What identifies a text without reading it: its resolved path, size and modification time."""
    status = source.stat()
    return {"path": str(source.resolve()), "size": status.st_size, "mtime_ns": status.st_mtime_ns, "level": level}


def _scan(source: Path, level: str, chunk_bytes: int) -> tuple[Vocabulary, int, str]:
    """First pass: the vocabulary, the number of tokens and the SHA-256 of the file's bytes."""
    digest, distinct, count = hashlib.sha256(), set(), 0
    for piece in token_pieces(read_text_chunks(source, chunk_bytes, digest), level):
        distinct.update(piece)
        count += len(piece)
    if level == "char":
        check_text_length(source, count)
    if not distinct:
        raise ValueError(f"text file {str(source)!r} holds no words (only whitespace)")
    return Vocabulary.from_distinct(distinct, level), count, digest.hexdigest()


def _build(source: Path, vocabulary: Vocabulary, count: int, cache_dir: Path, chunk_bytes: int) -> dict[str, Any]:
    """Second pass: write the ids to the token file; the header describing it."""
    dtype = smallest_unsigned(len(vocabulary))
    if vocabulary.level == "char":
        encode = CharEncoder(vocabulary.tokens, dtype)
    else:
        index = {token: i for i, token in enumerate(vocabulary.tokens)}
        encode = lambda words: word_ids(words, index, dtype)  # noqa: E731
    cache_dir.mkdir(parents=True, exist_ok=True)
    (cache_dir / HEADER_FILE).unlink(missing_ok=True)  # a header never describes a half-replaced file
    pieces = (encode(piece) for piece in token_pieces(read_text_chunks(source, chunk_bytes), vocabulary.level))
    try:
        written = write_token_file(cache_dir / TOKEN_FILE, pieces)
    except KeyError as error:
        raise ValueError(f"text file {str(source)!r} changed while it was read (new word {error}); run again") from None
    if written != count:
        raise ValueError(f"text file {str(source)!r} changed while it was read ({count} tokens, then {written}); "
                         "run again")
    return {"format": FORMAT, "version": VERSION, "level": vocabulary.level, "dtype": dtype, "count": count,
            "tokens": list(vocabulary.tokens)}


def _read_header(path: Path) -> dict[str, Any] | None:
    """The cache's header, or None when there is none or it is not one this version wrote."""
    try:
        header = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(header, dict) or header.get("format") != FORMAT or header.get("version") != VERSION:
        return None
    return header


def _write_header(path: Path, header: dict[str, Any]) -> None:
    write_atomically(path, lambda file: file.write(json.dumps(header).encode("utf-8")))
