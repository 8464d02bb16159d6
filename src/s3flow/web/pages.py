"""The browser pages of ``s3flow web`` and the files they load (issue 12).

``GET /`` (choose a template and files, upload them straight to S3 with the
presigned POSTs, then watch the job), ``GET /jobs`` (recent jobs, filtered by
status) and ``GET /jobs/{job_id}`` (one job, live) are static HTML: one
layout here (head, navigation) around each page's ``<main>`` from ``html/``;
their scripts and styles are served from ``static/`` under ``/static/``
(both ship as package data). Nothing is loaded from another origin, and
everything the pages show comes from the ``/api`` routes, with the token the
page asks for when ``[web] tokens`` are set.

Every page carries a Content-Security-Policy: scripts, styles and images
from the app only; ``connect-src`` adds the origin of the uploads bucket's
presigned POSTs (the browser sends the files there).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from starlette.types import Scope

from s3flow import __version__
from s3flow.web.runtime import WebRuntime

__all__ = ["HTML_DIR", "STATIC_DIR", "install_pages", "router", "storage_origin"]

HTML_DIR = Path(__file__).with_name("html")
STATIC_DIR = Path(__file__).with_name("static")

router = APIRouter(include_in_schema=False)

_BASE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    # Not "no-referrer": under it a browser sends "Origin: null" on the page's own form
    # POST, which a server without tokens must refuse (a sandboxed frame sends it too).
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


#: Every page's frame around its ``<main>``; the content comes from ``html/<name>``.
_LAYOUT = """\
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · s3flow</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/static/s3flow.css?v={version}">
<script type="module" src="/static/{script}?v={version}"></script>
</head>
<body>
<a class="skip" href="#main">Skip to the content</a>
<header class="top">
  <nav aria-label="Main">
    <span class="brand">s3flow</span>
{nav}
  </nav>
</header>
<main id="main" tabindex="-1">
{main}</main>
</body>
</html>
"""
#: The links of the main navigation: (path, text).
_NAV = (("/", "Upload"), ("/jobs", "Jobs"))


@dataclass(frozen=True)
class _Page:
    title: str
    script: str  # its module in static/
    nav: str | None  # the path of the navigation link that is this page


_PAGES = {
    "index.html": _Page("Upload files", "upload.js", "/"),
    "jobs.html": _Page("Jobs", "jobs.js", "/jobs"),
    "job.html": _Page("Job", "job.js", None),
}


@functools.cache
def _page(name: str) -> bytes:
    """One page's HTML: the layout (title, script, the version as the static files' cache
    key, the navigation with the current page marked) around ``html/<name>``."""
    page = _PAGES[name]
    nav = "\n".join(
        f'    <a href="{path}"'
        + (' aria-current="page"' if path == page.nav else "")
        + f">{text}</a>"
        for path, text in _NAV
    )
    main = (HTML_DIR / name).read_text(encoding="utf-8")
    html = _LAYOUT.format(
        title=page.title, script=page.script, version=__version__, nav=nav, main=main
    )
    return html.encode()


async def storage_origin(runtime: WebRuntime) -> str | None:
    """The origin the presigned POSTs point at (``scheme://host[:port]``), or None.

    Presigning is local (no request): one presign of a made-up key tells
    where the browser will send the files.
    """
    jobs = runtime.settings.jobs
    if jobs is None:
        return None
    try:
        post = await runtime.s3.generate_presigned_post(
            Bucket=jobs.bucket, Key="uploads/origin-check", ExpiresIn=60
        )
        parts = urlsplit(str(post["url"]))
    except Exception:  # no credentials: the page still loads, uploads will say why
        return None
    return f"{parts.scheme}://{parts.netloc}"


def _csp(storage: str | None) -> str:
    connect = "'self'" + (f" {storage}" if storage else "")
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            f"connect-src {connect}",
            "form-action 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "object-src 'none'",
        ]
    )


async def _serve(request: Request, name: str) -> Response:
    state = request.app.state
    storage: str | None = getattr(state, "storage_origin", None)
    runtime: WebRuntime | None = getattr(state, "runtime", None)
    if storage is None and runtime is not None:
        storage = await storage_origin(runtime)
        state.storage_origin = storage
    headers = {**_BASE_HEADERS, "Content-Security-Policy": _csp(storage)}
    return Response(_page(name), media_type="text/html; charset=utf-8", headers=headers)


@router.get("/")
async def upload_page(request: Request) -> Response:
    """The upload page: template, files (picked or dropped), checks, progress, then the job."""
    return await _serve(request, "index.html")


@router.get("/jobs")
async def jobs_page(request: Request) -> Response:
    """Recent jobs with a status filter, each linking to its job view."""
    return await _serve(request, "jobs.html")


@router.get("/jobs/{job_id}")
async def job_page(job_id: str, request: Request) -> Response:
    """One job: files, steps with live progress, events, outputs (the script reads the id)."""
    return await _serve(request, "job.html")


class _StaticFiles(StaticFiles):
    """StaticFiles with ``nosniff``; files revalidate (ETag) so a new version shows at once."""

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        """Starlette's file response, plus ``nosniff`` and ``no-cache``."""
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers.setdefault("Cache-Control", "no-cache")
        return response


def install_pages(app: FastAPI) -> None:
    """Add the pages and ``/static`` to ``app``."""
    app.include_router(router)
    app.mount("/static", _StaticFiles(directory=STATIC_DIR), name="static")
