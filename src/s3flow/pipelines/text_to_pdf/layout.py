"""Text to pages of display lines: line ends, tabs, wrapping, form feeds, pagination.

Pure text logic, no PDF. Text arrives in chunks and leaves as complete pages
(lists of display lines), so a document of any size is laid out with one page
and one partial line in memory.

Rules:

* ``\\n``, ``\\r\\n`` and a lone ``\\r`` end a line;
* tabs become spaces up to the next multiple of ``tab_size`` columns (counted
  from the start of the line, or of the text after a form feed);
* a line too wide for the page wraps at its last space that fits (the spaces at
  the break are dropped), or mid-word when there is none; a row also holds at most
  :data:`MAX_ROW_CHARS` characters (characters of no width, such as U+200B or
  combining marks, would otherwise never fill one);
* a form feed (``\\f``) ends the page: text after it starts a new page, two in a
  row leave a blank page, form feeds before any text or at the very end are
  ignored, and an empty line next to a form feed (``\\f\\n``, ``\\n\\f``) does not
  count as a line;
* an empty text is one empty page.

The pages do not depend on how the text is cut into chunks: a long line laid out
before its end arrived carries its state (the column, a break whose spaces are
still being dropped, a part already laid out) into the next chunk.
"""

from __future__ import annotations

from bisect import bisect_right
from functools import reduce
from itertools import accumulate, islice
from operator import add

from s3flow.pipelines.text_to_pdf.fonts import CharWidths

#: A line without a line end longer than this is wrapped and paged as it streams.
LONG_LINE = 1 << 16
#: The most characters a row holds, whatever their widths: a hard break. DejaVu Sans's
#: narrowest glyph with a width would need over 1,500 to fill the widest text column
#: (Letter, no margins, 4 pt), so only characters of no width ever reach it.
MAX_ROW_CHARS = 2048

Page = list[str]

_START, _OPEN, _FULL, _FED = range(4)  # paginator states


class Wrapper:
    """Splits a line (tabs already expanded) into rows that fit the text width."""

    def __init__(
        self,
        widths: CharWidths,
        fixed_width: float | None,
        font_size: float,
        width_pt: float,
        max_chars: int = MAX_ROW_CHARS,
    ) -> None:
        # Widths are in 1/1000 em: compare against the text width in the same unit.
        self._limit = width_pt * 1000 / font_size + 1e-6
        self._widths = widths
        self._most = max(1, max_chars)  # characters in a row, at most
        #: Columns per row when every glyph has the same advance (None: proportional).
        self.columns: int | None = (
            min(self._most, max(1, int(self._limit // fixed_width))) if fixed_width else None
        )
        ascii_max = max(widths[chr(c)] for c in range(32, 127))
        self._quick = min(self._most, int(self._limit // ascii_max))  # ASCII this short fits

    def fits(self, line: str) -> bool:
        """Whether ``line`` fits on one row."""
        if self.columns is not None:
            return len(line) <= self.columns
        if len(line) > self._most:
            return False
        if len(line) <= self._quick and line.isascii():
            return True
        # Summed in order, one addition at a time, like split(): the same verdict.
        return reduce(add, map(self._widths.__getitem__, line), 0.0) <= self._limit

    def split(self, line: str) -> tuple[list[str], str]:
        """Full rows of ``line`` and the rest that fits on a row (possibly empty).

        A row's widths are summed from its own start, so splitting the rest of a line
        gives the rows splitting the whole line would.
        """
        columns, limit, widths = self.columns, self._limit, self._widths.__getitem__
        most = self._most
        rows: list[str] = []
        start, end = 0, len(line)
        # Proportional: the widths are summed over a window from ``start`` (widened while
        # a row is longer, up to ``most`` characters): memory and time follow a row, not
        # the line (a line of a million tabs is millions of spaces).
        window = min(most, max(64, 2 * self._quick + 2))
        while True:
            if columns is not None:
                if end - start <= columns:
                    break
                k = columns  # characters that fit
            else:
                stop = min(end, start + window)
                cum = [0.0, *accumulate(map(widths, line[start:stop]))]
                while cum[-1] <= limit and stop < end and stop - start < most:
                    # A row longer than the window: measure further, adding to the sums.
                    window = min(most, 2 * window)
                    more = min(end, start + window)
                    cum += islice(
                        accumulate(map(widths, line[stop:more]), initial=cum[-1]), 1, None
                    )
                    stop = more
                if cum[-1] <= limit:
                    if stop == end:
                        break
                    k = most  # a row of ``most`` characters that has not filled: break
                else:
                    k = max(1, bisect_right(cum, limit) - 1)
            cut = line.rfind(" ", start, start + k + 1)  # a space at <= k: break, drop it
            head = line[start:cut].rstrip(" ") if cut > start else ""
            if head:
                rows.append(head)
                start = cut + 1
                while start < end and line[start] == " ":
                    start += 1
            else:  # no space to break at: break mid-word
                rows.append(line[start : start + k])
                start += k
        return rows, line[start:]

    def wrap(self, line: str) -> list[str]:
        """The rows of one complete line (an empty line is one empty row)."""
        if self.fits(line):
            return [line]
        return self.wrap_long(line)

    def wrap_long(self, line: str) -> list[str]:
        """:meth:`wrap` for a line known not to fit."""
        rows, rest = self.split(line)
        if rest:
            rows.append(rest)
        return rows


def expand_tabs(text: str, tab_size: int, column: int = 0) -> str:
    """``str.expandtabs`` for text whose first character sits at ``column``."""
    if "\t" not in text:
        return text
    pad = column % tab_size
    if not pad:
        return text.expandtabs(tab_size)
    return ("\0" * pad + text).expandtabs(tab_size)[pad:]


class Paginator:
    """Feeds text in; returns complete pages as they fill up."""

    def __init__(
        self,
        wrapper: Wrapper,
        lines_per_page: int,
        tab_size: int = 8,
        long_line: int | None = None,
    ) -> None:
        if lines_per_page < 1:
            raise ValueError("a page needs room for at least one line")
        self._wrap = wrapper
        self._lpp = lines_per_page
        self._tab = tab_size
        self._long = LONG_LINE if long_line is None else long_line
        self._carry = ""  # the start of a line whose end has not arrived (tabs unexpanded)
        self._column = 0  # the carry's column in its line (after a long line was flushed)
        # The carry continues a line part of which is laid out (rows flushed, or up to a
        # form feed): when nothing more comes before its end, it adds no row.
        self._cont = False
        # The last flushed row ended at a break whose spaces ran to the end of the text
        # so far: the spaces (and tabs) that follow belong to that break and are dropped.
        self._gap = False
        self._cr = False  # the text so far ended with "\r" (maybe half of "\r\n")
        self._page: Page = []
        self._state = _START
        self._blanks = 0  # blank pages of "\f\f" not written yet (none at the very end)
        self.pages = 0  # pages returned so far

    def feed(self, text: str) -> list[Page]:
        """Lay out the next piece of text; return the pages it completed."""
        out: list[Page] = []
        if not text:
            return out
        if self._cr:
            text = "\r" + text
            self._cr = False
        if text.endswith("\r"):
            self._cr = True
            text = text[:-1]
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        if self._gap:
            text = self._skip_gap(text)
        nl = text.rfind("\n")
        if nl < 0:
            self._carry += text
        else:
            block = self._carry + text[:nl]
            self._carry = text[nl + 1 :]
            self._block(block, self._column, out)
            self._column = 0
        if len(self._carry) > self._long:
            self._flush_long(out)
        return out

    def finish(self) -> list[Page]:
        """End of text: the last page (one empty page for an empty text)."""
        out: list[Page] = []
        if self._carry or self._cr:  # "a\r" at the very end: the line "a" has ended
            self._block(self._carry, self._column, out)
        self._carry, self._cr, self._cont, self._gap = "", False, False, False
        self._blanks = 0  # form feeds at the very end add no page
        if self._state == _OPEN:
            self._emit(self._page, out)
            self._page = []
            self._state = _FULL
        if not self.pages:
            self._emit([], out)
        return out

    # --- internals ---------------------------------------------------------------

    def _skip_gap(self, text: str) -> str:
        """``text`` without the spaces and tabs that continue an open break."""
        rest = text.lstrip(" \t")
        if len(rest) < len(text):
            skipped = expand_tabs(text[: len(text) - len(rest)], self._tab, self._column)
            self._column = (self._column + len(skipped)) % self._tab
        if rest:
            self._gap = False
        return rest

    def _block(self, block: str, column: int, out: list[Page]) -> None:
        """Complete lines joined by ``\\n`` (the first starting at ``column``)."""
        if self._cont:  # the first line continues one already (partly) laid out
            self._cont = self._gap = False
            if not block:
                return  # nothing more of it: no row
            if block[0] == "\n":
                block, column = block[1:], 0
        if "\f" in block:
            for i, line in enumerate(block.split("\n")):
                self._line_with_feeds(line, column if i == 0 else 0, out)
            return
        block = expand_tabs(block, self._tab, column)
        lines = block.split("\n")
        columns = self._wrap.columns
        if columns is not None and max(map(len, lines)) <= columns:
            self._add(lines, out)  # the common case: nothing to wrap
            return
        rows: list[str] = []
        wrap = self._wrap.wrap_long
        if columns is not None:
            for line in lines:
                if len(line) <= columns:
                    rows.append(line)
                else:
                    rows += wrap(line)
        else:
            fits = self._wrap.fits
            for line in lines:
                if fits(line):
                    rows.append(line)
                else:
                    rows += wrap(line)
        self._add(rows, out)

    def _line_with_feeds(self, line: str, column: int, out: list[Page]) -> None:
        parts = line.split("\f")
        for i, part in enumerate(parts):
            if i:
                self._form_feed(out)
            if part or len(parts) == 1:
                self._add(
                    self._wrap.wrap(expand_tabs(part, self._tab, column if i == 0 else 0)), out
                )

    def _flush_long(self, out: list[Page]) -> None:
        """Lay out the full rows of a very long unfinished line; keep its tail."""
        carry, column = self._carry, self._column
        feed = carry.rfind("\f")
        if feed >= 0:
            # An empty part before the first form feed adds no row (it is one or it
            # continues a line already laid out), as when the line is laid out whole.
            self._line_with_feeds(carry[: feed + 1], column, out)
            carry, column = carry[feed + 1 :], 0
            self._cont = True  # the part after the form feed: no row when it stays empty
        if len(carry) > self._long:
            expanded = expand_tabs(carry, self._tab, column)
            rows, tail = self._wrap.split(expanded)
            self._add(rows, out)
            column = (column + len(expanded) - len(tail)) % self._tab
            carry = tail
            self._cont = True
            # split() dropped the spaces of its last break up to the end of the text: the
            # ones still to come are that break's too.
            self._gap = not tail
        self._carry, self._column = carry, column

    def _add(self, rows: list[str], out: list[Page]) -> None:
        if not rows:
            return
        while self._blanks:  # "\f\f" before this text: its blank pages
            self._blanks -= 1
            self._emit([], out)
        page, lpp = self._page, self._lpp
        room = lpp - len(page)
        if len(rows) < room:
            page += rows
            self._state = _OPEN
            return
        page += rows[:room]
        self._emit(page, out)
        i = room
        while len(rows) - i >= lpp:
            self._emit(rows[i : i + lpp], out)
            i += lpp
        self._page = rows[i:]
        self._state = _OPEN if self._page else _FULL

    def _form_feed(self, out: list[Page]) -> None:
        if self._state == _OPEN:
            self._emit(self._page, out)
            self._page = []
        elif self._state == _FED:
            self._blanks += 1  # \f\f: a blank page, written when text follows
        elif self._state == _START:
            return  # form feeds before any text
        self._state = _FED

    def _emit(self, page: Page, out: list[Page]) -> None:
        out.append(page)
        self.pages += 1
