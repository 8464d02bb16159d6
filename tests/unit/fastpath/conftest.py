"""What botocore would send: the fast path's requests are checked against it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest


@pytest.fixture
def botocore_request() -> Callable[
    [Any, Callable[[Any], Any]], tuple[Any, dict[str, str], datetime]
]:
    """``(client, call) -> (request, lower-cased str headers, its x-amz-date)``: the request
    ``call(client)`` would send, captured at ``before-send`` and never sent."""

    def capture(client: Any, call: Callable[[Any], Any]) -> tuple[Any, dict[str, str], datetime]:
        captured: list[Any] = []

        class Stop(Exception):
            pass

        def grab(request: Any, **_: Any) -> None:
            captured.append(request)
            raise Stop

        client.meta.events.register("before-send", grab)
        with pytest.raises(Stop):
            call(client)
        request = captured[0]
        headers = {
            k.lower(): v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()
        }
        when = datetime.strptime(headers["x-amz-date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        return request, headers, when

    return capture
