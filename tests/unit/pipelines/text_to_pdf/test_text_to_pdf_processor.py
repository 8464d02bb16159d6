"""TextToPdfProcessor.process with an in-memory object: outputs, metadata, sinks, options."""

from __future__ import annotations

import asyncio
import gzip
import io
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pypdf
import pytest

from s3flow.errors import ConfigError, UndecodableContentError
from s3flow.pipelines.text_to_pdf import fonts
from s3flow.pipelines.text_to_pdf.options import TextToPdfOptions
from s3flow.pipelines.text_to_pdf.processor import TextToPdfProcessor
from s3flow.pipelines.text_to_pdf.render import TextDocument
from s3flow.processors.base import Result
from s3flow.processors.registry import create_processor
from s3flow.sinks.local import LocalDirSink

MakeCtx = Callable[..., Any]


class RecordingSink:
    """A bytes-only sink (no write_file) that keeps what it was given."""

    root = "mem://"

    def __init__(self) -> None:
        self.writes: list[tuple[str, bytes, str, dict[str, str] | None]] = []

    async def write(
        self,
        relative_key: str,
        data: bytes,
        content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
    ) -> str:
        self.writes.append((relative_key, data, content_type, metadata))
        return f"mem://{relative_key}"

    async def read(self, relative_key: str) -> bytes | None:
        return None

    async def exists(self, relative_key: str) -> bool:
        return False

    async def check(self) -> None:
        return None


class LegacySink(RecordingSink):
    """A sink written before ``metadata`` existed."""

    async def write(  # type: ignore[override]
        self, relative_key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> str:
        self.writes.append((relative_key, data, content_type, None))
        return f"mem://{relative_key}"


def pdf_text(data: bytes) -> list[str]:
    return [p.extract_text() for p in pypdf.PdfReader(io.BytesIO(data)).pages]


def output(result: Result) -> bytes:
    """The bytes of a result's (local) output file."""
    return Path(result.outputs[0]).read_bytes()


async def test_writes_key_pdf_with_the_result(make_ctx: MakeCtx, tmp_path: Path) -> None:
    ctx = make_ctx("Привет, κόσμε!\n".encode(), key="in/hello.txt", etag="e-1")
    result = await TextToPdfProcessor({}).process(ctx)
    written = tmp_path / "out" / "in" / "hello.txt.pdf"
    assert result.outputs == [str(written)]
    assert pdf_text(written.read_bytes())[0].splitlines() == [
        "in/hello.txt",
        "Привет, κόσμε!",
        "Page 1",
    ]
    assert result.counters["pages"] == 1
    assert result.counters["text_bytes"] == len("Привет, κόσμε!\n".encode())
    assert result.counters["bytes_out"] == written.stat().st_size
    assert result.detail["content_type"] == "application/pdf"
    assert result.detail["metadata"] == {
        "source-bucket": "incoming",
        "source-key": "in/hello.txt",
        "source-etag": "e-1",
        "pages": "1",
    }
    assert sum(ctx.progress) == result.counters["text_bytes"]


async def test_metadata_and_content_type_reach_the_sink(make_ctx: MakeCtx) -> None:
    ctx = make_ctx(b"a\fb\n", key="docs/na\u00efve 100%.txt", etag="abc")
    ctx.sink = sink = RecordingSink()
    result = await TextToPdfProcessor({}).process(ctx)
    [(key, data, content_type, metadata)] = sink.writes
    assert key == "docs/na\u00efve 100%.txt.pdf"
    assert result.outputs == [f"mem://{key}"]
    assert content_type == "application/pdf"
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
    assert metadata == {
        "source-bucket": "incoming",
        "source-key": "docs/na%C3%AFve 100%25.txt",  # ASCII only: percent-encoded
        "source-etag": "abc",
        "pages": "2",
    }


async def test_a_sink_without_metadata_still_gets_the_pdf(make_ctx: MakeCtx) -> None:
    ctx = make_ctx(b"hello\n")
    ctx.sink = sink = LegacySink()
    await TextToPdfProcessor({}).process(ctx)
    assert sink.writes[0][2] == "application/pdf"


async def test_file_sinks_are_given_the_file(make_ctx: MakeCtx, tmp_path: Path) -> None:
    calls: list[str] = []

    class Sink(LocalDirSink):
        async def write(self, *args: Any, **kwargs: Any) -> str:
            calls.append("write")
            return await super().write(*args, **kwargs)

        async def write_file(self, *args: Any, **kwargs: Any) -> str:
            calls.append("write_file")
            return await super().write_file(*args, **kwargs)

    ctx = make_ctx(b"x\n" * 1000)
    ctx.sink = Sink(tmp_path / "files")
    result = await TextToPdfProcessor({}).process(ctx)
    assert calls == ["write_file"]
    assert output(result).startswith(b"%PDF-")


async def test_compressed_objects_are_decompressed(make_ctx: MakeCtx, tmp_path: Path) -> None:
    ctx = make_ctx(gzip.compress("ζ\n".encode() * 500), key="z.txt.gz")
    result = await TextToPdfProcessor({}).process(ctx)
    assert result.counters["text_bytes"] == 1500
    assert "ζ" in pdf_text(output(result))[0]


async def test_undecodable_object_is_a_permanent_error(make_ctx: MakeCtx, tmp_path: Path) -> None:
    ctx = make_ctx(b"fine\n" * 3 + b"caf\xe9\n", chunk_bytes=4)
    with pytest.raises(UndecodableContentError, match=r"at byte 18\b"):
        await TextToPdfProcessor({}).process(ctx)
    assert not (tmp_path / "out" / "in" / "file.txt.pdf").exists()


async def test_encoding_option(make_ctx: MakeCtx) -> None:
    ctx = make_ctx("caf\u00e9\n".encode("latin-1"))
    result = await TextToPdfProcessor({"encoding": "latin-1"}).process(ctx)
    assert "café" in pdf_text(output(result))[0]


async def test_rendering_runs_off_the_event_loop(
    make_ctx: MakeCtx, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every feed/finish runs on a worker thread: the loop keeps ticking meanwhile."""
    threads: list[str] = []
    feed, finish = TextDocument.feed, TextDocument.finish

    def spy_feed(self: TextDocument, data: bytes) -> None:
        threads.append(threading.current_thread().name)
        time.sleep(0.05)  # a slow chunk: the ticker must not notice
        feed(self, data)

    def spy_finish(self: TextDocument) -> int:
        threads.append(threading.current_thread().name)
        return finish(self)

    monkeypatch.setattr(TextDocument, "feed", spy_feed)
    monkeypatch.setattr(TextDocument, "finish", spy_finish)
    ctx = make_ctx(b"lorem ipsum dolor sit amet\n" * 200_000, chunk_bytes=256 * 1024)  # 5.4 MB
    ticks = 0
    done = asyncio.Event()

    async def tick() -> None:
        nonlocal ticks
        while not done.is_set():
            await asyncio.sleep(0.005)
            ticks += 1

    ticker = asyncio.create_task(tick())
    await TextToPdfProcessor({}).process(ctx)
    done.set()
    await ticker
    assert len(threads) >= 6  # 5 feeds of >= 1 MiB, then finish
    assert threading.main_thread().name not in threads
    assert ticks >= len(threads) * 3


def test_registered_and_cpu_bound() -> None:
    proc = create_processor("text-to-pdf", {"page_size": "Letter", "monospace": False})
    assert isinstance(proc, TextToPdfProcessor)
    assert proc.cpu_bound is True
    assert TextToPdfProcessor.options_model is TextToPdfOptions
    assert proc.font.fixed_width is None  # DejaVu Sans


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"colour": "red"}, "unknown option"),
        ({"page_size": "A5"}, "page_size"),
        ({"encoding": "no-such-codec"}, "unknown text encoding"),
        ({"encoding": "base64"}, "not a text encoding"),
        ({"margin_mm": 80, "font_size": 48}, "leaves no room"),
        ({"font_size": 2}, "font_size"),
        # A text encoding by name that decodes nothing: every object failed (retried).
        ({"encoding": "undefined"}, r"encoding: .*'undefined' cannot decode text"),
        # Strict types: not converted to True / 1 / "use DejaVu".
        ({"title": "yes"}, r"title: .*valid boolean"),
        ({"page_numbers": 1}, r"page_numbers: .*valid boolean"),
        ({"tab_size": True}, r"tab_size: .*valid integer"),
        ({"compress_level": "6"}, r"compress_level: .*valid integer"),
        ({"font_size": "9"}, r"font_size: .*valid number"),
        ({"font_file": ""}, r"font_file: .*must not be empty"),
        ({"font_file": "  "}, r"font_file: .*must not be empty"),
    ],
)
def test_bad_options_are_config_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TextToPdfProcessor(options)


def test_whole_numbers_are_still_numbers() -> None:
    opts = TextToPdfProcessor({"margin_mm": 20, "font_size": 10, "encoding": "utf-16"}).opts
    assert (opts.margin_mm, opts.font_size) == (20.0, 10.0)


@pytest.mark.parametrize("keep", [0.02, 0.3, 0.9])
def test_a_truncated_font_file_is_a_config_error_naming_option_and_file(
    tmp_path: Path, keep: float
) -> None:
    """A cut-off .ttf raised struct.error out of create_processor."""
    data = Path(fonts.find_font(True)).read_bytes()
    cut = tmp_path / f"cut-{keep}.ttf"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ConfigError, match=rf"cannot use font {cut}: .*font_file"):
        create_processor("text-to-pdf", {"font_file": str(cut)})


def test_missing_font_names_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(fonts, "FONT_DIRS", (str(tmp_path),))
    with pytest.raises(ConfigError, match=r"DejaVuSansMono\.ttf.*fonts-dejavu-core"):
        TextToPdfProcessor({})
    with pytest.raises(ConfigError, match="font_file"):
        TextToPdfProcessor({"font_file": str(tmp_path / "nope.ttf")})


def test_a_file_that_is_not_a_font(tmp_path: Path) -> None:
    bad = tmp_path / "bad.ttf"
    bad.write_bytes(b"not a font at all" * 10)
    with pytest.raises(ConfigError, match="cannot use font"):
        TextToPdfProcessor({"font_file": str(bad)})
