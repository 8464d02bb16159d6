"""Rendering text to PDF, read back with pypdf: Unicode, pages, title, page numbers, errors."""

from __future__ import annotations

import io
import random
from typing import Any

import pypdf
import pytest

from s3flow.errors import UndecodableContentError
from s3flow.pipelines.text_to_pdf.fonts import find_font, load_font
from s3flow.pipelines.text_to_pdf.layout import MAX_ROW_CHARS
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


def test_cjk_text_opening_several_subsets_on_one_page_round_trips() -> None:
    """3000 lines of CJK (not in DejaVu: drawn as boxes, but in the text layer). A page
    brings hundreds of new characters, so several subsets open at once: each must get
    its own table (one was lost: IndexError, retried until dead-lettered)."""
    rng = random.Random(2500)
    common = [chr(c) for c in range(0x4E00, 0x58C4)]
    lines = ["".join(rng.choices(common, k=rng.randint(8, 30))) for _ in range(3000)]
    # 6 pt: ~100 rows a page, ~1900 characters (the first pages bring 1000+ new ones).
    pdf = render(("\n".join(lines) + "\n").encode(), chunk=1 << 20, font_size=6)
    assert pdf.count(b"/Subtype /TrueType") > 9  # 2500 characters: 10+ subsets
    assert [row for page in page_texts(pdf) for row in body_lines(page)] == lines


def _cut_everywhere(data: bytes, cuts: list[int], **opts: Any) -> bytes:
    options = TextToPdfOptions(**opts)
    font = load_font(find_font(options.monospace, options.font_file))
    out = io.BytesIO()
    doc = TextDocument(out, options, font, "docs/sample.txt")
    last = 0
    for cut in [*sorted(cuts), len(data)]:
        doc.feed(data[last:cut])
        last = cut
    doc.finish()
    return out.getvalue()


@pytest.mark.parametrize("monospace", [True, False])
def test_the_same_pdf_however_the_bytes_are_chunked(monospace: bool) -> None:
    """Lines over 64 Ki characters are laid out before they end; where the chunks are
    cut must not matter, even inside such a line, a run of spaces at a row break, a
    form feed, CRLF or a UTF-8 character."""
    pieces = [
        b"a" * 70_000 + b" " * 300 + b"b" * 10 + b"\n",  # spaces at a break, in two chunks
        b"x" * 70_000 + b"\f" + b"\nnext line\n",  # "\f\n" across a flush: no empty row
        b"words and " * 8_000 + b"\t\tindented\r\n",
        "\u03b1\u03b2\u03b3 ".encode() * 20_000 + b"\r\n\f\f" + b"   \f after\r\n",
        b"short\r\nlines\r\n" * 200,
    ]
    data = b"".join(pieces)
    whole = _cut_everywhere(data, [], monospace=monospace)
    rng = random.Random(7)
    after_feed = len(pieces[0]) + 70_001
    assert data[after_feed - 1 : after_feed + 1] == b"\f\n"
    breaks = [70_100, after_feed, len(data) - 1]  # the reviewer's cuts, and inside a CRLF
    cut_sets = [breaks, *(rng.sample(range(1, len(data)), 6) for _ in range(6))]
    # Cuts inside space runs, next to form feeds and inside CRLF pairs.
    specials = [i for i in range(len(data)) if data[i : i + 1] in b" \f\r"]
    cut_sets += [rng.sample(specials, 8) for _ in range(4)]
    for cuts in cut_sets:
        assert _cut_everywhere(data, cuts, monospace=monospace) == whole, cuts
    rows = [row for page in page_texts(whole) for row in body_lines(page)]
    assert "next line" in rows and "" not in rows[: rows.index("next line")]
    assert not any(row.startswith(" ") and row.strip() == "b" * 10 for row in rows)


def test_form_feeds_at_the_very_end_add_no_page() -> None:
    assert len(page_texts(render(b"one\n\f\f"))) == 1
    assert len(page_texts(render(b"one\n\f\ftwo\n"))) == 3  # between text: a blank page


def test_zero_width_characters_fill_rows_of_at_most_max_row_chars() -> None:
    """A row of U+200B never fills by width: rows hold MAX_ROW_CHARS characters at most,
    so pages come out as the text streams (before, 8 M characters took 52 s, 730 MB)."""
    n = 1_000_000  # 3 MB of UTF-8
    pdf = render(("\u200b" * n).encode(), chunk=1 << 20, monospace=False)
    rows = -(-n // MAX_ROW_CHARS)
    assert len(page_texts(pdf)) == -(-rows // per_page())


def test_a_codec_failing_without_an_offset_is_a_permanent_error_naming_the_file() -> None:
    """A bare UnicodeError from the codec (here "undefined", which the options refuse
    now) is UndecodableContentError, not a retryable crash."""
    options = TextToPdfOptions().model_copy(update={"encoding": "undefined"})
    font = load_font(find_font(True))
    doc = TextDocument(io.BytesIO(), options, font, "in/notes.txt")
    with pytest.raises(UndecodableContentError, match=r"in/notes\.txt.*encoding"):
        doc.feed(b"hello\n")
