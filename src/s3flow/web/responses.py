"""The API's JSON responses: UTF-8 when the text allows it, ``\\u`` escapes when not."""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import JSONResponse

__all__ = ["SafeJSONResponse"]


class SafeJSONResponse(JSONResponse):
    """A JSONResponse that cannot fail to encode.

    Text that came from elsewhere (a job event's error, a processor's message) may hold
    a lone surrogate (``surrogateescape`` of undecodable bytes), which UTF-8 cannot
    encode: Starlette's JSONResponse then raises, and one such job made every listing
    that includes it answer 500. Such a body is written with ``\\uXXXX`` escapes, which
    JSON parsers (browsers' included) read back as the same text.
    """

    def render(self, content: Any) -> bytes:
        """``content`` as JSON bytes (ASCII escapes only when UTF-8 cannot hold it)."""
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(
                content, ensure_ascii=True, allow_nan=False, indent=None, separators=(",", ":")
            ).encode("ascii")
