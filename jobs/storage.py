"""Blob storage for uploads and results, shared by gateway and workers.

Videos and WAVs never travel through Redis: the gateway writes the upload here and queues the job id.
Keys are relative paths (`inputs/{job_id}.mp4`, `results/{job_id}.wav`). Every write goes to a
temporary name and is renamed into place, so a reader (or a redelivered task) never sees half a file.
`LocalStorage` is a directory (a shared volume in docker-compose); `jobs.s3_storage.S3Storage` keeps the
same keys in an S3-compatible bucket (AWS S3, MinIO, Ceph), so gateway and workers share no disk.
`open_storage` picks the backend from `DIFFV2S_STORAGE_URL`.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TypeVar

if TYPE_CHECKING:
    from jobs.settings import CommonSettings

T = TypeVar("T")


class StorageUnavailable(Exception):
    """The storage cannot be written or read."""


def input_key(job_id: str, suffix: str) -> str:
    return f"inputs/{job_id}{suffix}"


def audio_key(job_id: str) -> str:
    return f"results/{job_id}.wav"


def video_key(job_id: str) -> str:
    return f"results/{job_id}.mp4"


class Storage(ABC):
    @abstractmethod
    @contextmanager
    def writer(self, key: str, *, keep_local_copy: bool = False) -> Iterator[BinaryIO]:
        """A file to write `key` into; it appears under `key` only if the block exits cleanly. Raises
        StorageUnavailable when the file cannot be created or put in place (writes raise OSError).

        `keep_local_copy`: remote storage also spools the bytes to this process's scratch as they are
        written, and the next `on_local_copy(key, ...)` reads that copy (and removes it) instead of
        downloading the object back (the gateway probes an upload it has just streamed). Local storage
        needs no copy: the file itself is local."""

    @abstractmethod
    def put_file(self, key: str, src: Path) -> None:
        """Move a finished local file to `key` atomically (src is consumed)."""

    @abstractmethod
    def local_path(self, key: str) -> Path:
        """A local file holding `key` (the file itself for local storage; for remote storage a copy in
        this process's scratch, removed by `delete(key)` or by `sweep_scratch`)."""

    def on_local_copy(self, key: str, fn: Callable[..., T], *args: object) -> T:
        """`fn(path, *args)` with a local file holding `key`; a remote object's copy is removed after
        (the copy `writer(key, keep_local_copy=True)` spooled when there is one, else a download)."""
        return fn(self.local_path(key), *args)

    def direct_path(self, key: str) -> Path | None:
        """The file itself when the storage is a local directory (served as it is), else None."""
        return None

    def iter_bytes(self, key: str, chunk: int = 1 << 20) -> tuple[int, Iterator[bytes]]:
        """The size of `key` and its bytes in chunks (a download streamed through the gateway)."""
        path = self.local_path(key)
        size = path.stat().st_size

        def chunks() -> Iterator[bytes]:
            with open(path, "rb") as f:
                while data := f.read(chunk):
                    yield data

        return size, chunks()

    def presigned_url(self, key: str, filename: str, media_type: str) -> str | None:
        """A short-lived URL the client downloads `key` from directly, or None (the gateway sends it)."""
        return None

    @abstractmethod
    def scratch_path(self, suffix: str = "") -> Path:
        """A fresh temporary path from which put_file can move cheaply."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove `key`; a missing key is not an error."""

    @abstractmethod
    def ping(self) -> None:
        """Raises StorageUnavailable unless a small object can be written and removed."""

    def sweep_scratch(self, older_than_s: float) -> int:
        """Remove temporary files left by crashed writers; returns how many."""
        return 0


class LocalStorage(Storage):
    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise ValueError(f"storage key escapes the root: {key!r}")
        return path

    @contextmanager
    def writer(self, key: str, *, keep_local_copy: bool = False) -> Iterator[BinaryIO]:
        final = self._path(key)
        tmp = self.scratch_path(final.suffix)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            f = open(tmp, "wb")  # noqa: SIM115 - closed below; the caller's errors pass through as they are
        except OSError as exc:
            raise StorageUnavailable(
                f"storage is not writable ({type(exc).__name__}: {exc.strerror})"
            ) from exc
        try:
            with f:
                yield f
            try:
                os.replace(tmp, final)
            except OSError as exc:
                raise StorageUnavailable(
                    f"storage is not writable ({type(exc).__name__}: {exc.strerror})"
                ) from exc
        finally:
            tmp.unlink(missing_ok=True)

    def put_file(self, key: str, src: Path) -> None:
        final = self._path(key)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(src, final)
            except OSError:  # another filesystem: copy next to the target, then rename
                tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}")
                shutil.copyfile(src, tmp)
                os.replace(tmp, final)
                Path(src).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageUnavailable(
                f"storage is not writable ({type(exc).__name__}: {exc.strerror})"
            ) from exc

    def local_path(self, key: str) -> Path:
        return self._path(key)

    def direct_path(self, key: str) -> Path | None:
        return self._path(key)

    def scratch_path(self, suffix: str = "") -> Path:
        return self.root / "tmp" / f"{uuid.uuid4().hex}{suffix}"

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def ping(self) -> None:
        probe = self.scratch_path(".ping")
        try:
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            raise StorageUnavailable(f"storage directory {self.root} is not writable: {exc}") from exc

    def sweep_scratch(self, older_than_s: float) -> int:
        cutoff = time.time() - older_than_s
        n = 0
        for path in (self.root / "tmp").iterdir():
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    n += 1
            except FileNotFoundError:
                pass
        return n


def open_storage(config: CommonSettings | Path) -> Storage:
    """Local storage under a directory, or the backend `DIFFV2S_STORAGE_URL` names (`s3://bucket/prefix`)."""
    if isinstance(config, Path):
        return LocalStorage(config)
    if config.storage_url.startswith("s3://"):
        from jobs.s3_storage import S3Storage  # boto3 comes with the `s3` extra only

        return S3Storage.from_settings(config)
    return LocalStorage(config.storage_dir)
