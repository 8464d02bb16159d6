"""Characters to one-byte codes of font subsets, and PDF string operands.

A PDF TrueType font (a "simple" font) has one-byte codes, so a document's
characters are spread over subsets of at most 256 codes, each embedded as its
own small font (the scheme ReportLab uses). Codes are given out in order of
first use, so the same text always gives the same bytes:

* subset 0 keeps ASCII at its own codes (0-127) - ASCII text is written as is,
  which is the fast path - and gives codes 128-255 to the first other characters;
* later subsets give codes 1-255 (code 0 is the font's .notdef glyph).

Encoding goes through the codecs machinery's charmap (C) with one table per
subset, each kept at its subset's index; a subset holding characters beyond
U+FFFF (which charmap tables cannot hold) is encoded through its own
character-to-code dict, kept up to date as codes are given.

A character the font has no glyph for still gets a code: it is drawn as the
font's .notdef box, and the ToUnicode map still names it, so text extraction
and search find it.
"""

from __future__ import annotations

import codecs
from itertools import groupby
from typing import Any

_UNDEFINED = "\ufffe"  # a charmap table's "no character at this code"


def escape_rows(data: bytes) -> bytes:
    """Escape the bytes a PDF literal string cannot hold as they are, except ``\\n``:
    for subset-0 bytes whose ``\\n`` separate rows (and stay)."""
    if b"\\" in data:  # first: the escapes below add backslashes
        data = data.replace(b"\\", b"\\\\")
    if b"(" in data:
        data = data.replace(b"(", b"\\(")
    if b")" in data:
        data = data.replace(b")", b"\\)")
    if b"\r" in data:
        data = data.replace(b"\r", b"\\r")
    return data


def escape(data: bytes) -> bytes:
    """Escape the bytes a PDF literal string cannot hold as they are (``\\n`` too)."""
    data = escape_rows(data)
    return data.replace(b"\n", b"\\n") if b"\n" in data else data


class SubsetEncoder:
    """Gives characters codes in font subsets; encodes text as PDF string bytes."""

    def __init__(self) -> None:
        #: Per subset: the code point each code stands for (index = code).
        self.subsets: list[list[int]] = [list(range(128))]
        self._subset_of: dict[str, int] = {chr(c): 0 for c in range(128)}
        #: Per subset (index = subset): codecs.charmap_build() of its table.
        self._maps: list[Any] = [None]
        #: Per subset (index = subset): its characters and their codes, kept up to date as
        #: characters are assigned - for runs beyond U+FFFF, where the charmap tables stop.
        self._codes: list[dict[str, int]] = [{chr(c): c for c in range(128)}]
        #: The subsets with characters beyond U+FFFF (encoded through ``_codes``).
        self._astral: set[int] = set()
        self._rebuild(0)

    def encode_rows(self, text: str) -> bytes | None:
        """``text`` (rows joined by ``\\n``) as escaped subset-0 bytes, ``\\n`` kept.

        None when some character is in another subset: use :meth:`runs` per row.
        """
        if text.isascii():
            return escape_rows(text.encode("ascii"))
        try:
            data = codecs.charmap_encode(text, "strict", self._maps[0])[0]
        except UnicodeEncodeError:
            if not self.assign(text):
                return None
            try:
                data = codecs.charmap_encode(text, "strict", self._maps[0])[0]
            except UnicodeEncodeError:
                return None
        return escape_rows(data)

    def runs(self, text: str) -> list[tuple[int, bytes]]:
        """``text`` (no line ends) as (subset, escaped string bytes) runs, in order."""
        if text.isascii():
            return [(0, escape(text.encode("ascii")))]
        self.assign(text)
        out: list[tuple[int, bytes]] = []
        for subset, chars in groupby(text, key=self._subset_of.__getitem__):
            run = "".join(chars)
            if subset in self._astral:  # characters beyond U+FFFF: not in the fast table
                data = bytes(map(self._codes[subset].__getitem__, run))
            else:
                data = codecs.charmap_encode(run, "strict", self._maps[subset])[0]
            out.append((subset, escape(data)))
        return out

    def assign(self, text: str) -> bool:
        """Give every character of ``text`` without a code the next free one.

        Returns whether any was new.
        """
        known = self._subset_of
        changed: set[int] = set()
        for char in dict.fromkeys(text):  # first-use order: deterministic codes
            if char in known:
                continue
            subset = len(self.subsets) - 1
            codes = self.subsets[subset]
            if len(codes) == 256:
                subset += 1
                codes = [0]
                self.subsets.append(codes)
                self._maps.append(None)  # built below: every subset has its slot
                self._codes.append({})
            self._codes[subset][char] = len(codes)
            codes.append(ord(char))
            if codes[-1] > 0xFFFF:
                self._astral.add(subset)
            known[char] = subset
            changed.add(subset)
        # Each table goes to its own subset's slot, so the order of the rebuilds does not
        # matter (one page can open several subsets at once).
        for subset in sorted(changed):
            self._rebuild(subset)
        return bool(changed)

    def _rebuild(self, subset: int) -> None:
        table = [chr(cp) if cp <= 0xFFFF else _UNDEFINED for cp in self.subsets[subset]]
        if subset:
            table[0] = _UNDEFINED  # .notdef: never a character
        table += [_UNDEFINED] * (256 - len(table))
        self._maps[subset] = codecs.charmap_build("".join(table))


def to_unicode_cmap(codepoints: list[int]) -> bytes:
    """A ToUnicode CMap for one subset: code ``i`` is ``codepoints[i]``.

    Controls (and the .notdef code 0 of later subsets) are left out.
    """
    entries = [
        f"<{code:02X}> <{chr(cp).encode('utf-16-be').hex().upper()}>"
        for code, cp in enumerate(codepoints)
        if cp >= 0x20 and cp != 0x7F and not 0xD800 <= cp <= 0xDFFF
    ]
    lines = [
        "/CIDInit /ProcSet findresource begin",
        "12 dict begin",
        "begincmap",
        "/CIDSystemInfo << /Registry (Adobe) /Ordering (UCS) /Supplement 0 >> def",
        "/CMapName /Adobe-Identity-UCS def",
        "/CMapType 2 def",
        "1 begincodespacerange",
        "<00> <FF>",
        "endcodespacerange",
    ]
    for i in range(0, len(entries), 100):  # at most 100 entries per block
        block = entries[i : i + 100]
        lines += [f"{len(block)} beginbfchar", *block, "endbfchar"]
    lines += [
        "endcmap",
        "CMapName currentdict /CMap defineresource pop",
        "end",
        "end",
    ]
    return "\n".join(lines).encode("ascii")
