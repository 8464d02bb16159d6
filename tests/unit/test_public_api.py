"""The package as a user sees it: typed, and what ``from s3flow import ...`` gives."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_package_is_marked_typed_and_ships_the_marker() -> None:
    # PEP 561: without py.typed, mypy skips s3flow in a user's code ("missing library
    # stubs or py.typed marker"); the marker must also be in the wheel's package data.
    assert (ROOT / "src" / "s3flow" / "py.typed").is_file()
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_data = config["tool"]["setuptools"]["package-data"]
    assert "py.typed" in package_data["s3flow"]
