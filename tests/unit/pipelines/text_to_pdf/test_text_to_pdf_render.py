"""Rendering text to PDF, read back with pypdf: Unicode, pages, title, page numbers, errors."""

from __future__ import annotations

import io
from typing import Any

import pypdf
import pytest

from s3flow.errors import UndecodableContentError
from s3flow.pipelines.text_to_pdf.fonts import find_font, load_font
from s3flow.pipelines.text_to_pdf.options import TextToPdfOptions
from s3flow.pipelines.text_to_pdf.render import Geometry, TextDocument

GREEK = "Η γρήγορη καφέ αλεπού πηδάει πάνω από τον τεμπέλη σκύλο"
CYRILLIC = "Съешь же ещё этих мягких французских булок, да выпей чаю"


def render(data: bytes, title: str = "docs/sample.txt", chunk: int = 0, **opts: Any) -> bytes:
    """The PDF of ``data`` (fed in ``chunk``-byte pieces, or at once)."""
    options = TextToPdfOptions(**opts)
    font = load_font(find_font(options.monospace, options.font_file))
    out = io.BytesIO()
    doc = TextDocument(out, options, font, title)
    step = chunk or max(1, len(data))
    for i in range(0, len(data), step):
        doc.feed(data[i : i + step])
    pages = doc.finish()
    pdf = out.getvalue()
    assert len(pypdf.PdfReader(io.BytesIO(pdf)).pages) == pages
    return pdf


def page_texts(pdf: bytes) -> list[str]:
    reader = pypdf.PdfReader(io.BytesIO(pdf), strict=True)
    return [page.extract_text() for page in reader.pages]


def body_lines(text: str) -> list[str]:
    """A page's extracted lines without the title (first) and page number (last)."""
    return text.splitlines()[1:-1]


def per_page(**opts: Any) -> int:
    return Geometry.of(TextToPdfOptions(**opts)).lines_per_page


def test_greek_and_cyrillic_round_trip_through_text_extraction() -> None:
    text = f"{GREEK}\n{CYRILLIC}\nLatin: café naïve Ærøskøbing ß œ €\n"
    pages = page_texts(render(text.encode()))
    assert len(pages) == 1
    assert body_lines(pages[0]) == text.splitlines()


@pytest.mark.parametrize("monospace", [True, False])
def test_both_fonts_round_trip(monospace: bool) -> None:
    text = f"{GREEK}\n{CYRILLIC}\n"
    pages = page_texts(render(text.encode(), monospace=monospace))
    assert body_lines(pages[0]) == text.splitlines()


def test_more_than_256_distinct_characters_use_several_subsets() -> None:
    chars = [chr(c) for c in [*range(0x391, 0x3CA), *range(0x400, 0x460), *range(0x100, 0x180)]]
    chars = [c for c in chars if c.isprintable()]
    assert len(chars) > 256
    lines = ["(ascii) \\ first", *("".join(chars[i : i + 50]) for i in range(0, len(chars), 50))]
    lines.append("mixed " + "".join(chars[::5]) + " end")
    pdf = render("\n".join(lines).encode())
    assert pdf.count(b"/Subtype /TrueType") == 2
    assert body_lines(page_texts(pdf)[0]) == lines


def test_pdf_structure_and_title() -> None:
    pdf = render(b"hello\n", title="in/2024/report (final).txt")
    assert pdf.startswith(b"%PDF-1.7\n") and pdf.endswith(b"%%EOF\n")
    reader = pypdf.PdfReader(io.BytesIO(pdf), strict=True)
    assert reader.metadata is not None
    assert reader.metadata.title == "in/2024/report (final).txt"
    text = reader.pages[0].extract_text().splitlines()
    assert text == ["in/2024/report (final).txt", "hello", "Page 1"]


def test_empty_file_is_one_page_with_the_title() -> None:
    pages = page_texts(render(b"", title="empty.txt"))
    assert [p.splitlines() for p in pages] == [["empty.txt", "Page 1"]]


def test_long_title_keeps_its_end() -> None:
    title = "deeply/" * 40 + "the-file.txt"
    first = page_texts(render(b"x", title=title))[0].splitlines()[0]
    assert first.startswith("…") and first.endswith("/the-file.txt")


@pytest.mark.parametrize(
    ("full_pages", "extra_lines", "pages"), [(0, 1, 1), (1, 0, 1), (1, 1, 2), (3, 0, 3), (3, 1, 4)]
)
def test_page_counts(full_pages: int, extra_lines: int, pages: int) -> None:
    count = full_pages * per_page() + extra_lines
    data = "".join(f"line {i}\n" for i in range(count)).encode()
    texts = page_texts(render(data))
    assert len(texts) == pages
    assert texts[-1].splitlines()[-1] == f"Page {pages}"
    numbers = [int(r.split()[1]) for t in texts for r in body_lines(t)]
    assert numbers == list(range(count))


def test_page_size_margins_and_font_size_change_the_page() -> None:
    a4 = per_page()
    assert per_page(page_size="Letter") < a4  # Letter is shorter than A4
    assert per_page(font_size=12) < a4
    assert per_page(margin_mm=30) < a4
    reader = pypdf.PdfReader(io.BytesIO(render(b"x", page_size="Letter")))
    box = reader.pages[0].mediabox
    assert (float(box.width), float(box.height)) == (612.0, 792.0)


def test_tabs_are_expanded() -> None:
    lines = body_lines(page_texts(render(b"a\tb\n\tc\nabcdefghi\tj\n", tab_size=8))[0])
    assert lines == ["a       b", "        c", "abcdefghi       j"]


def test_form_feed_is_a_page_break() -> None:
    texts = page_texts(render(b"one\n\ftwo\n\f\fthree\n"))
    assert [body_lines(t) for t in texts] == [["one"], ["two"], [], ["three"]]


def test_long_lines_wrap() -> None:
    words = " ".join(f"w{i:03d}" for i in range(200))  # 999 characters, one line
    lines = body_lines(page_texts(render(words.encode()))[0])
    assert len(lines) > 5
    assert " ".join(lines).split() == words.split()


def test_special_characters_are_escaped() -> None:
    text = "f(x) = (a \\ b) ) ( \\\\n \x01 end"
    assert body_lines(page_texts(render(text.encode()))[0])[0].startswith("f(x) = (a \\ b) ) (")


def test_chunked_input_gives_the_same_pdf() -> None:
    data = (f"{GREEK}\n{CYRILLIC}\r\n\tword\fx\n" * 200).encode()
    assert render(data, chunk=7) == render(data)


def test_uncompressed_output() -> None:
    pdf = render(b"plain text here\n", compress_level=0)
    assert b"(plain text here)'" in pdf


def test_other_encoding() -> None:
    lines = body_lines(page_texts(render("Grüße\n".encode("cp1252"), encoding="cp1252"))[0])
    assert lines == ["Grüße"]


def test_undecodable_input_is_an_error_with_the_byte_offset() -> None:
    data = "ok ñ\n".encode() * 10 + b"bad \xff here"
    with pytest.raises(UndecodableContentError, match=r"not utf-8 at byte 64\b"):
        render(data, chunk=5)
