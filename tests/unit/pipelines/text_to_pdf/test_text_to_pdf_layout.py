"""Layout of text into pages: line ends, tabs, wrapping, form feeds, pagination, streaming."""

from __future__ import annotations

import tracemalloc
from bisect import bisect_right
from itertools import accumulate
from unittest.mock import patch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3flow.pipelines.text_to_pdf import layout
from s3flow.pipelines.text_to_pdf.fonts import CharWidths
from s3flow.pipelines.text_to_pdf.layout import (
    LONG_LINE,
    MAX_ROW_CHARS,
    Paginator,
    Wrapper,
    expand_tabs,
)

MONO = CharWidths({chr(c): 600.0 for c in range(32, 0x500)}, 600.0)
# 10 pt glyphs of 600/1000 em = 6 pt each: 60 pt of text width = 10 columns.
COLS = 10


def mono(cols: int = COLS) -> Wrapper:
    return Wrapper(MONO, 600.0, 10.0, cols * 6.0)


def pages_of(
    text: str, lines_per_page: int = 3, wrapper: Wrapper | None = None, tab: int = 8
) -> list[list[str]]:
    pag = Paginator(wrapper or mono(), lines_per_page, tab)
    return pag.feed(text) + pag.finish()


def test_empty_text_is_one_empty_page() -> None:
    assert pages_of("") == [[]]


@pytest.mark.parametrize(
    ("text", "pages"),
    [
        ("a", [["a"]]),
        ("a\n", [["a"]]),
        ("a\nb", [["a", "b"]]),
        ("a\n\n", [["a", ""]]),
        ("\n", [[""]]),
        ("1\n2\n3\n", [["1", "2", "3"]]),
        ("1\n2\n3\n4\n", [["1", "2", "3"], ["4"]]),
        ("1\n2\n3\n4\n5\n6\n7", [["1", "2", "3"], ["4", "5", "6"], ["7"]]),
    ],
)
def test_page_counts(text: str, pages: list[list[str]]) -> None:
    assert pages_of(text) == pages


def test_crlf_and_lone_cr_end_lines() -> None:
    assert pages_of("a\r\nb\rc\r\n", lines_per_page=9) == [["a", "b", "c"]]
    assert pages_of("a\r", lines_per_page=9) == [["a"]]
    assert pages_of("a\r\r", lines_per_page=9) == [["a", ""]]


def test_crlf_split_across_chunks_is_one_line_end() -> None:
    pag = Paginator(mono(), 9)
    out = pag.feed("a\r") + pag.feed("\nb\r") + pag.feed("\n") + pag.finish()
    assert out == [["a", "b"]]


def test_tabs_expand_to_tab_stops() -> None:
    assert pages_of("a\tb\n\tc", lines_per_page=9, wrapper=mono(40)) == [["a       b", "        c"]]
    assert pages_of("ab\tc", tab=4) == [["ab  c"]]
    assert expand_tabs("\tx", 4, column=3) == " x"
    assert expand_tabs("no tabs", 8, column=5) == "no tabs"


def test_wrapping_breaks_at_the_last_space_that_fits() -> None:
    assert pages_of("the quick brown fox jumps", lines_per_page=9) == [
        ["the quick", "brown fox", "jumps"]
    ]


def test_wrapping_without_spaces_breaks_mid_word() -> None:
    assert pages_of("abcdefghijklmnopqrstuvwxy", lines_per_page=9) == [
        ["abcdefghij", "klmnopqrst", "uvwxy"]
    ]


def test_wrapping_drops_spaces_at_the_break_and_keeps_indentation() -> None:
    # Only leading spaces to break at: mid-word, not an empty row.
    assert pages_of("    indented words here", lines_per_page=9) == [
        ["    indent", "ed words", "here"]
    ]
    assert pages_of("  ab cd ef gh", lines_per_page=9) == [["  ab cd ef", "gh"]]
    assert pages_of("0123456789     ", lines_per_page=9) == [["0123456789"]]


def test_wrapped_rows_paginate() -> None:
    # 25 characters -> 3 rows; 2 rows a page.
    assert pages_of("x" * 25, lines_per_page=2) == [["x" * 10, "x" * 10], ["x" * 5]]


def test_proportional_wrapping_measures_each_character() -> None:
    widths = CharWidths({"i": 250.0, "m": 1000.0, " ": 250.0}, 500.0)
    wrapper = Wrapper(widths, None, 10.0, 20.0)  # 20 pt = 2000 units: 8 i's or 2 m's
    assert wrapper.columns is None
    assert pages_of("iiiiiiii mm mmm", lines_per_page=9, wrapper=wrapper) == [
        ["iiiiiiii", "mm", "mm", "m"]
    ]


def test_form_feed_starts_a_new_page() -> None:
    assert pages_of("a\fb") == [["a"], ["b"]]
    assert pages_of("a\n\fb\n") == [["a"], ["b"]]
    assert pages_of("a\f\nb\n") == [["a"], ["b"]]


def test_two_form_feeds_leave_a_blank_page() -> None:
    assert pages_of("a\f\fb") == [["a"], [], ["b"]]


def test_form_feeds_at_the_start_and_end_add_no_pages() -> None:
    assert pages_of("\fa\f") == [["a"]]
    assert pages_of("\f\n") == [[]]  # nothing at all: the one empty page


def test_form_feed_after_a_full_page_adds_no_blank_page() -> None:
    assert pages_of("1\n2\n3\n\f4") == [["1", "2", "3"], ["4"]]


def test_tab_columns_restart_after_a_form_feed() -> None:
    assert pages_of("abc\f\tx", wrapper=mono(40)) == [["abc"], ["        x"]]


def test_long_line_without_newline_streams_in_bounded_memory() -> None:
    pag = Paginator(mono(100), 50)
    pages: list[list[str]] = []
    piece = "word " * 20_000  # 100 kB, no newline
    for _ in range(5):
        pages += pag.feed(piece)
        assert len(pag._carry) <= LONG_LINE
    pages += pag.finish()
    rows = [row for page in pages for row in page]
    assert all(len(r) <= 100 for r in rows)
    assert " ".join(rows).split() == piece.split() * 5


@settings(max_examples=150, deadline=None)
@given(
    text=st.text(alphabet="ab \t\n\r\fαж", max_size=200),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=8),
)
def test_pages_do_not_depend_on_how_the_text_is_chunked(text: str, cuts: list[int]) -> None:
    whole = pages_of(text, lines_per_page=4)
    pag = Paginator(mono(), 4)
    out: list[list[str]] = []
    last = 0
    for cut in sorted(cuts):
        out += pag.feed(text[last:cut])
        last = max(last, cut)
    out += pag.feed(text[last:]) + pag.finish()
    assert out == whole


PROPORTIONAL = CharWidths({"i": 250.0, "m": 1000.0, " ": 250.0, "a": 500.0}, 500.0)


def _split_reference(wrapper: Wrapper, line: str) -> tuple[list[str], str]:
    """The proportional split measured over the whole line at once (the rule)."""
    limit = wrapper._limit
    cum = [0.0, *accumulate(map(PROPORTIONAL.__getitem__, line))]
    rows: list[str] = []
    start, end = 0, len(line)
    while cum[end] - cum[start] > limit:
        k = max(1, bisect_right(cum, cum[start] + limit, start) - 1 - start)
        cut = line.rfind(" ", start, start + k + 1)
        head = line[start:cut].rstrip(" ") if cut > start else ""
        if head:
            rows.append(head)
            start = cut + 1
            while start < end and line[start] == " ":
                start += 1
        else:
            rows.append(line[start : start + k])
            start += k
    return rows, line[start:]


@settings(max_examples=300, deadline=None)
@given(
    line=st.text(alphabet="im a", max_size=3000),
    width_pt=st.sampled_from([2.0, 20.0, 100.0, 700.0]),
)
def test_proportional_split_in_windows_is_the_whole_line_rule(line: str, width_pt: float) -> None:
    wrapper = Wrapper(PROPORTIONAL, None, 10.0, width_pt)
    assert wrapper.split(line) == _split_reference(wrapper, line)


def test_a_line_of_tabs_wraps_in_memory_that_follows_a_row() -> None:
    """256 Ki tabs are 2 Mi spaces: measuring the whole expanded line at once took a
    float per character (over 64 MB); a row's window takes almost nothing."""
    pag = Paginator(Wrapper(PROPORTIONAL, None, 10.0, 400.0), 60, tab_size=8)
    tracemalloc.start()
    try:
        pages = pag.feed("\t" * (256 * 1024) + "end\n") + pag.finish()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    rows = [row for page in pages for row in page]
    assert rows[-1].endswith("end") and len(rows) > 100
    assert peak < 40 * 1024 * 1024, f"peak {peak / 2**20:.0f} MiB"


# --- chunking, form feeds at the end, rows of characters without width -----------------

ZERO = CharWidths({"a": 500.0, " ": 250.0, "m": 1000.0, "\u200b": 0.0, "\u0301": 0.0}, 500.0)


def _chunked(text: str, cuts: list[int], wrapper: Wrapper, tab: int = 4) -> list[list[str]]:
    pag = Paginator(wrapper, 4, tab)
    out: list[list[str]] = []
    last = 0
    for cut in sorted(cuts):
        out += pag.feed(text[last:cut])
        last = max(last, cut)
    return out + pag.feed(text[last:]) + pag.finish()


#: Text made of runs: long words, runs of spaces (row breaks), zero-width characters, tabs,
#: line ends (CRLF too) and form feeds.
_RUNS = st.lists(
    st.one_of(
        st.sampled_from(["\n", "\r\n", "\r", "\f", "\f\f", "\t"]),
        st.builds(lambda c, n: c * n, st.sampled_from("ab \u200b\u0301"), st.integers(1, 25)),
    ),
    max_size=25,
).map("".join)


@settings(max_examples=400, deadline=None)
@given(
    text=_RUNS,
    data=st.data(),
    long_line=st.sampled_from([4, 11, 25, 60]),
    proportional=st.booleans(),
)
def test_pages_do_not_depend_on_chunks_even_when_long_lines_are_flushed(
    text: str, data: st.DataObject, long_line: int, proportional: bool
) -> None:
    """Lines longer than LONG_LINE (made short here) are laid out before their end
    arrives: a break whose spaces continue in the next chunk, a form feed at the end of
    a flushed piece, CRLF split in two, tabs after a flush - none may change a row."""
    cuts = data.draw(st.lists(st.integers(0, len(text)), max_size=8), label="cuts")

    def wrapper() -> Wrapper:
        return Wrapper(ZERO, None, 10.0, 20.0) if proportional else mono()

    whole = _chunked(text, [], wrapper())
    with patch.object(layout, "LONG_LINE", long_line):
        assert _chunked(text, cuts, wrapper()) == whole


@pytest.mark.parametrize(
    ("text", "cut"),
    [
        ("a" * 30 + " " * 20 + "b" * 3, 35),  # the spaces of a break, cut in two
        ("a" * 30 + " " * 20 + "\n" + "b", 35),  # ... then the line ends
        ("a" * 30 + " " * 5 + "\t\tb", 35),  # tabs at a break are spaces too
        ("x" * 30 + "\f" + "\nnext line\n", 31),  # "\f\n" after a flush is no line
        ("x" * 30 + "\f" + "  indented\n", 31),  # text after "\f" keeps its spaces
    ],
)
def test_long_line_flushed_at_a_break_or_form_feed(text: str, cut: int) -> None:
    whole = _chunked(text, [], mono())
    with patch.object(layout, "LONG_LINE", 25):
        assert _chunked(text, [cut], mono()) == whole


def test_form_feeds_at_the_very_end_add_no_blank_page() -> None:
    assert pages_of("a\f\f") == [["a"]]
    assert pages_of("a\f\f\f\n") == [["a"]]
    assert pages_of("1\n2\n3\n\f\f") == [["1", "2", "3"]]
    assert pages_of("a\f\f\fb") == [["a"], [], [], ["b"]]  # between text: still blank pages


def test_rows_of_characters_without_width_are_capped() -> None:
    """U+200B has no width: a row of them never fills. Rows hold MAX_ROW_CHARS at most,
    and the widths are summed once per row, not over the whole growing line per chunk
    (8 M characters took 52 s and 730 MB)."""
    wrapper = Wrapper(ZERO, None, 10.0, 200.0)
    assert wrapper.columns is None
    pag = Paginator(wrapper, 60)
    n = 600_000  # 1.8 MB of UTF-8
    chunk = "\u200b" * 150_000
    tracemalloc.start()
    try:
        pages = []
        for _ in range(n // len(chunk)):
            pages += pag.feed(chunk)
            assert len(pag._carry) <= LONG_LINE
        pages += pag.finish()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    rows = [row for page in pages for row in page]
    assert [len(r) for r in rows] == [MAX_ROW_CHARS] * (n // MAX_ROW_CHARS) + [n % MAX_ROW_CHARS]
    assert peak < 8 * 1024 * 1024, f"peak {peak / 2**20:.0f} MiB"  # it was 37 MiB


def test_row_cap_breaks_at_a_space_like_the_width_does() -> None:
    wrapper = Wrapper(ZERO, None, 10.0, 200.0, max_chars=10)
    line = "\u200b" * 6 + " " + "\u200b" * 12
    assert wrapper.wrap(line) == ["\u200b" * 6, "\u200b" * 10, "\u200b" * 2]
    assert not wrapper.fits("\u200b" * 11) and wrapper.fits("\u200b" * 10)
