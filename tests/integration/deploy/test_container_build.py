"""The container image's build, without a container engine (there is none here).

The Dockerfile's steps, repeated: the build context is what .dockerignore lets
through (pyproject.toml, README.md, src/), ``pip wheel`` builds the s3flow wheel
and its dependencies' wheels, a fresh ``venv --without-pip`` gets them with
``pip --python ... install --no-index --find-links`` (nothing but the wheelhouse),
and the result runs ``s3flow --version`` and a burst worker against the emulator.
One difference: pip's cache is used here (the Dockerfile sets PIP_NO_CACHE_DIR so
the image has none), which keeps the test to about half a minute once the cache
holds the dependencies. The image itself was not built here.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from s3flow.app import provision_all
from s3flow.local.endpoint import LocalEndpoint
from s3flow.settings import load_settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
_OFFLINE = ("NewConnectionError", "Temporary failure in name resolution", "Could not fetch URL")


def _context(dest: Path) -> list[str]:
    """Copy the Docker build context (.dockerignore applied) to ``dest``; its files."""
    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*", "the test follows an allow-list .dockerignore"
    allowed = [r[1:].rstrip("/") for r in rules if r.startswith("!")]
    ignored = [r.removeprefix("**/") for r in rules[1:] if not r.startswith("!")]
    copied = []
    for top in allowed:
        src = ROOT / top
        for path in [src] if src.is_file() else sorted(src.rglob("*")):
            rel = path.relative_to(ROOT)
            if path.is_dir() or any(
                fnmatch.fnmatch(part, i) for part in rel.parts for i in ignored
            ):
                continue
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest / rel)
            copied.append(str(rel))
    return copied


def _run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", **kwargs.pop("env", {})}
    return subprocess.run(args, capture_output=True, text=True, env=env, **kwargs)


def test_the_image_recipe_builds_and_runs_a_worker(
    endpoint: LocalEndpoint, s3: Any, tmp_path: Path
) -> None:
    started = time.monotonic()
    context = tmp_path / "context"
    files = _context(context)
    assert "pyproject.toml" in files and "README.md" in files
    assert all(f.startswith("src/") for f in files if f not in ("pyproject.toml", "README.md"))
    assert not any("__pycache__" in f or f.startswith("tests/") for f in files)

    # RUN pip wheel --wheel-dir /wheels .
    wheels = tmp_path / "wheels"
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(wheels), "."],
        cwd=context,
        timeout=600,
    )
    if built.returncode != 0 and any(m in built.stderr for m in _OFFLINE):
        if os.environ.get("CI"):
            pytest.fail(f"pip cannot reach the package index:\n{built.stderr[-2000:]}")
        pytest.skip("pip cannot reach the package index")
    assert built.returncode == 0, built.stderr[-3000:]
    assert len(list(wheels.glob("s3flow-*.whl"))) == 1

    # RUN python -m venv --without-pip /opt/s3flow
    #  && pip --python /opt/s3flow/bin/python install --no-index --find-links /wheels s3flow
    venv = tmp_path / "opt-s3flow"
    made = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], timeout=120)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet"]
    installed = _run([*pip, "--no-index", "--find-links", str(wheels), "s3flow"], timeout=600)
    assert installed.returncode == 0, installed.stderr[-3000:]
    build_s = time.monotonic() - started

    # The image has no pip and runs s3flow from the venv, not from this checkout.
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith("S3FLOW_") and k != "PYTHONPATH"
    }
    where = _run(
        [
            str(python),
            "-c",
            "import s3flow, importlib.util as u; "
            "print(s3flow.__file__, u.find_spec('pip') is None)",
        ],
        cwd=tmp_path,
        env=clean,
    )
    assert where.returncode == 0, where.stderr
    module, no_pip = where.stdout.split()
    assert module.startswith(str(venv)), module
    assert no_pip == "True"

    # ENTRYPOINT ["s3flow"]: --version, then CMD ["worker"] (burst) against the emulator.
    s3flow = str(venv / "bin" / "s3flow")
    version = _run([s3flow, "--version"], cwd=tmp_path, env=clean, timeout=60)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == "s3flow 0.1.0"

    name = f"img-{uuid.uuid4().hex[:8]}"
    config = tmp_path / "s3flow.toml"
    config.write_text(
        f"""
[state]
url = "sqlite:{tmp_path / "state.db"}"

[[pipelines]]
name = "counts"
processor = "line-count"
bucket = "{name}-in"
queue = "{name}-q"
output = "s3://{name}-out/res/"
wait_time_s = 1
"""
    )
    asyncio.run(provision_all(load_settings(config)))
    s3.put_object(Bucket=f"{name}-in", Key="a.txt", Body=b"one\ntwo\n")
    worker = _run(
        [s3flow, "worker", "--burst"],
        cwd=tmp_path,
        env={**clean, **endpoint.env(), "S3FLOW_CONFIG": str(config)},
        timeout=120,
    )
    assert worker.returncode == 0, worker.stderr[-3000:]
    assert "counts: processed 1," in worker.stderr, worker.stderr[-3000:]
    result = json.loads(s3.get_object(Bucket=f"{name}-out", Key="res/a.txt.json")["Body"].read())
    assert result["lines"] == 2
    print(f"wheel + venv: {build_s:.1f}s, all: {time.monotonic() - started:.1f}s")
