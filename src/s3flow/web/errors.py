"""Every error the API answers is JSON ``{"error": "..."}`` a person can act on.

:class:`ApiError` carries an HTTP status; :func:`install_error_handlers`
turns it, refused uploads (400), FastAPI's own validation errors (400, not
422), unknown routes and methods (404/405), backend trouble (503) and bugs
(500, details only in the server log) into that shape; a client that leaves mid-body
is logged at INFO, not as a bug.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from s3flow.errors import S3flowError
from s3flow.jobs.uploads import BadUploadError
from s3flow.web.responses import SafeJSONResponse

__all__ = ["ApiError", "error_response", "install_error_handlers"]

log = logging.getLogger("s3flow.web")


class ApiError(S3flowError):
    """A request the API refuses, with the HTTP status to answer."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> SafeJSONResponse:
    """``{"error": message}`` with ``status``."""
    return SafeJSONResponse({"error": message}, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        where = {"query": "query parameter", "path": "path", "header": "header"}.get(
            loc[0] if loc else "", "body"
        )
        name = ".".join(loc[1:]) if loc and loc[0] in ("query", "path", "header") else ".".join(loc)
        parts.append(f"{where} {name!r}: {err.get('msg', 'invalid')}" if name else err["msg"])
    return "bad request: " + "; ".join(parts or ["the request is not valid"])


def install_error_handlers(app: FastAPI) -> None:
    """Make every error answer of ``app`` a JSON ``{"error": ...}``."""

    async def api_error(_: Request, exc: Exception) -> SafeJSONResponse:
        assert isinstance(exc, ApiError)
        return error_response(exc.status, str(exc), exc.headers)

    async def bad_upload(_: Request, exc: Exception) -> SafeJSONResponse:
        return error_response(400, str(exc))

    async def validation(_: Request, exc: Exception) -> SafeJSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(400, _validation_message(exc))

    async def http_error(request: Request, exc: Exception) -> SafeJSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404 and exc.detail == "Not Found":
            message = f"no such page: {request.url.path} (the API is under /api/)"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        return error_response(exc.status_code, message, dict(exc.headers or {}))

    async def backend_error(request: Request, exc: Exception) -> SafeJSONResponse:
        log.warning("%s %s failed: %s", request.method, request.url.path, exc)
        return error_response(503, f"the service cannot answer right now: {exc}")

    async def client_gone(request: Request, exc: Exception) -> SafeJSONResponse:
        # The client closed the connection mid-body (a cancelled upload): no one reads
        # this answer, and it is no server error.
        log.info(
            "%s %s: the client left before sending the whole body", request.method, request.url.path
        )
        return error_response(400, "the client closed the connection before the body ended")

    async def bug(request: Request, exc: Exception) -> SafeJSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal error: the server log has the details")

    handlers: list[tuple[Any, Any]] = [
        (ApiError, api_error),
        (BadUploadError, bad_upload),
        (RequestValidationError, validation),
        (StarletteHTTPException, http_error),
        (S3flowError, backend_error),
        (ClientDisconnect, client_gone),
        (Exception, bug),
    ]
    for exc_class, handler in handlers:
        app.add_exception_handler(exc_class, handler)
