"""Incremental decoding: byte offsets of undecodable input, characters split across chunks."""

from __future__ import annotations

import pytest

from s3flow.errors import Disposition, UndecodableContentError
from s3flow.pipelines.text_to_pdf.decoding import TextDecoder


def test_characters_split_across_chunks_decode() -> None:
    data = "Ελληνικά и кириллица".encode()
    dec = TextDecoder("utf-8")
    text = "".join(dec.decode(data[i : i + 1]) for i in range(len(data)))
    assert text + dec.decode(b"", final=True) == "Ελληνικά и кириллица"


def test_bad_byte_reports_its_absolute_offset() -> None:
    dec = TextDecoder("utf-8")
    dec.decode(b"a" * 1000)
    with pytest.raises(UndecodableContentError, match=r"not utf-8 at byte 1003") as info:
        dec.decode(b"bcd\xffe")
    assert info.value.disposition is Disposition.PERMANENT


def test_offset_counts_bytes_held_back_from_the_previous_chunk() -> None:
    dec = TextDecoder("utf-8")
    dec.decode(b"xy\xce")  # the first byte of a two-byte character, held back
    with pytest.raises(UndecodableContentError, match=r"at byte 2\b"):
        dec.decode(b"A")  # not a continuation byte: the character at byte 2 is bad


def test_truncated_character_at_the_end() -> None:
    dec = TextDecoder("utf-8")
    dec.decode("ok ж".encode()[:-1])
    with pytest.raises(UndecodableContentError, match=r"at byte 3: truncated character"):
        dec.decode(b"", final=True)


def test_bom_is_dropped_only_at_the_start() -> None:
    dec = TextDecoder("utf-8")
    assert dec.decode(b"\xef\xbb\xbfa") == "a"
    assert dec.decode("\ufeffb".encode()) == "\ufeffb"


def test_other_encodings() -> None:
    assert TextDecoder("latin-1").decode("café".encode("latin-1")) == "café"
    assert TextDecoder("cp1251").decode("щука".encode("cp1251")) == "щука"
    assert TextDecoder("utf-16").decode("ω".encode("utf-16")) == "ω"


def test_a_bare_unicode_error_is_permanent_and_names_the_file_and_the_option() -> None:
    """The "undefined" codec (refused by the options now) raises a plain UnicodeError:
    it was retried until dead-lettered; it is a permanent error saying what to do."""
    dec = TextDecoder("undefined", "in/notes.txt")
    with pytest.raises(UndecodableContentError) as info:
        dec.decode(b"hello")
    message = str(info.value)
    assert "in/notes.txt" in message and "undefined" in message
    assert "set the encoding option" in message
    assert info.value.disposition is Disposition.PERMANENT


def test_the_error_says_to_set_the_encoding_option() -> None:
    with pytest.raises(UndecodableContentError) as info:
        TextDecoder("utf-8").decode(b"caf\xe9 cr\xe8me", final=True)
    assert "set the encoding option to it (e.g. 'latin-1', 'cp1252')" in str(info.value)


def test_a_utf16_byte_order_mark_is_named_with_the_encoding_to_set() -> None:
    with pytest.raises(UndecodableContentError) as info:
        TextDecoder("utf-8").decode("\ufeffHi".encode("utf-16-le"), final=True)
    assert "starts with a utf-16 byte order mark: set the encoding option to 'utf-16'" in str(
        info.value
    )
