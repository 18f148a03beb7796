"""Streaming multipart upload: the `video` part goes straight to storage, counted and hashed as it flows.

The file is stored under a neutral name (`inputs/{job_id}.upload`): the client's filename never reaches
a path, and its extension never chooses how the file is read (the probe reads the magic bytes).

Starlette's own form parsing spools the whole file before the handler runs and cannot stop a client at
the size limit; this parser sees each chunk as it arrives, so an upload over the limit is cut off at
the limit (413) and a large file never sits in memory. Disk writes leave the event loop in ~1 MB blocks.
With object storage the bytes also go to a local spooled copy as they stream, which the probe reads
(`Storage.on_local_copy`): the gateway never downloads back the upload it has just sent to the bucket.
"""

from __future__ import annotations

import hashlib
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import BinaryIO

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request

from jobs.storage import Storage, StorageUnavailable, input_key
from service.errors import BadRequest, NotMultipart, UploadTooLarge

FILE_FIELD = "video"
MAX_FIELDS = 16
MAX_FIELD_BYTES = 1024
FLUSH_BYTES = 1 << 20
# Form fields and part headers ride along with the file; allow for them in the Content-Length check.
FORM_OVERHEAD = 64 * 1024
# One part's headers together, and one header line (python-multipart's own bound): a 200 MB header
# line is cut off at the limit, and a 1,000-character filename fits.
MAX_PART_HEADER_BYTES = 16 * 1024
MAX_PART_HEADER_LINE = 4096 + 128
UPLOAD_SUFFIX = ".upload"


@dataclass
class Upload:
    fields: dict[str, str] = field(default_factory=dict)
    key: str | None = None
    filename: str | None = None
    size: int = 0
    sha256: str = ""


class _Sink:
    """Collects the file part's bytes; the caller flushes them to storage off the event loop."""

    def __init__(self, f: BinaryIO, limit: int) -> None:
        self.f = f
        self.limit = limit
        self.size = 0
        self.buf = bytearray()
        self.hash = hashlib.sha256()

    def add(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise UploadTooLarge(f"the video is larger than the limit of {self.limit / 2**20:g} MB")
        self.buf += data

    def flush(self) -> None:
        data = bytes(self.buf)
        self.buf.clear()
        self.hash.update(data)
        self.f.write(data)


async def receive_upload(request: Request, storage: Storage, job_id: str, max_bytes: int) -> Upload:
    """Parse the multipart body; the video lands at storage key `inputs/{job_id}.upload`.

    Raises NotMultipart (415), UploadTooLarge (413) or BadRequest (422); nothing is left in storage then.
    """
    ctype, opts = parse_options_header(request.headers.get("content-type", ""))
    boundary = opts.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise NotMultipart("send multipart/form-data with a `video` file part")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes + FORM_OVERHEAD:
        raise UploadTooLarge(
            f"the request ({int(length) / 2**20:.1f} MB) is larger than the limit of {max_bytes / 2**20:g} MB"
        )

    up = Upload()
    stack = ExitStack()
    state: dict[str, object] = {}
    sink: list[_Sink] = []
    header_field = bytearray()
    header_value = bytearray()
    headers: dict[bytes, bytes] = {}
    field_buf = bytearray()

    def on_part_begin() -> None:
        headers.clear()
        field_buf.clear()
        state["name"] = None
        state["file"] = False

    def bound_headers() -> None:
        size = len(header_field) + len(header_value) + sum(len(k) + len(v) for k, v in headers.items())
        if size > MAX_PART_HEADER_BYTES or len(headers) > MAX_FIELDS:
            raise BadRequest(f"a form part's headers are longer than {MAX_PART_HEADER_BYTES} bytes")

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_field.extend(data[start:end])
        bound_headers()

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])
        bound_headers()

    def on_header_end() -> None:
        headers[bytes(header_field).lower()] = bytes(header_value)
        header_field.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        _, disp = parse_options_header(headers.get(b"content-disposition", b""))
        name = disp.get(b"name", b"").decode("utf-8", "replace")
        state["name"] = name
        if name == FILE_FIELD:
            if sink:
                raise BadRequest("send exactly one `video` file part")
            filename = disp.get(b"filename")
            up.filename = filename.decode("utf-8", "replace") if filename is not None else None
            up.key = input_key(job_id, UPLOAD_SUFFIX)
            # A local copy too (object storage): the probe reads it instead of downloading the upload back.
            writer = storage.writer(up.key, keep_local_copy=True)
            sink.append(_Sink(stack.enter_context(writer), max_bytes))
            state["file"] = True
        elif b"filename" in disp:
            # A file under another name (`file`, `upload`, ...): say what is missing, not what it is.
            raise BadRequest(
                f"the `{FILE_FIELD}` file part is missing: the form has a file under {name[:64]!r}; "
                f"send the video as the `{FILE_FIELD}` field"
            )
        elif len(up.fields) >= MAX_FIELDS:
            raise BadRequest(f"too many form fields (at most {MAX_FIELDS})")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state.get("file"):
            sink[0].add(data[start:end])
        else:
            field_buf.extend(data[start:end])
            if len(field_buf) > MAX_FIELD_BYTES:
                raise BadRequest(f"form field {state.get('name')!r} is longer than {MAX_FIELD_BYTES} bytes")

    def on_part_end() -> None:
        if not state.get("file"):
            name = str(state.get("name") or "")
            if name in up.fields:
                raise BadRequest(f"form field {name!r} given twice")
            up.fields[name] = field_buf.decode("utf-8", "replace")

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
        max_header_count=MAX_FIELDS,
        max_header_size=MAX_PART_HEADER_LINE,
    )
    with stack:
        try:
            async for chunk in request.stream():
                parser.write(chunk)
                if sink and len(sink[0].buf) >= FLUSH_BYTES:
                    await run_in_threadpool(sink[0].flush)
            parser.finalize()
        except (ClientDisconnect, UploadTooLarge, BadRequest, StorageUnavailable):
            raise
        except (
            OSError
        ) as exc:  # writing the upload (disk full, I/O error): the service's fault, not the client's
            raise StorageUnavailable(f"storage is not writable: {exc}") from exc
        except Exception as exc:  # the parser's own errors: a malformed body is the client's fault
            if "header" in str(exc).lower():
                raise BadRequest(
                    f"a form part's headers are longer than {MAX_PART_HEADER_LINE} bytes per line "
                    f"(a filename of at most about 4,000 characters fits): {exc}"
                ) from exc
            raise BadRequest(f"malformed multipart body: {exc}") from exc
        if not sink:
            raise BadRequest("the form has no `video` file part")
        try:
            await run_in_threadpool(sink[0].flush)
        except OSError as exc:
            raise StorageUnavailable(f"storage is not writable: {exc}") from exc
        up.size = sink[0].size
        up.sha256 = sink[0].hash.hexdigest()
    return up
