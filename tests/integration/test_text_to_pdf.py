"""text-to-pdf as a real pipeline on the emulator, and its memory on a 200 MB object."""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pypdf
import pytest
from itest_support import Harness

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent
TEXT = (
    "Η γρήγορη καφέ αλεπού πηδάει πάνω από τον τεμπέλη σκύλο\n"
    "Съешь же ещё этих мягких французских булок, да выпей чаю\n"
    "\tplain ASCII (with parens) and a tab\n"
    "\f"
    "second page\n"
)
#: Size of the memory test's object (MB); S3FLOW_T2P_RSS_MB overrides it.
RSS_MB = int(os.environ.get("S3FLOW_T2P_RSS_MB", "200"))
RSS_LIMIT_MB = 300


def _pdf_pages(data: bytes) -> list[list[str]]:
    reader = pypdf.PdfReader(io.BytesIO(data), strict=True)
    return [page.extract_text().splitlines() for page in reader.pages]


def _attr(msg: dict[str, Any], name: str) -> str:
    return str(msg["MessageAttributes"][name]["StringValue"])


def test_pipeline_writes_the_pdf_with_content_type_and_metadata(harness: Harness) -> None:
    harness.configure(processor="text-to-pdf", output=f"s3://{harness.out_bucket}/pdf/")
    harness.put("docs/ελληνικά и русский.txt", TEXT.encode())
    etag = harness.s3.head_object(Bucket=harness.bucket, Key="docs/ελληνικά и русский.txt")["ETag"]
    m = harness.run()
    p = m.pipelines["p"]
    assert p.objects_processed == 1 and p.dead_lettered == 0
    key = "pdf/docs/ελληνικά и русский.txt.pdf"
    assert harness.output_keys() == [key]
    obj = harness.s3.get_object(Bucket=harness.out_bucket, Key=key)
    assert obj["ContentType"] == "application/pdf"
    assert obj["Metadata"] == {
        "source-bucket": harness.bucket,
        "source-key": "docs/%CE%B5%CE%BB%CE%BB%CE%B7%CE%BD%CE%B9%CE%BA%CE%AC "
        "%D0%B8 %D1%80%D1%83%D1%81%D1%81%D0%BA%D0%B8%D0%B9.txt",
        "source-etag": etag.strip('"'),
        "pages": "2",
    }
    data = obj["Body"].read()
    assert data.startswith(b"%PDF-") and data.endswith(b"%%EOF\n")
    title = "docs/ελληνικά и русский.txt"
    assert _pdf_pages(data) == [
        [title, *TEXT.split("\f")[0].expandtabs(8).splitlines(), "Page 1"],
        [title, "second page", "Page 2"],
    ]
    assert harness.depth() == (0, 0)


def test_empty_object_is_one_page_with_the_title(harness: Harness) -> None:
    harness.configure(processor="text-to-pdf", output=f"s3://{harness.out_bucket}/pdf/")
    harness.put("empty.txt", b"")
    harness.run()
    obj = harness.s3.get_object(Bucket=harness.out_bucket, Key="pdf/empty.txt.pdf")
    assert obj["Metadata"]["pages"] == "1"
    assert _pdf_pages(obj["Body"].read()) == [["empty.txt", "Page 1"]]


def test_undecodable_object_is_dead_lettered_with_the_offset(harness: Harness) -> None:
    harness.configure(processor="text-to-pdf", output=f"s3://{harness.out_bucket}/pdf/")
    harness.put("latin1.txt", "ok\ncafé\n".encode("latin-1"))
    harness.put("good.txt", b"fine\n")
    m = harness.run()
    p = m.pipelines["p"]
    assert p.dead_lettered == 1 and p.objects_processed == 1
    dlq = harness.dlq_messages()
    assert len(dlq) == 1
    assert _attr(dlq[0], "s3flow.error-class") == "UndecodableContentError"
    assert "not utf-8 at byte 6" in _attr(dlq[0], "s3flow.error")
    assert harness.output_keys() == ["pdf/good.txt.pdf"]


def test_big_object_converts_in_bounded_memory(harness: Harness, tmp_path: Path) -> None:
    """A 200 MB text object converts in < 300 MB RSS (measured in a child process)."""
    harness.configure(
        processor="text-to-pdf", output=f"s3://{harness.out_bucket}/pdf/", provision_it=False
    )
    harness.s3.create_bucket(Bucket=harness.bucket)
    harness.s3.create_bucket(Bucket=harness.out_bucket)
    # Random text (Latin, Greek, Cyrillic): hardly compressible, so the PDF is about
    # as big as the text and holding it in memory would show.
    rng = random.Random(7)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789     αβγδεζηθλμπσωабвгдежзиклмн"
    lines = ["".join(rng.choices(alphabet, k=rng.randint(0, 120))) for _ in range(8_000)]
    block = ("\n".join(lines) + "\n").encode()  # ~ 0.7 MB
    data = block * (RSS_MB * 1_000_000 // len(block) + 1)
    harness.s3.put_object(Bucket=harness.bucket, Key="big.txt", Body=data)
    size = len(data)
    del data
    started = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            str(HERE / "text_to_pdf_child.py"),
            harness.bucket,
            "big.txt",
            f"s3://{harness.out_bucket}/pdf/",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    wall = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"text-to-pdf {size / 1e6:.0f} MB: {report} (child wall {wall:.1f} s)")
    assert report["text_bytes"] == size
    assert report["peak_rss_mb"] < RSS_LIMIT_MB
    head = harness.s3.head_object(Bucket=harness.out_bucket, Key="pdf/big.txt.pdf")
    assert head["ContentType"] == "application/pdf"
    assert head["ContentLength"] == report["bytes_out"]
    assert head["Metadata"]["pages"] == str(report["pages"])
    # The page tree's root (object 2), found through the trailer and the xref table.
    tail = _range(harness, "pdf/big.txt.pdf", "bytes=-200")
    assert tail.endswith(b"%%EOF\n")
    xref_at = int(tail.split(b"startxref\n")[1].split()[0])
    head_of_xref = _range(harness, "pdf/big.txt.pdf", f"bytes={xref_at}-{xref_at + 99}")
    entries = head_of_xref.split(b"\n", 2)[2]  # after "xref" and "0 N"
    root_at = int(entries[40:50])  # entry 2, 20 bytes each
    root = _range(harness, "pdf/big.txt.pdf", f"bytes={root_at}-{root_at + 199}")
    assert root.startswith(b"2 0 obj") and b"/Count %d " % report["pages"] in root


def _range(harness: Harness, key: str, byte_range: str) -> bytes:
    obj = harness.s3.get_object(Bucket=harness.out_bucket, Key=key, Range=byte_range)
    return bytes(obj["Body"].read())
