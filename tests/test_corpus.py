"""Streamed tokenization and the token cache (xlstm.corpus): equal to the in-memory path, reused,
rebuilt, refused; batches from the memory map equal batches from a list."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from xlstm.corpus import HEADER_FILE, TOKEN_FILE, Corpus
from xlstm.data import BatchStream, Vocabulary, read_text_chunks

TEXTS = {
    "ascii": b"the cat sat on the mat.\nthe dog sat too.\n",
    "odd-utf8": "naïve café — 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 日本語 e\u0301 ok\n".encode("utf-8") * 3,
    "bom": b"\xef\xbb\xbf\xef\xbb\xbfword one\ntwo words\n",  # only the leading BOM is dropped
    "crlf": b"one\r\ntwo\rthree\r\n\r\nfour  five\r",
    "whitespace": "  lead\u3000ideographic\tspace\u00a0nbsp  trail  ".encode("utf-8"),
}


def expected_text(data: bytes) -> str:
    """The oracle: decode everything at once, then drop a BOM and normalise newlines (the rule README states)."""
    return data.decode("utf-8").removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


@pytest.mark.parametrize("name", TEXTS)
@pytest.mark.parametrize("chunk_bytes", [1, 2, 3, 5, 7, 64, 1 << 20])
def test_chunks_join_to_the_whole_text(tmp_path, name, chunk_bytes):
    path = tmp_path / "text.txt"
    path.write_bytes(TEXTS[name])
    assert "".join(read_text_chunks(path, chunk_bytes)) == expected_text(TEXTS[name])


@pytest.mark.parametrize("level", ["char", "word"])
@pytest.mark.parametrize("name", TEXTS)
@pytest.mark.parametrize("chunk_bytes", [1, 3, 5, 1 << 20])
def test_streamed_tokens_equal_the_in_memory_path(tmp_path, name, level, chunk_bytes):
    path = tmp_path / "text.txt"
    path.write_bytes(TEXTS[name])
    text = expected_text(TEXTS[name])
    corpus = Corpus.from_file(path, level, tmp_path / "run", chunk_bytes=chunk_bytes, write=lambda line: None)
    vocabulary = Vocabulary(text, level)
    assert corpus.vocabulary == vocabulary
    assert corpus.ids.tolist() == vocabulary.encode(text)
    assert corpus.ids.dtype == np.uint8  # fewer than 256 distinct tokens


def test_ids_take_the_smallest_unsigned_type(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("".join(chr(0x4E00 + k) for k in range(300)) * 2, encoding="utf-8")
    corpus = Corpus.from_file(path, "char", tmp_path / "run", chunk_bytes=7, write=lambda line: None)
    assert corpus.ids.dtype == np.uint16 and corpus.ids.tolist() == list(range(300)) * 2


def test_undecodable_byte_is_named_by_its_position_in_the_file(tmp_path):
    data = "ab€".encode("utf-8") * 5 + b"\xff" + b"tail"
    path = tmp_path / "bad.txt"
    path.write_bytes(data)
    position = data.index(b"\xff")
    for chunk_bytes in (1, 4, 1 << 20):
        with pytest.raises(ValueError, match=rf"is not UTF-8 text: byte {position} \(b'\\xff'\)"):
            Corpus.from_file(path, "char", tmp_path / "run", chunk_bytes=chunk_bytes)
    path.write_bytes(data[:-5] + "€".encode("utf-8")[:2])  # cut in the middle of a character
    with pytest.raises(ValueError, match=rf"byte {len(data) - 5} "):
        Corpus.from_file(path, "char", tmp_path / "run", chunk_bytes=3)
    assert not (tmp_path / "run").exists(), "a refused text writes nothing"


def test_the_cache_is_reused_and_rebuilt_when_the_text_changes(tmp_path):
    path, run, messages = tmp_path / "text.txt", tmp_path / "run", []
    path.write_text("abcabc abc\n", encoding="utf-8")
    first = Corpus.from_file(path, "char", run, write=messages.append)
    built = (run / TOKEN_FILE).stat()
    assert "ids as uint8" in messages[-1]

    Corpus.from_file(path, "char", run, write=messages.append)  # same path, size, mtime: not even read
    assert (run / TOKEN_FILE).stat().st_ino == built.st_ino and len(messages) == 1

    os.utime(path, ns=(built.st_mtime_ns + 10**9, built.st_mtime_ns + 10**9))  # touched, same bytes
    again = Corpus.from_file(path, "char", run, write=messages.append)
    assert "unchanged, reused" in messages[-1] and (run / TOKEN_FILE).stat().st_ino == built.st_ino
    assert again.ids.tolist() == first.ids.tolist()

    path.write_text("abcabd abc\n", encoding="utf-8")  # same size, new contents
    changed = Corpus.from_file(path, "char", run, write=messages.append)
    assert "ids as uint8" in messages[-1]
    text = path.read_text(encoding="utf-8")
    assert changed.ids.tolist() == Vocabulary(text).encode(text)

    words = Corpus.from_file(path, "word", run, write=messages.append)  # another level: rebuilt
    assert words.vocabulary == Vocabulary(text, "word") and words.ids.tolist() == [1, 0]  # "abc" sorts first


def test_a_damaged_header_rebuilds_the_cache(tmp_path):
    path, run = tmp_path / "text.txt", tmp_path / "run"
    path.write_text("hello world\n", encoding="utf-8")
    Corpus.from_file(path, "char", run, write=lambda line: None)
    (run / HEADER_FILE).write_text("{not json", encoding="utf-8")
    corpus = Corpus.from_file(path, "char", run, write=lambda line: None)
    assert corpus.ids.tolist() == Vocabulary("hello world\n").encode("hello world\n")


def test_check_refuses_before_the_cache_is_touched(tmp_path):
    path, run = tmp_path / "text.txt", tmp_path / "run"
    path.write_text("hello world\n", encoding="utf-8")
    Corpus.from_file(path, "char", run, write=lambda line: None)
    before = (run / TOKEN_FILE).read_bytes(), (run / HEADER_FILE).read_bytes()
    path.write_text("other text!\n", encoding="utf-8")

    def refuse(vocabulary: Vocabulary) -> None:
        raise ValueError("not the checkpoint's text")

    with pytest.raises(ValueError, match="not the checkpoint's text"):
        Corpus.from_file(path, "char", run, check=refuse, write=lambda line: None)
    assert ((run / TOKEN_FILE).read_bytes(), (run / HEADER_FILE).read_bytes()) == before


@pytest.mark.parametrize("content, message", [(b"", "has 0 characters"), (b"x", "has 1 character;"),
                                              (b" \n\t ", "holds no words")])
def test_texts_with_nothing_to_learn_are_refused(tmp_path, content, message):
    path = tmp_path / "text.txt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        Corpus.from_file(path, "word" if content.strip() == b"" and content else "char", tmp_path / "run")


def test_memory_mapped_batches_equal_list_batches(tmp_path, backend):
    text = "".join(chr(97 + (k * k + 3 * k) % 26) for k in range(997))
    path = tmp_path / "text.txt"
    path.write_text(text, encoding="utf-8")
    mapped = Corpus.from_file(path, "char", tmp_path / "run", chunk_bytes=64, write=lambda line: None)
    in_memory = Corpus.from_text(text, "char")
    from_map = BatchStream(mapped.ids, 4, 9, backend=backend)
    from_list = BatchStream(in_memory.ids, 4, 9, backend=backend)
    assert len(from_map) == len(from_list) > 20
    for step in range(len(from_list) + 3):  # past the end: the epoch wraps around alike
        for a, b in zip(from_map.window(step), from_list.window(step)):
            assert a.dtype == b.dtype == backend.xp.int64
            np.testing.assert_array_equal(backend.library.to_host(a), backend.library.to_host(b))


def test_token_counts_match(tmp_path):
    text = "abracadabra " * 7
    path = tmp_path / "text.txt"
    path.write_text(text, encoding="utf-8")
    mapped = Corpus.from_file(path, "char", tmp_path / "run", write=lambda line: None)
    ids = Vocabulary(text).encode(text)
    assert [n for n in mapped.token_counts(50) if n] == [ids[:50].count(i) for i in sorted(set(ids[:50]))]
    assert sorted(Corpus.from_text(text, "char").token_counts(50)) == sorted(ids[:50].count(i) for i in set(ids[:50]))


def test_pathlike_is_required(tmp_path):
    with pytest.raises(TypeError, match="path must be a str or os.PathLike"):
        Corpus.from_file(3, "char", tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        Corpus.from_file(Path(tmp_path / "missing.txt"), "char", tmp_path)
