"""The page's files: served by the app itself (nothing from another origin), and shipped.

The pages, their scripts and styles come from the package (``s3flow/web/html`` and
``s3flow/web/static``); a built and installed wheel has every one of them.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from web_support import WebThread

from s3flow.local.endpoint import LocalEndpoint
from s3flow.web.pages import HTML_DIR, STATIC_DIR

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
_REFS = re.compile(r"""(?:src|href)="([^"]+)"|from\s+"([^"]+)"|url\(([^)]+)\)""")


def references(text: str) -> list[str]:
    """Every src/href attribute, ES module import and CSS url() in ``text``."""
    return [next(g for g in m.groups() if g) for m in _REFS.finditer(text)]


def package_files() -> list[str]:
    return sorted(
        f"{d.name}/{p.name}" for d in (HTML_DIR, STATIC_DIR) for p in d.iterdir() if p.is_file()
    )


def test_nothing_is_loaded_from_another_origin() -> None:
    for name in package_files():
        text = (HTML_DIR.parent / name).read_text()
        for ref in references(text):
            parts = urlsplit(ref)
            assert not parts.scheme or parts.scheme == "data", f"{name} loads {ref}"
            assert not parts.netloc, f"{name} loads {ref}"


async def test_pages_and_their_files_are_served(
    shared_web: WebThread, endpoint: LocalEndpoint
) -> None:
    async with httpx.AsyncClient(base_url=shared_web.url, timeout=10) as client:
        for path in ("/", "/jobs", "/jobs/job-0123"):
            r = await client.get(path)
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
            csp = r.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "style-src 'self'" in csp
            storage = urlsplit(endpoint.url)
            assert f"connect-src 'self' {storage.scheme}://{storage.netloc}" in csp
            assert "{{" not in r.text
        seen: set[str] = set()
        todo = ["/", "/jobs", "/jobs/x"]
        while todo:
            path = todo.pop()
            r = await client.get(path)
            assert r.status_code == 200, path
            seen.add(urlsplit(path).path)
            for ref in references(r.text):
                if ref.startswith("data:"):
                    continue
                # The served page, head included (pages.py builds it): nothing from elsewhere.
                assert not urlsplit(ref).scheme and not urlsplit(ref).netloc, f"{path} loads {ref}"
                target = urlsplit(str(httpx.URL(f"{shared_web.url}{path}").join(ref))).path
                if target not in seen and target.startswith("/static/"):
                    todo.append(target)
        served = {p for p in seen if p.startswith("/static/")}
        assert served == {f"/static/{p.name}" for p in STATIC_DIR.iterdir()}
        js = await client.get("/static/upload.js")
        assert "javascript" in js.headers["content-type"]
        assert js.headers["x-content-type-options"] == "nosniff"
        assert "text/css" in (await client.get("/static/s3flow.css")).headers["content-type"]


def test_the_built_package_ships_the_page(tmp_path: Path) -> None:
    """`pip install .` (here: a wheel built from the tree, installed into a directory)."""
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)],
        check=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("s3flow-*.whl")
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), wheel],
        check=True,
        timeout=300,
    )
    probe = (
        "import s3flow.web.pages as p, sys; "
        "print(p.__file__); "
        "print('\\n'.join(sorted(f'{d.name}/{f.name}' for d in (p.HTML_DIR, p.STATIC_DIR) "
        "for f in d.iterdir() if f.is_file())))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.splitlines()
    assert out[0].startswith(str(target)), out[0]  # the installed copy, not the source tree
    assert out[1:] == package_files()
