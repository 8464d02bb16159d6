"""Bytes to text, chunk by chunk, with the byte offset of anything that does not decode."""

from __future__ import annotations

import codecs

from s3flow.errors import UndecodableContentError

_BOM = "\ufeff"
#: Byte order marks of encodings other than UTF-8, and the encoding to set for them.
_OTHER_BOMS = {b"\xff\xfe": "utf-16", b"\xfe\xff": "utf-16"}


class TextDecoder:
    """An incremental decoder for one object that reports bad input by absolute byte offset.

    Every decoding failure is an :class:`~s3flow.errors.UndecodableContentError` (permanent):
    a codec's bare ``UnicodeError`` too, with ``source`` (the object's key) and the option
    to change.

    A byte-order mark at the very start is dropped (a UTF-8 BOM would otherwise be
    drawn as a character); characters split across chunks are carried over.
    """

    def __init__(self, encoding: str, source: str = "") -> None:
        self.encoding = encoding
        self.source = source  # the object's key, for messages
        self._decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
        self._offset = 0  # bytes fed so far
        self._started = False

    def decode(self, data: bytes, final: bool = False) -> str:
        """Decode the next chunk (``final`` for the end of the object)."""
        pending = self._pending()
        try:
            text = self._decoder.decode(data, final)
        except UnicodeDecodeError as exc:
            # The decoder saw its buffered bytes of the last chunk, then ``data``.
            at = self._offset - pending + exc.start
            what = "truncated character at the end" if final and not data else exc.reason
            bom = _OTHER_BOMS.get(bytes(exc.object[:4])[:2]) if at < 4 else None
            hint = (
                f"; it starts with a {bom} byte order mark: set the encoding option to {bom!r}"
                if bom
                else "; if the text is in another encoding, set the encoding option to it "
                "(e.g. 'latin-1', 'cp1252')"
            )
            raise UndecodableContentError(
                f"not {self.encoding} at byte {at}: {what} "
                f"(bytes {exc.object[exc.start : exc.start + 4]!r}){hint}"
            ) from exc
        except UnicodeError as exc:  # a codec that fails without saying where
            of = f" {self.source}" if self.source else ""
            raise UndecodableContentError(
                f"cannot decode{of} as {self.encoding}: {exc or type(exc).__name__} (in the "
                f"bytes from offset {self._offset - pending}); set the encoding option "
                "to the text encoding of the objects"
            ) from exc
        self._offset += len(data)
        if not self._started and text:
            self._started = True
            if text.startswith(_BOM):
                text = text[1:]
        return text

    def _pending(self) -> int:
        state = self._decoder.getstate()
        buffered = state[0] if isinstance(state, tuple) else b""
        return len(buffered) if isinstance(buffered, bytes | bytearray) else 0
