"""Subset codes: characters to one-byte codes of 256-code font subsets, and back."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from s3flow.pipelines.text_to_pdf.subsets import SubsetEncoder

_UNESCAPE = {b"n": 10, b"r": 13, b"(": 40, b")": 41, b"\\": 92}


def unescape(data: bytes) -> bytes:
    """A PDF literal string's bytes (the escapes subsets.escape writes) as codes."""
    out = bytearray()
    i = 0
    while i < len(data):
        if data[i] == 0x5C:  # backslash
            out.append(_UNESCAPE[data[i + 1 : i + 2]])
            i += 2
        else:
            out.append(data[i])
            i += 1
    return bytes(out)


def decode(enc: SubsetEncoder, runs: list[tuple[int, bytes]]) -> str:
    """The text ``runs`` stand for, through the subsets' tables (as a PDF reader does)."""
    return "".join(chr(enc.subsets[s][code]) for s, data in runs for code in unescape(data))


@pytest.mark.parametrize("already", [0, 200, 500, 1000, 1500, 1700, 1900, 2300])
def test_several_subsets_opened_at_once_each_get_their_own_table(already: int) -> None:
    """One call bringing 700 new characters opens 3-4 subsets at once. Their tables were
    rebuilt in the order of a set ({8, 6, 7} iterates 8 first) and appended: subset 8's
    table landed at index 6 and runs() failed with IndexError (any CJK document)."""
    enc = SubsetEncoder()
    chars = [chr(c) for c in range(0x4E00, 0x4E00 + already + 700)]
    for i in range(0, already, 100):  # a few subsets filled the ordinary way first
        enc.assign("".join(chars[i : i + 100]))
    text = "".join(chars)
    assert enc.assign(text)
    assert len(enc.subsets) == 1 + -(-(already + 700 - 128) // 255)
    for i in range(0, len(text), 97):
        row = text[i : i + 97]
        assert decode(enc, enc.runs(row)) == row
    assert enc.encode_rows("plain (ascii)\nrows") == b"plain \\(ascii\\)\nrows"


def test_codes_are_given_in_order_of_first_use() -> None:
    enc = SubsetEncoder()
    enc.assign("жa\u4e00ж")
    assert enc.subsets[0][128:] == [ord("ж"), 0x4E00]
    assert enc.runs("ж\u4e00a") == [(0, b"\x80\x81a")]


class _NoScan(list[int]):
    """A subset's code table that must not be scanned again once its codes are given."""

    def __iter__(self) -> Iterator[int]:
        raise AssertionError("runs() rebuilt a subset's code lookup")


def test_characters_beyond_u_ffff_are_encoded_without_rebuilding_a_lookup_per_run() -> None:
    """The charmap tables stop at U+FFFF; runs with emoji fell back to building a
    256-entry dict per run (13x slower text). The lookup is kept per subset instead."""
    enc = SubsetEncoder()
    emoji = "".join(chr(c) for c in range(0x1F600, 0x1F650))
    cyrillic = "".join(chr(c) for c in range(0x400, 0x4F0))
    enc.assign(cyrillic + emoji + "𝐀𝐁")  # subset 0 fills; 𝐀 and more go to subset 1
    assert len(enc.subsets) == 2
    assert decode(enc, enc.runs("😀𝐀")) == "😀𝐀"
    enc.assign("\U0001f9ff")  # assigned after a run was encoded: the lookup follows
    enc.subsets = [_NoScan(codes) for codes in enc.subsets]
    row = "a😀ж𝐀(b)𝐁\\😁\U0001f9ff" * 50
    runs = enc.runs(row)
    assert {s for s, _ in runs} == {0, 1}
    assert decode(enc, runs) == row
