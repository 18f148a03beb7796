"""`diffv2s-client`: synthesize speech for a video through a running DiffV2S service.

    diffv2s-client synthesize in.mp4 -o out.wav [--mp4 out.mp4] [--url URL] [--key KEY] [--steps N] ...
    diffv2s-client status JOB_ID          the job as JSON
    diffv2s-client cancel JOB_ID

Every failure ends with one `error [code]: message` line on stderr and an exit status of its own
(`ExitCode`), never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from enum import IntEnum

from tqdm import tqdm

from diffv2s_client.errors import (
    ApiError,
    DiffV2SClientError,
    Forbidden,
    JobFailed,
    Unauthorized,
    UnexpectedResponse,
    WaitTimeout,
)
from diffv2s_client.models import Job, JobStatus, SynthesisOptions
from diffv2s_client.protocol import API_KEY_ENV, DEFAULT_URL, RetryEvent, RetryPolicy
from diffv2s_client.sync_client import Client


class ExitCode(IntEnum):
    OK = 0
    ERROR = 1  # an answer the API does not document
    USAGE = 2  # bad arguments, no such input file, no API key
    AUTH = 3  # 401 / 403: the key is missing or wrong
    REJECTED = 4  # the service refused the request (413, 415, 422, 404, 409, 410, ...)
    JOB_FAILED = 5  # the job ran and failed (e.g. no face in the video)
    NO_RESULT = 6  # the job was canceled, or its result expired
    UNAVAILABLE = 7  # no answer, or still busy (429 / 503) after the retries
    TIMEOUT = 8  # --timeout passed before the job ended
    INTERRUPTED = 130  # Ctrl-C


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=DEFAULT_URL, help=f"the service (default {DEFAULT_URL})")
    common.add_argument("--key", default=None, help=f"API key (default: ${API_KEY_ENV})")
    common.add_argument(
        "--retries", type=int, default=5, help="retries of 429 / 503 / no answer, honouring Retry-After"
    )

    parser = argparse.ArgumentParser(
        prog="diffv2s-client", description="Synthesize speech for a video through a running DiffV2S service."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    syn = sub.add_parser("synthesize", parents=[common], help="video in, speech out (submit, wait, download)")
    syn.add_argument("video", help="a talking-face video (mp4, mov, mkv, webm, avi)")
    syn.add_argument("-o", "--output", required=True, help="where to write the speech (WAV)")
    syn.add_argument("--mp4", default=None, help="also write the video with the new soundtrack here")
    syn.add_argument("--sampler", choices=["ddim", "dpmpp", "ddpm"], default=None)
    syn.add_argument("--steps", type=int, default=None)
    syn.add_argument("--seed", type=int, default=None)
    syn.add_argument("--guidance", type=float, default=None)
    syn.add_argument("--cfg-scale", type=float, default=None)
    syn.add_argument("--noise-scale", type=float, default=None)
    syn.add_argument("--timeout", type=float, default=None, help="give up waiting after this many seconds")
    syn.add_argument("--quiet", action="store_true", help="no progress bar")
    for name, text in (("status", "print a job as JSON"), ("cancel", "cancel a queued job")):
        p = sub.add_parser(name, parents=[common], help=text)
        p.add_argument("job_id")
    return parser


def fail(code: str, message: str, exit_code: ExitCode, hint: str = "") -> int:
    print(f"error [{code}]: {message}", file=sys.stderr)
    if hint:
        print(hint, file=sys.stderr)
    return int(exit_code)


def exit_for(error: DiffV2SClientError, url: str) -> int:
    """The message and exit status of each error."""
    if isinstance(error, Unauthorized | Forbidden):
        return fail(error.code, error.message, ExitCode.AUTH, f"check --key or ${API_KEY_ENV}")
    if isinstance(error, ApiError):
        if error.status_code in (429, 503):
            return fail(
                error.code, error.message, ExitCode.UNAVAILABLE, "the service is busy; try again later"
            )
        if error.status_code >= 500:
            return fail(error.code, error.message, ExitCode.UNAVAILABLE)
        return fail(error.code, error.message, ExitCode.REJECTED)
    if isinstance(error, JobFailed):
        code = ExitCode.JOB_FAILED if error.job.status == JobStatus.FAILED else ExitCode.NO_RESULT
        return fail(error.code, str(error), code)
    if isinstance(error, WaitTimeout):
        return fail(
            "timeout", f"{error}; it keeps running (diffv2s-client status {error.job.id})", ExitCode.TIMEOUT
        )
    if isinstance(error, UnexpectedResponse):
        return fail("unexpected_response", str(error), ExitCode.ERROR)
    return fail("unreachable", str(error), ExitCode.UNAVAILABLE, f"is the service running at {url}?")


class ProgressBar:
    """A tqdm bar over the sampling steps; its label is the job's status."""

    def __init__(self, quiet: bool) -> None:
        self.bar = tqdm(total=None, unit="step", desc="uploading", file=sys.stderr, disable=quiet, leave=True)

    def update(self, job: Job) -> None:
        self.bar.set_description(job.status.value, refresh=False)
        if job.progress is not None and job.progress.total > 0:
            if self.bar.total != job.progress.total:
                self.bar.total = job.progress.total
            self.bar.n = job.progress.step
        elif job.status == JobStatus.SUCCEEDED and self.bar.total:
            self.bar.n = self.bar.total
        self.bar.refresh()

    def retry(self, event: RetryEvent) -> None:
        self.bar.write(f"{event.error}; retry {event.attempt} in {event.delay_s:g} s", file=sys.stderr)

    def close(self) -> None:
        self.bar.close()


def synthesize(args: argparse.Namespace, key: str | None) -> int:
    options = SynthesisOptions(
        sampler=args.sampler,
        steps=args.steps,
        seed=args.seed,
        guidance=args.guidance,
        cfg_scale=args.cfg_scale,
        noise_scale=args.noise_scale,
        output="mp4" if args.mp4 else "wav",
    )
    if not os.path.isfile(args.video):
        return fail("no_such_file", f"no such video file: {args.video}", ExitCode.USAGE)
    bar = ProgressBar(args.quiet)
    retry = RetryPolicy(max_retries=args.retries)
    job: Job | None = None
    with Client(args.url, key, retry=retry, on_retry=bar.retry) as client:
        try:
            job = client.submit(args.video, options)
            job = client.wait(job, timeout_s=args.timeout, on_update=bar.update)
            if job.status != JobStatus.SUCCEEDED:
                raise JobFailed(job)
            client.download(job, args.output)
            if args.mp4:
                client.download(job, args.mp4, kind="video")
        except KeyboardInterrupt:
            bar.close()
            return interrupted(client, job)
        except DiffV2SClientError as exc:
            bar.close()
            return exit_for(exc, args.url)
        bar.close()
    speech = f" ({job.audio_seconds:.1f} s of speech)" if job.audio_seconds else ""
    print(f"job {job.id} succeeded: wrote {args.output}{speech}" + (f" and {args.mp4}" if args.mp4 else ""))
    return int(ExitCode.OK)


def interrupted(client: Client, job: Job | None) -> int:
    """Ctrl-C while waiting: cancel the job when it has not started, so it costs the service nothing."""
    if job is not None and not job.terminal:
        try:
            client.cancel(job)
            print(f"interrupted: canceled job {job.id}", file=sys.stderr)
        except DiffV2SClientError:
            print(f"interrupted: job {job.id} keeps running", file=sys.stderr)
    else:
        print("interrupted", file=sys.stderr)
    return int(ExitCode.INTERRUPTED)


def job_json(job: Job) -> str:
    data = dataclasses.asdict(job)
    data.pop("poll_after_s", None)
    return json.dumps(data, default=str, indent=2)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    key = args.key or os.environ.get(API_KEY_ENV) or None
    if not key:
        return fail("no_api_key", f"no API key: pass --key or set ${API_KEY_ENV}", ExitCode.USAGE)
    if args.retries < 0:
        return fail("invalid_argument", "--retries must be 0 or more", ExitCode.USAGE)
    try:
        if args.command == "synthesize":
            return synthesize(args, key)
        with Client(args.url, key, retry=RetryPolicy(max_retries=args.retries)) as client:
            job = client.get(args.job_id) if args.command == "status" else client.cancel(args.job_id)
        print(job_json(job))
        return int(ExitCode.OK)
    except KeyboardInterrupt:
        return int(ExitCode.INTERRUPTED)
    except DiffV2SClientError as exc:
        return exit_for(exc, args.url)


if __name__ == "__main__":
    sys.exit(main())
