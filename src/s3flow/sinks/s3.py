"""S3 sink: PutObject (multipart for big files) under ``s3://bucket/prefix/``."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from s3flow.errors import ConfigError, S3flowError, aws_errors, translate_aws_error
from s3flow.sinks.base import OutputAttrs, SinkBase

#: Files up to this size are uploaded with one PutObject; bigger ones in parts.
MULTIPART_THRESHOLD = 16 * 1024 * 1024
PART_BYTES = 8 * 1024 * 1024  # part size (grown for files over MAX_PARTS parts)
MAX_PARTS = 10_000


def split_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix/`` -> (bucket, 'some/prefix/')."""
    rest = url[len("s3://") :] if url.startswith("s3://") else url
    bucket, _, prefix = rest.partition("/")
    return bucket, prefix


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` -> (bucket, 'some/key'), strictly.

    Raises :class:`~s3flow.errors.ConfigError` naming what is missing: the ``s3://``
    scheme, the bucket or the key (``s3://bucket`` and ``s3://bucket/`` have no key).
    """
    if not uri.startswith("s3://"):
        raise ConfigError(f"not an S3 URI (expected s3://bucket/key): {uri!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ConfigError(f"S3 URI without a bucket (expected s3://bucket/key): {uri!r}")
    if not key:
        raise ConfigError(f"S3 URI without a key (expected s3://bucket/key): {uri!r}")
    return bucket, key


def _object_args(attrs: OutputAttrs) -> dict[str, Any]:
    """PutObject / CreateMultipartUpload arguments for the content type and metadata."""
    args: dict[str, Any] = {"ContentType": attrs.content_type}
    if attrs.metadata:
        args["Metadata"] = attrs.metadata
    return args


class S3Sink(SinkBase):
    """Writes outputs as S3 objects. PutObject is durable when it returns."""

    def __init__(self, s3: Any, url: str) -> None:
        self.root = url
        self._s3 = s3
        self.bucket, self.prefix = split_s3_url(url)
        if self.prefix and not self.prefix.endswith("/"):
            self.prefix += "/"

    def key_for(self, relative_key: str) -> str:
        """The full output key of ``relative_key``."""
        return self.prefix + relative_key

    async def _put(self, relative_key: str, data: bytes, attrs: OutputAttrs) -> str:
        """One PutObject (durable when it returns)."""
        key = self.key_for(relative_key)
        with aws_errors(f"PutObject s3://{self.bucket}/{key}"):
            await self._s3.put_object(Bucket=self.bucket, Key=key, Body=data, **_object_args(attrs))
        return f"s3://{self.bucket}/{key}"

    async def _put_file(self, relative_key: str, path: str, attrs: OutputAttrs) -> str:
        """Upload a local file: PutObject up to :data:`MULTIPART_THRESHOLD`, else multipart.

        Memory holds one part at a time. A failed multipart upload is aborted
        (best effort: a bucket lifecycle rule for incomplete uploads covers the rest).
        """
        size = await asyncio.to_thread(os.path.getsize, path)
        if size <= MULTIPART_THRESHOLD:
            data = await asyncio.to_thread(Path(path).read_bytes)
            return await self._put(relative_key, data, attrs)
        key = self.key_for(relative_key)
        where = f"s3://{self.bucket}/{key}"
        with aws_errors(f"CreateMultipartUpload {where}"):
            created = await self._s3.create_multipart_upload(
                Bucket=self.bucket, Key=key, **_object_args(attrs)
            )
        upload_id = created["UploadId"]
        part_size = max(PART_BYTES, -(-size // MAX_PARTS))
        try:
            parts = await self._upload_parts(key, upload_id, path, size, part_size)
            await self._s3.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException as exc:
            try:
                await asyncio.shield(
                    self._s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
                )
            except Exception:
                pass
            if isinstance(exc, S3flowError) or not isinstance(exc, Exception):
                raise
            raise translate_aws_error(exc, f"multipart upload {where}") from exc
        return where

    async def _upload_parts(
        self, key: str, upload_id: str, path: str, size: int, part_size: int
    ) -> list[dict[str, Any]]:
        parts: list[dict[str, Any]] = []
        for number, offset in enumerate(range(0, size, part_size), start=1):
            chunk = await asyncio.to_thread(_read_range, path, offset, part_size)
            resp = await self._s3.upload_part(
                Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=chunk
            )
            parts.append({"ETag": resp["ETag"], "PartNumber": number})
        return parts

    async def read(self, relative_key: str) -> bytes | None:
        key = self.key_for(relative_key)
        try:
            resp = await self._s3.get_object(Bucket=self.bucket, Key=key)
            async with resp["Body"] as body:
                return bytes(await body.read())
        except Exception as exc:
            err = translate_aws_error(exc, "GetObject")
            if err.disposition.value == "skip":
                return None
            raise err from exc

    async def exists(self, relative_key: str) -> bool:
        key = self.key_for(relative_key)
        try:
            await self._s3.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            err = translate_aws_error(exc, "HeadObject")
            if err.disposition.value == "skip":
                return False
            raise err from exc
        return True

    async def check(self) -> None:
        """Write (then delete) a small probe object: the bucket exists and takes writes."""
        key = f"{self.prefix}.s3flow-write-check"
        try:
            await self._s3.put_object(Bucket=self.bucket, Key=key, Body=b"s3flow start-up check")
        except Exception as exc:
            err = translate_aws_error(exc, f"PutObject s3://{self.bucket}/{key}")
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
            if code == "NoSuchBucket":
                raise ConfigError(
                    f"output bucket {self.bucket!r} ({self.root}) does not exist: create it "
                    "or run `s3flow provision`"
                ) from exc
            raise ConfigError(f"output {self.root} is not writable: {err}") from exc
        try:  # the worker may lack s3:DeleteObject: then the probe stays (a few bytes)
            await self._s3.delete_object(Bucket=self.bucket, Key=key)
        except Exception:
            pass


def _read_range(path: str, offset: int, size: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(size)
