"""One PDF document: bytes of text in, pages out to a file as soon as they are full.

:class:`TextDocument` is synchronous and CPU-bound; the processor calls
:meth:`~TextDocument.feed` on a worker thread, one chunk at a time. Each page is
laid out, encoded, compressed and written before the next one starts, so
memory holds one chunk and one page whatever the size of the text. The fonts,
the shared resources and the page tree are written at :meth:`~TextDocument.finish`.

Every page shows the title (the source key) at the top, the text in rows of
``font_size`` at 1.2x line height, and "Page N" at the bottom.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass
from typing import IO

from s3flow.pipelines.text_to_pdf.decoding import TextDecoder
from s3flow.pipelines.text_to_pdf.fonts import Font
from s3flow.pipelines.text_to_pdf.layout import Page, Paginator, Wrapper
from s3flow.pipelines.text_to_pdf.options import MM, PAGE_SIZES, TextToPdfOptions
from s3flow.pipelines.text_to_pdf.pdfwriter import PdfWriter, name, number, ref, text_string
from s3flow.pipelines.text_to_pdf.subsets import SubsetEncoder, to_unicode_cmap

PRODUCER = "s3flow text-to-pdf"
LEADING = 1.2  # line height / font size
ASCENT = 0.76  # DejaVu's ascent and descent, in em: where a baseline sits in its row
DESCENT = 0.24
GRAY = b"0.4"  # title, rule and page number
PAGES_PER_NODE = 256  # page-tree fan-out


@dataclass(frozen=True)
class Geometry:
    """Where things go on a page (points, origin at the bottom left)."""

    width: float
    height: float
    left: float
    text_width: float
    font_size: float
    leading: float
    title_y: float | None  # baseline of the title (None: no title)
    rule_y: float | None
    first_y: float  # baseline of the first row
    lines_per_page: int
    footer_y: float | None  # baseline of the page number (None: no page numbers)

    @classmethod
    def of(cls, opts: TextToPdfOptions) -> Geometry:
        """The page layout the options describe."""
        width, height = PAGE_SIZES[opts.page_size]
        margin = opts.margin_mm * MM
        size = opts.font_size
        leading = size * LEADING
        top, bottom = height - margin, margin
        title_y = rule_y = footer_y = None
        if opts.title:
            title_y = top - ASCENT * size
            rule_y = top - leading - 0.25 * size
            top = rule_y - 0.5 * size
        if opts.page_numbers:
            footer_y = bottom + DESCENT * size
            bottom += leading + 0.5 * size
        # Row i's baseline is first_y - i * leading; its descenders must stay above bottom.
        first_y = top - ASCENT * size
        lines = int((first_y - DESCENT * size - bottom) // leading) + 1
        return cls(
            width=width,
            height=height,
            left=margin,
            text_width=width - 2 * margin,
            font_size=size,
            leading=leading,
            title_y=title_y,
            rule_y=rule_y,
            first_y=first_y,
            lines_per_page=max(1, lines),
            footer_y=footer_y,
        )


class TextDocument:
    """Text bytes to a PDF file, streamed: :meth:`feed` chunks, then :meth:`finish`."""

    def __init__(
        self, fh: IO[bytes], opts: TextToPdfOptions, font: Font, title: str, file_id: bytes = b""
    ) -> None:
        self._opts = opts
        self._font = font
        self._title = title
        self._geo = geo = Geometry.of(opts)
        self._level = opts.compress_level
        self._decoder = TextDecoder(opts.encoding, title)
        self._layout = Paginator(
            Wrapper(font.widths, font.fixed_width, opts.font_size, geo.text_width),
            geo.lines_per_page,
            opts.tab_size,
        )
        self._encoder = SubsetEncoder()
        self._writer = PdfWriter(fh)
        self._id = hashlib.md5(file_id or title.encode("utf-8"), usedforsecurity=False).digest()
        w = self._writer
        self._catalog, self._root, self._resources, self._info = (w.reserve() for _ in range(4))
        self._nodes: list[int] = []  # page-tree nodes, PAGES_PER_NODE pages each
        self._kids: list[int] = []  # pages of the last node
        self._size = number(opts.font_size)
        self._header = self._title_ops()
        # Text state of the body: font, leading, and a start one line above the first
        # row (each row's "'" operator moves down a line, then shows the string).
        self._body_start = b"BT /F0 %s Tf %s TL %s %s Td\n" % (
            self._size,
            number(round(geo.leading, 3)),
            number(round(geo.left, 3)),
            number(round(geo.first_y + geo.leading, 3)),
        )
        self.pages = 0
        self.bytes_in = 0

    # --- input -------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Decode, lay out and write the pages the next chunk of bytes completes."""
        self.bytes_in += len(data)
        for page in self._layout.feed(self._decoder.decode(data)):
            self._write_page(page)

    def finish(self) -> int:
        """Write the last page, the fonts and the document structure; return the page count.

        Raises :class:`~s3flow.errors.UndecodableContentError` when the text ends in
        the middle of a character.
        """
        for page in self._layout.feed(self._decoder.decode(b"", final=True)):
            self._write_page(page)
        for page in self._layout.finish():
            self._write_page(page)
        self._close_node()
        w = self._writer
        fonts = self._write_fonts()
        font_dict = b" ".join(b"/F%d %s" % (i, ref(n)) for i, n in enumerate(fonts))
        w.add(b"<< /Font << %s >> /ProcSet [/PDF /Text] >>" % font_dict, self._resources)
        geo = self._geo
        kids = b" ".join(ref(n) for n in self._nodes)
        w.add(
            b"<< /Type /Pages /Count %d /MediaBox [0 0 %s %s] /Resources %s /Kids [%s] >>"
            % (self.pages, number(geo.width), number(geo.height), ref(self._resources), kids),
            self._root,
        )
        w.add(b"<< /Type /Catalog /Pages %s >>" % ref(self._root), self._catalog)
        w.add(
            b"<< /Title %s /Producer %s >>" % (text_string(self._title), text_string(PRODUCER)),
            self._info,
        )
        w.close(self._catalog, self._info, self._id)
        return self.pages

    @property
    def bytes_out(self) -> int:
        """The size of the PDF written so far."""
        return self._writer.bytes_written

    # --- pages -------------------------------------------------------------------

    def _write_page(self, rows: Page) -> None:
        parts = [self._header]
        if rows:
            parts.append(self._body(rows))
        if self._geo.footer_y is not None:
            parts.append(self._footer(self.pages + 1))
        content = b"\n".join(parts)
        w = self._writer
        if self._level:
            content = zlib.compress(content, self._level)
        contents = w.add_stream(b"", content, compressed=bool(self._level))
        if not self._kids:
            self._nodes.append(w.reserve())
        page = w.add(
            b"<< /Type /Page /Parent %s /Contents %s >>" % (ref(self._nodes[-1]), ref(contents))
        )
        self._kids.append(page)
        self.pages += 1
        if len(self._kids) == PAGES_PER_NODE:
            self._close_node()

    def _close_node(self) -> None:
        if not self._kids:
            return
        kids = b" ".join(ref(n) for n in self._kids)
        self._writer.add(
            b"<< /Type /Pages /Parent %s /Kids [%s] /Count %d >>"
            % (ref(self._root), kids, len(self._kids)),
            self._nodes[-1],
        )
        self._kids = []

    def _body(self, rows: Page) -> bytes:
        start = self._body_start
        encoded = self._encoder.encode_rows("\n".join(rows))
        if encoded is not None:  # every character in subset 0: one string per row
            return b"%s(%s)'\nET" % (start, encoded.replace(b"\n", b")'\n("))
        out = [start]
        current = 0
        for row in rows:
            out.append(b"T*")
            for subset, data in self._encoder.runs(row):
                if subset != current:
                    out.append(b"/F%d %s Tf" % (subset, self._size))
                    current = subset
                out.append(b"(%s)Tj" % data)
        out.append(b"ET")
        return b"\n".join(out)

    def _show(self, text: str, x: float, y: float) -> bytes:
        """A text object drawing ``text`` at (x, y) in the body font size."""
        out = [b"BT %s %s Td" % (number(round(x, 3)), number(round(y, 3)))]
        for subset, data in self._encoder.runs(text):
            out.append(b"/F%d %s Tf (%s)Tj" % (subset, self._size, data))
        out.append(b"ET")
        return b" ".join(out)

    def _title_ops(self) -> bytes:
        geo = self._geo
        if geo.title_y is None or geo.rule_y is None:
            return b""
        title = self._fit(" ".join(self._title.split()), geo.text_width)
        right = geo.left + geo.text_width
        return b"q %s g %s G 0.5 w\n%s\n%s %s m %s %s l S\nQ" % (
            GRAY,
            GRAY,
            self._show(title, geo.left, geo.title_y),
            number(round(geo.left, 3)),
            number(round(geo.rule_y, 3)),
            number(round(right, 3)),
            number(round(geo.rule_y, 3)),
        )

    def _footer(self, page: int) -> bytes:
        geo = self._geo
        assert geo.footer_y is not None
        text = f"Page {page}"
        x = (geo.width - self._width(text)) / 2
        return b"q %s g %s Q" % (GRAY, self._show(text, x, geo.footer_y))

    def _width(self, text: str) -> float:
        widths = self._font.widths
        return sum(widths[c] for c in text) * self._opts.font_size / 1000

    def _fit(self, text: str, width: float) -> str:
        """``text``, or "…" and as much of its end as fits in ``width``."""
        if self._width(text) <= width:
            return text
        room = width - self._width("…")
        scale = self._opts.font_size / 1000
        widths = self._font.widths
        start = len(text)
        while start > 0 and room - widths[text[start - 1]] * scale >= 0:
            start -= 1
            room -= widths[text[start]] * scale
        return "…" + text[start:]

    # --- fonts -------------------------------------------------------------------

    def _write_fonts(self) -> list[int]:
        """Embed each subset (font file, descriptor, ToUnicode, font); their numbers."""
        w = self._writer
        font = self._font
        descriptor = font.descriptor()
        out = []
        for i, codepoints in enumerate(self._encoder.subsets):
            base = name(f"{_subset_tag(i)}+{font.name}")
            data = font.make_subset(codepoints)
            packed = zlib.compress(data, 6)
            file_num = w.add_stream(b" /Length1 %d" % len(data), packed, compressed=True)
            entries = b" ".join(b"/%s %s" % (k.encode(), _value(v)) for k, v in descriptor.items())
            desc_num = w.add(
                b"<< /Type /FontDescriptor /FontName %s %s /FontFile2 %s >>"
                % (base, entries, ref(file_num))
            )
            cmap = zlib.compress(to_unicode_cmap(codepoints), 6)
            cmap_num = w.add_stream(b"", cmap, compressed=True)
            widths = b" ".join(number(round(font.widths[chr(cp)], 3)) for cp in codepoints)
            out.append(
                w.add(
                    b"<< /Type /Font /Subtype /TrueType /BaseFont %s /FirstChar 0 /LastChar %d "
                    b"/Widths [%s] /FontDescriptor %s /ToUnicode %s >>"
                    % (base, len(codepoints) - 1, widths, ref(desc_num), ref(cmap_num))
                )
            )
        return out


def _subset_tag(n: int) -> str:
    """Six capital letters naming subset ``n`` (``AAAAAA``, ``AAAAAB``...)."""
    letters = []
    for _ in range(6):
        n, r = divmod(n, 26)
        letters.append(chr(65 + r))
    return "".join(reversed(letters))


def _value(v: object) -> bytes:
    if isinstance(v, list):
        return b"[%s]" % b" ".join(number(x) for x in v)
    if isinstance(v, int | float):
        return number(v)
    raise TypeError(f"unsupported PDF value {v!r}")
