"""Entry names of the ``zip`` job step: the input key's last path part, safe to extract,
unique in the archive (the step itself is tested in tests/integration/jobs/test_zip_bundle.py)."""

from __future__ import annotations

import pytest

from s3flow.pipelines.zip_bundle import entry_base, unique_entry


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("uploads/u/0-a.txt", "0-a.txt"),
        ("a/../../b.txt", "b.txt"),
        ("/abs/x.txt", "x.txt"),
        ("x\\..\\..\\y.txt", "y.txt"),
        ("..", "file"),
        (".", "file"),
        ("dir/", "file"),
        ("", "file"),
        (" . ", "file"),
        ("d:x.txt", "d_x.txt"),
        ("tab\there\x00.txt", "tab_here_.txt"),
        ("bad\udc80.txt", "bad_.txt"),
        (".env", ".env"),
    ],
)
def test_entry_base(key: str, expected: str) -> None:
    assert entry_base(key) == expected


def test_unique_entry_loops_until_the_name_is_free() -> None:
    used: set[str] = set()
    got = [unique_entry(n, used) for n in ["r-1.txt", "r.txt", "R.txt", "r.txt", "a.tar.gz"]]
    got += [unique_entry(n, used) for n in ["a.tar.gz", ".env", ".env", "noext", "noext"]]
    assert got == [
        "r-1.txt",
        "r.txt",
        "R-2.txt",
        "r-3.txt",
        "a.tar.gz",
        "a-1.tar.gz",
        ".env",
        ".env-1",
        "noext",
        "noext-1",
    ]


def test_unique_entry_takes_nfc_and_nfd_names_for_one_name() -> None:
    """a/café.txt (NFC) and b/café.txt (NFD) were two entries both shown as café.txt:
    extracted on macOS, the second overwrote the first."""
    nfc, nfd = "caf\u00e9.txt", "cafe\u0301.txt"
    used: set[str] = set()
    got = [unique_entry(entry_base(k), used) for k in (f"a/{nfc}", f"b/{nfd}", "c/CAFE\u0301.txt")]
    assert got == [nfc, "caf\u00e9-1.txt", "CAF\u00c9-2.txt"]  # written in NFC


def test_an_nfd_entry_name_is_written_in_nfc() -> None:
    nfd = entry_base("d/re\u0301sume\u0301.pdf")
    assert unique_entry(nfd, set()) == "r\u00e9sum\u00e9.pdf"
