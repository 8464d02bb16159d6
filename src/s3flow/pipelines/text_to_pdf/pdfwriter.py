"""A PDF file written object by object, as the objects come: nothing is kept but offsets.

Objects may be numbered in advance (:meth:`PdfWriter.reserve`) and written
later - the page tree and the fonts are written last, when their contents are
known - and the cross-reference table at :meth:`PdfWriter.close` points at
wherever each one landed.
"""

from __future__ import annotations

from array import array
from typing import IO

HEADER = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"


def text_string(text: str) -> bytes:
    """A PDF text string (Info entries): UTF-16BE with a byte-order mark, in hex."""
    return b"<FEFF" + text.encode("utf-16-be").hex().upper().encode("ascii") + b">"


def name(text: str) -> bytes:
    """A PDF name object (``/Name``), with characters outside ``!``..``~`` escaped."""
    out = []
    for byte in text.encode("utf-8"):
        if 0x21 <= byte <= 0x7E and byte not in b"#()<>[]{}/%":
            out.append(chr(byte))
        else:
            out.append(f"#{byte:02X}")
    return b"/" + "".join(out).encode("ascii")


def number(value: float) -> bytes:
    """A PDF number: an integer when it is one, else up to 3 decimals."""
    if value == int(value):
        return b"%d" % int(value)
    return (b"%.3f" % value).rstrip(b"0").rstrip(b".")


def ref(num: int) -> bytes:
    """An indirect reference ``n 0 R``."""
    return b"%d 0 R" % num


class PdfWriter:
    """Writes numbered objects to ``fh`` and, at the end, the xref table and trailer."""

    def __init__(self, fh: IO[bytes]) -> None:
        self._fh = fh
        self._offsets = array("q", [0])  # by object number; -1: reserved, not written yet
        self._pos = 0
        self._write(HEADER)

    @property
    def bytes_written(self) -> int:
        """The size of the file so far."""
        return self._pos

    def reserve(self) -> int:
        """A number for an object that will be written later."""
        self._offsets.append(-1)
        return len(self._offsets) - 1

    def add(self, body: bytes, num: int | None = None) -> int:
        """Write one object (``body`` is its value, e.g. ``<< ... >>``); return its number."""
        num = self._start(num)
        self._write(body)
        self._write(b"\nendobj\n")
        return num

    def add_stream(
        self, entries: bytes, data: bytes, num: int | None = None, *, compressed: bool = False
    ) -> int:
        """Write a stream object: ``entries`` go into its dictionary besides /Length."""
        num = self._start(num)
        flate = b" /Filter /FlateDecode" if compressed else b""
        self._write(b"<<%s%s /Length %d>>\nstream\n" % (entries, flate, len(data)))
        self._write(data)
        self._write(b"\nendstream\nendobj\n")
        return num

    def close(self, root: int, info: int, file_id: bytes) -> int:
        """Write the xref table and the trailer; return the file's size."""
        missing = [n for n, off in enumerate(self._offsets) if off < 0]
        if missing:
            raise ValueError(f"PDF objects reserved but never written: {missing[:10]}")
        xref_at = self._pos
        count = len(self._offsets)
        self._write(b"xref\n0 %d\n0000000000 65535 f \n" % count)
        for start in range(1, count, 4096):
            part = self._offsets[start : start + 4096]
            self._write(b"".join(b"%010d 00000 n \n" % off for off in part))
        hexid = file_id.hex().encode("ascii")
        self._write(
            b"trailer\n<< /Size %d /Root %s /Info %s /ID [<%s> <%s>] >>\nstartxref\n%d\n%%%%EOF\n"
            % (count, ref(root), ref(info), hexid, hexid, xref_at)
        )
        return self._pos

    def _start(self, num: int | None) -> int:
        if num is None:
            num = self.reserve()
        elif self._offsets[num] >= 0:
            raise ValueError(f"PDF object {num} written twice")
        self._offsets[num] = self._pos
        self._write(b"%d 0 obj\n" % num)
        return num

    def _write(self, data: bytes) -> None:
        self._fh.write(data)
        self._pos += len(data)
