"""Blob storage in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW): the same keys as `LocalStorage`.

Nothing is shared on disk: an upload streams to the bucket as a multipart upload while it arrives (one
part in memory at a time; a failed or oversized upload aborts it, so no part is billed or left behind),
a worker downloads its input into its own scratch directory, and results go up from there. The gateway
keeps a local copy of an upload as it streams (`writer(key, keep_local_copy=True)`) and probes that,
never downloading back what it has just sent.

Every write is write-once: the object is created with `If-None-Match: *`, so a redelivered task that
writes the same result again finds it there (412) and keeps the first object instead of making a second.
Stores that ignore the header (older MinIO/Ceph) overwrite with the same bytes, which is harmless.
"""

from __future__ import annotations

import io
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar, cast
from urllib.parse import quote

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from jobs.storage import Storage, StorageUnavailable

if TYPE_CHECKING:
    from jobs.settings import CommonSettings

log = logging.getLogger(__name__)
T = TypeVar("T")
MIN_PART_BYTES = 5 * 2**20
# A key is written only once; these mean "it is already there" (412) or "another writer is finishing it".
_ALREADY_WRITTEN = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _unavailable(what: str, exc: Exception) -> StorageUnavailable:
    return StorageUnavailable(f"object storage {what} failed ({type(exc).__name__}: {exc})")


class _MultipartWriter(io.RawIOBase):
    """A write-only file whose bytes go to the bucket in parts. Nothing exists under the key until
    `complete()`; `abort()` drops what was sent. Small files (under one part) are one PutObject."""

    def __init__(
        self, client: Any, bucket: str, key: str, part_bytes: int, copy: BinaryIO | None = None
    ) -> None:
        self.client, self.bucket, self.key, self.part_bytes = client, bucket, key, part_bytes
        # A local file that gets the same bytes as they are written (the gateway's copy of an upload).
        self.copy = copy
        self.buf = bytearray()
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []
        self.written = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.written

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if self.copy is not None:
            self.copy.write(view)
        self.buf += view
        self.written += len(view)
        while len(self.buf) >= self.part_bytes:
            self._send_part(bytes(self.buf[: self.part_bytes]))
            del self.buf[: self.part_bytes]
        return len(view)

    def _send_part(self, body: bytes) -> None:
        try:
            if self.upload_id is None:
                self.upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=self.key)[
                    "UploadId"
                ]
            n = len(self.parts) + 1
            etag = self.client.upload_part(
                Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, PartNumber=n, Body=body
            )["ETag"]
        except (BotoCoreError, ClientError) as exc:
            raise _unavailable("upload", exc) from exc
        self.parts.append({"PartNumber": n, "ETag": etag})

    def complete(self) -> bool:
        """Put the object in place; False when the key was already there (the first object stays)."""
        try:
            if self.upload_id is None:
                self.client.put_object(
                    Bucket=self.bucket, Key=self.key, Body=bytes(self.buf), IfNoneMatch="*"
                )
            else:
                if self.buf:
                    self._send_part(bytes(self.buf))
                self.client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=self.key,
                    UploadId=self.upload_id,
                    MultipartUpload={"Parts": self.parts},
                    IfNoneMatch="*",
                )
        except ClientError as exc:
            if _code(exc) not in _ALREADY_WRITTEN:
                self.abort()
                raise _unavailable("write", exc) from exc
            log.info("%s is already in the bucket (a redelivered write); the first object stays", self.key)
            self.abort()
            return False
        except BotoCoreError as exc:
            self.abort()
            raise _unavailable("write", exc) from exc
        finally:
            self.buf.clear()
        return True

    def abort(self) -> None:
        self.buf.clear()
        if self.upload_id is None:
            return
        upload_id, self.upload_id = self.upload_id, None
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=upload_id)
        except (BotoCoreError, ClientError) as exc:  # the janitor's sweep and the lifecycle rule catch it
            log.warning("could not abort the multipart upload of %s: %s", self.key, exc)


class S3Storage(Storage):
    def __init__(
        self,
        bucket: str,
        prefix: str,
        scratch_dir: Path,
        *,
        client: Any = None,
        part_bytes: int = 8 * 2**20,
        presign_ttl_s: int = 0,
    ) -> None:
        if part_bytes < MIN_PART_BYTES:
            raise ValueError(f"S3 parts are at least {MIN_PART_BYTES} bytes")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client if client is not None else boto3.client("s3")
        self.part_bytes = part_bytes
        self.presign_ttl_s = presign_ttl_s
        self.scratch = Path(scratch_dir).resolve() / "tmp"
        # Downloaded objects (a worker's input, by `local_path`), and copies spooled while writing.
        self.copies = Path(scratch_dir).resolve() / "copies"
        self.spooled = Path(scratch_dir).resolve() / "spooled"
        for folder in (self.scratch, self.copies, self.spooled):
            folder.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_settings(cls, settings: CommonSettings) -> S3Storage:
        bucket, _, prefix = settings.storage_url.removeprefix("s3://").partition("/")
        secret = settings.s3_secret_access_key
        client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,  # None: AWS_ENDPOINT_URL or AWS itself
            region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key_id,
            aws_secret_access_key=secret.get_secret_value() if secret is not None else None,
            config=Config(
                s3={"addressing_style": settings.s3_addressing_style},
                retries={"mode": "standard", "max_attempts": 3},
                connect_timeout=5,
                read_timeout=60,
            ),
        )
        return cls(
            bucket,
            prefix,
            settings.storage_dir,
            client=client,
            part_bytes=settings.s3_part_bytes,
            presign_ttl_s=settings.storage_presign_ttl_s,
        )

    def _key(self, key: str) -> str:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"storage key escapes the prefix: {key!r}")
        return f"{self.prefix}/{key}" if self.prefix else key

    def _copy_path(self, key: str) -> Path:
        return self.copies / quote(key, safe="")

    def _spooled_path(self, key: str) -> Path:
        return self.spooled / quote(key, safe="")

    @contextmanager
    def writer(self, key: str, *, keep_local_copy: bool = False) -> Iterator[BinaryIO]:
        copy_tmp = self.scratch_path(Path(key).suffix) if keep_local_copy else None
        with ExitStack() as stack:
            copy: BinaryIO | None = None
            if copy_tmp is not None:
                stack.callback(copy_tmp.unlink, missing_ok=True)
                try:
                    copy = stack.enter_context(open(copy_tmp, "wb"))
                except OSError as exc:
                    raise StorageUnavailable(
                        f"scratch is not writable ({type(exc).__name__}: {exc.strerror})"
                    ) from exc
            w = _MultipartWriter(self.client, self.bucket, self._key(key), self.part_bytes, copy)
            try:
                yield cast(BinaryIO, w)
            except BaseException:
                w.abort()
                raise
            created = w.complete()
            if copy is not None and copy_tmp is not None and created:
                # Only a copy of what is now the object: after a 412 the bucket holds another writer's bytes.
                copy.close()
                os.replace(copy_tmp, self._spooled_path(key))

    def put_file(self, key: str, src: Path) -> None:
        with open(src, "rb") as f, self.writer(key) as out:
            while data := f.read(self.part_bytes):
                out.write(data)
        Path(src).unlink(missing_ok=True)

    def _download(self, key: str, dest: Path) -> None:
        tmp = self.scratch_path(dest.suffix)
        try:
            self.client.download_file(self.bucket, self._key(key), str(tmp))
            os.replace(tmp, dest)
        except (BotoCoreError, ClientError) as exc:
            raise _unavailable("download", exc) from exc
        finally:
            tmp.unlink(missing_ok=True)

    def local_path(self, key: str) -> Path:
        dest = self._copy_path(key)
        if not dest.is_file():
            self._download(key, dest)
        return dest

    def on_local_copy(self, key: str, fn: Callable[..., T], *args: object) -> T:
        spooled = self._spooled_path(key)
        path = self.scratch_path(Path(key).suffix)
        try:
            try:
                os.replace(spooled, path)  # the copy this process kept while writing it: no download
            except FileNotFoundError:
                self._download(key, path)
            return fn(path, *args)
        finally:
            path.unlink(missing_ok=True)

    def iter_bytes(self, key: str, chunk: int = 1 << 20) -> tuple[int, Iterator[bytes]]:
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except (BotoCoreError, ClientError) as exc:
            raise _unavailable("read", exc) from exc
        body = obj["Body"]

        def chunks() -> Iterator[bytes]:
            try:
                yield from body.iter_chunks(chunk)
            finally:
                body.close()

        return int(obj["ContentLength"]), chunks()

    def presigned_url(self, key: str, filename: str, media_type: str) -> str | None:
        if not self.presign_ttl_s:
            return None
        url: str = self.client.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self.bucket,
                "Key": self._key(key),
                "ResponseContentType": media_type,
                "ResponseContentDisposition": f'attachment; filename="{filename}"',
            },
            ExpiresIn=self.presign_ttl_s,
        )
        return url

    def scratch_path(self, suffix: str = "") -> Path:
        return self.scratch / f"{uuid.uuid4().hex}{suffix}"

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _code(exc) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise _unavailable("read", exc) from exc
        except BotoCoreError as exc:
            raise _unavailable("read", exc) from exc
        return True

    def delete(self, key: str) -> None:
        self._copy_path(key).unlink(missing_ok=True)
        self._spooled_path(key).unlink(missing_ok=True)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (BotoCoreError, ClientError) as exc:
            raise _unavailable("delete", exc) from exc

    def ping(self) -> None:
        key = self._key(f"tmp/ping-{uuid.uuid4().hex}")
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=b"ok")
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except (BotoCoreError, ClientError) as exc:
            raise StorageUnavailable(f"bucket {self.bucket} is not writable: {exc}") from exc

    def sweep_scratch(self, older_than_s: float) -> int:
        """Old local scratch files and copies, and multipart uploads a crashed writer left open."""
        cutoff = time.time() - older_than_s
        n = 0
        for folder in (self.scratch, self.copies, self.spooled):
            for path in folder.iterdir():
                try:
                    if path.stat().st_mtime < cutoff:
                        path.unlink()
                        n += 1
                except FileNotFoundError:
                    pass
        try:
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=f"{self.prefix}/" if self.prefix else ""
            )
            for page in pages:
                for up in page.get("Uploads", []):
                    if up["Initiated"].timestamp() < cutoff:
                        self.client.abort_multipart_upload(
                            Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"]
                        )
                        n += 1
        except (BotoCoreError, ClientError) as exc:
            log.warning("could not sweep the bucket's open multipart uploads: %s", exc)
        return n
