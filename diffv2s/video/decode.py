"""Read an uploaded video: header probe, typed rejection of bad input, decode resampled to 25 fps.

No torch here: the gateway imports `probe_video` to reject non-video uploads before queueing them.

Frame-rate resampling works on timestamps, so variable-frame-rate phone videos come out with the right
timing: output frame k shows the source frame whose timestamp is nearest to k / fps (ties go to the
earlier frame), and a video of D seconds gives round(D * fps) frames.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from diffv2s.config import VideoConfig
from diffv2s.errors import (
    CorruptVideo,
    EmptyFile,
    FrameRateTooHigh,
    NoVideoStream,
    PreparationTimeout,
    ResolutionTooHigh,
    TooManyFrames,
    UnsupportedVideo,
    VideoTooLong,
    VideoTooShort,
)

# Frames are downscaled so the longest side is at most this (a 60 s 1080p video would need 9 GB as RGB).
MAX_SIDE = 640

ACCEPTED_HINT = "Send an mp4, mov, mkv, webm or avi file with a video track."

# The demuxer is chosen from the file's first bytes, never from its name and never by ffmpeg's own
# probing: a playlist (HLS, DASH, concat) or a network format would make ffmpeg open what it names.
# Values: ffmpeg's demuxer names (the first opens it; all of them name it in the probe).
_DEMUXERS = {
    "MP4/MOV container": "mov,mp4,m4a,3gp,3g2,mj2",
    "Matroska/WebM container": "matroska,webm",
    "AVI container": "avi",
}
# QuickTime files without `ftyp` start with one of these atoms.
_MOV_ATOMS = {b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"}
# Opening reads at most this much and analyses this long (ffmpeg's defaults: 5 MB, 5 s of frames);
# `max_pixels` stops the stream-info step from decoding a huge frame; `max_streams` an MKV of 1,000 tracks.
_OPEN_OPTIONS = {
    "probesize": str(512 * 1024),
    "analyzeduration": "500000",
    "fpsprobesize": "4",
    "max_streams": "8",
    "protocol_whitelist": "file",
    "enable_drefs": "0",
}


@dataclass(frozen=True)
class VideoLimits:
    """Bounds a video must meet before any frame is decoded (pixels, frame rate, frame count) and while
    it is prepared (frames decoded, wall-clock seconds). Gateway and workers pass the deployment's
    settings (DIFFV2S_MAX_VIDEO_*); these are the defaults of both and of the library's own callers."""

    max_pixels: int = 4096 * 2304  # 4K UHD and DCI 4K pass; 8K does not
    max_fps: float = 120.0
    max_frames: int = 7200  # 60 s at 120 fps
    prepare_timeout_s: float = 300.0

    def check(self, probe: VideoProbe) -> None:
        """Raise ResolutionTooHigh / FrameRateTooHigh / TooManyFrames from the header alone."""
        if probe.width * probe.height > self.max_pixels:
            raise ResolutionTooHigh(
                f"The video is {probe.width}x{probe.height} ({probe.width * probe.height / 1e6:.1f} MP); "
                f"the limit is {self.max_pixels / 1e6:.1f} MP per frame. Send it at 1080p or 4K at most."
            )
        if probe.fps > self.max_fps:
            raise FrameRateTooHigh(
                f"The video has {probe.fps:g} frames per second; the limit is {self.max_fps:g} fps."
            )
        frames = probe.frames or int(probe.duration * probe.fps)
        if frames > self.max_frames:
            raise TooManyFrames(
                f"The video has {frames} frames; the limit is {self.max_frames} frames. Send a shorter clip."
            )


DEFAULT_LIMITS = VideoLimits()

# ISO-BMFF brands of still-image files (they open as "mov,mp4" with one frame).
_IMAGE_BRANDS = {b"avif": "AVIF", b"avis": "AVIF", b"heic": "HEIC", b"heix": "HEIC", b"mif1": "HEIF"}


@dataclass(frozen=True)
class VideoProbe:
    """What the container header says. duration/fps/width/height are 0 when the header does not say."""

    format_name: str
    has_video: bool
    has_audio: bool
    duration: float
    fps: float
    width: int
    height: int
    codec: str = ""
    frames: int = 0  # as the header counts them (0: the header does not say)

    def check(self, cfg: VideoConfig) -> VideoProbe:
        """Raise the error a header alone can prove: no video track, or longer than `cfg.max_seconds`."""
        if not self.has_video:
            raise NoVideoStream(
                f"The upload has no video track (a {self.format_name} file with audio only). {ACCEPTED_HINT}"
            )
        if self.duration > cfg.max_seconds:
            raise VideoTooLong(_too_long_message(self.duration, cfg))
        return self


@dataclass
class DecodedVideo:
    """A decoded video resampled to `fps`.

    frames: RGB uint8 [T, H, W, 3], longest side <= 640 (H, W after downscaling).
    duration: seconds covered by the source frames (first timestamp to end of the last frame).
    source_fps / width / height: of the original stream (before resampling and downscaling).
    """

    frames: np.ndarray
    fps: float
    duration: float
    source_fps: float
    width: int
    height: int
    has_audio: bool

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])


def _too_long_message(duration: float, cfg: VideoConfig) -> str:
    return (
        f"The video is {duration:.1f} s long; the limit is {cfg.max_seconds:g} s. "
        f"Cut it into parts of at most {cfg.max_seconds:g} s and send them one by one."
    )


def _sniff(head: bytes) -> tuple[str, bool]:
    """Name the file type from its first bytes: (name, is_image). name is "" when unknown."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG image", True
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG image", True
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF image", True
    if head.startswith(b"BM") and len(head) > 14 and head[6:10] == b"\x00\x00\x00\x00":
        return "BMP image", True
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF image", True
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP image", True
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _IMAGE_BRANDS:
            return f"{_IMAGE_BRANDS[brand]} image", True
        return "MP4/MOV container", False
    if head[4:8] in _MOV_ATOMS:
        return "MP4/MOV container", False
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "Matroska/WebM container", False
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "AVI container", False
    return "", False


def _open(path: Path, limits: VideoLimits = DEFAULT_LIMITS) -> tuple[av.container.InputContainer, str]:
    """Open the container or raise EmptyFile / UnsupportedVideo / CorruptVideo.

    The demuxer comes from the first bytes (mp4/mov, matroska/webm, avi); anything else is refused
    without ffmpeg opening it.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise UnsupportedVideo(f"The video file {path.name!r} does not exist. {ACCEPTED_HINT}") from None
    if size == 0:
        raise EmptyFile(f"The upload is empty (0 bytes). {ACCEPTED_HINT}")
    with open(path, "rb") as fh:
        head = fh.read(64)
    kind, is_image = _sniff(head)
    if is_image:
        raise UnsupportedVideo(f"The upload is not a video we can read (detected {kind}). {ACCEPTED_HINT}")
    demuxer = _DEMUXERS.get(kind)
    if demuxer is None:
        raise UnsupportedVideo(f"The upload is not a video we can read. {ACCEPTED_HINT}")
    options = dict(_OPEN_OPTIONS, max_pixels=str(limits.max_pixels))
    try:
        container = av.open(
            str(path), mode="r", format=demuxer.split(",")[0], options=options, metadata_errors="ignore"
        )
    except av.FFmpegError as exc:
        # It starts like a video container but ffmpeg cannot parse it: cut off or damaged.
        raise CorruptVideo(
            f"The {kind} cannot be read; it looks truncated or damaged ({_reason(exc)}). "
            "Upload the complete file again, or re-export it from your editor."
        ) from None
    return container, demuxer


def _reason(exc: Exception) -> str:
    return str(getattr(exc, "strerror", None) or exc).strip().rstrip(".")


def _video_stream(container: av.container.InputContainer) -> av.VideoStream | None:
    for stream in container.streams.video:
        # Cover art of an audio file is a video stream with one picture: it is not a video.
        if stream.disposition & av.stream.Disposition.attached_pic:
            continue
        return stream
    return None


def _stream_duration(container: av.container.InputContainer, stream: av.VideoStream | None) -> float:
    if stream is not None and stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return 0.0


def _probe_open(container: av.container.InputContainer, format_name: str) -> VideoProbe:
    if not container.streams:
        # A container with no track at all: its index is missing or damaged (e.g. a cut-off mp4).
        raise CorruptVideo(
            "The video has no readable track; it looks truncated or damaged. "
            "Upload the complete file again, or re-export it from your editor."
        )
    stream = _video_stream(container)
    has_audio = len(container.streams.audio) > 0
    if stream is None:
        return VideoProbe(format_name, False, has_audio, _stream_duration(container, None), 0.0, 0, 0)
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return VideoProbe(
        format_name=format_name,
        has_video=True,
        has_audio=has_audio,
        duration=_stream_duration(container, stream),
        fps=float(rate) if rate else 0.0,
        width=int(stream.codec_context.width),
        height=int(stream.codec_context.height),
        codec=stream.codec_context.name,
        frames=int(stream.frames or 0),
    )


def probe_video(path: Path, limits: VideoLimits = DEFAULT_LIMITS) -> VideoProbe:
    """Read only the container header (no frame of a stream over `limits.max_pixels` is decoded).

    Raises EmptyFile, UnsupportedVideo (not a video: random bytes, an image, another format) or
    CorruptVideo (a video container ffmpeg cannot parse). An audio-only file returns has_video=False;
    `VideoProbe.check(cfg)` turns that and an over-long header duration into typed errors.
    """
    container, format_name = _open(Path(path), limits)
    try:
        return _probe_open(container, format_name)
    finally:
        container.close()


def _scaled_size(width: int, height: int, max_side: int = MAX_SIDE) -> tuple[int, int]:
    if max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    # Even sizes keep chroma subsampling exact in swscale.
    return max(2, int(round(width * scale / 2)) * 2), max(2, int(round(height * scale / 2)) * 2)


def _to_rgb(frame: av.VideoFrame, size: tuple[int, int]) -> np.ndarray:
    rgb: np.ndarray
    if (frame.width, frame.height) == size:
        rgb = frame.to_ndarray(format="rgb24")
    else:
        rgb = frame.to_ndarray(width=size[0], height=size[1], format="rgb24", interpolation="AREA")
    rotation = int(round(getattr(frame, "rotation", 0) or 0)) % 360
    if rotation:
        # Phone videos store portrait as landscape + a display matrix (counter-clockwise degrees).
        rgb = np.ascontiguousarray(np.rot90(rgb, k=rotation // 90))
    return rgb


class VideoReader:
    """Streams RGB frames resampled to `cfg.fps`; `probe` and (after iteration) `duration` describe it.

    Use `decode_video` for a whole array; this class lets the mouth-ROI stage keep only grayscale frames.
    """

    def __init__(self, path: Path, cfg: VideoConfig, limits: VideoLimits = DEFAULT_LIMITS) -> None:
        self.path = Path(path)
        self.cfg = cfg
        self.limits = limits
        container, format_name = _open(self.path, limits)
        try:
            self.probe = _probe_open(container, format_name).check(cfg)
            limits.check(self.probe)
        except Exception:
            container.close()
            raise
        self._container = container
        stream = _video_stream(container)
        # A track's own duration is exact; a container's may include a longer audio track.
        self._exact_header = stream is not None and stream.duration is not None
        self.duration = 0.0
        self.n_frames = 0

    def __iter__(self) -> Iterator[np.ndarray]:
        """Yield RGB uint8 [H, W, 3] frames at `cfg.fps`. Raises CorruptVideo, VideoTooLong, VideoTooShort,
        TooManyFrames (more source frames than the limit) and PreparationTimeout (the wall clock since the
        first frame was asked for, including the consumer's time between frames, passed the limit)."""
        cfg, container, limits = self.cfg, self._container, self.limits
        stream = _video_stream(container)
        assert stream is not None  # checked by probe
        stream.thread_type = "AUTO"
        # The decoder's own bound: a stream that grows past it mid-file fails instead of allocating. Decoders
        # count their padded buffers, not the picture (measured: H.264 176x144 needs 27,648, MPEG-4 Part 2
        # 175x143 89,600 and 33x31 53,760), so the bound is the limit or four times the header's size with
        # a 128-pixel margin on each axis, whichever is larger; the header itself was held to the limit.
        padded = 4 * (self.probe.width + 128) * (self.probe.height + 128)
        stream.codec_context.options = {"max_pixels": str(max(limits.max_pixels, padded))}
        deadline = time.monotonic() + limits.prepare_timeout_s
        n_source = 0
        size = _scaled_size(self.probe.width, self.probe.height)
        step = 1.0 / cfg.fps
        default_dur = 1.0 / self.probe.fps if self.probe.fps > 0 else step
        t0: float | None = None
        prev_t, prev_frame = 0.0, None
        prev_rgb: np.ndarray | None = None  # cache: one source frame may fill several output ticks
        last_dur = default_dur
        k = 0
        try:
            for frame in container.decode(stream):
                n_source += 1
                if n_source > limits.max_frames:
                    raise TooManyFrames(
                        f"The video has more than {limits.max_frames} frames; the limit is "
                        f"{limits.max_frames} frames. Send a shorter clip."
                    )
                if time.monotonic() > deadline:
                    raise PreparationTimeout(
                        f"Preparing the video took longer than the limit of {limits.prepare_timeout_s:g} s."
                    )
                t = _frame_time(frame, prev_t if t0 is not None else 0.0, last_dur, t0)
                if t0 is None:
                    t0 = t
                t -= t0
                if t < prev_t:  # broken timestamps: never go back in time
                    t = prev_t
                if t > cfg.max_seconds + step:
                    raise VideoTooLong(_too_long_message(t, cfg))
                if frame.duration and frame.time_base is not None:
                    last_dur = float(frame.duration * frame.time_base)
                elif prev_frame is not None and t > prev_t:
                    last_dur = t - prev_t
                rgb: np.ndarray | None = None
                while k * step <= t + 1e-9:
                    tick = k * step
                    if prev_frame is not None and tick - prev_t <= t - tick:
                        if prev_rgb is None:
                            prev_rgb = _to_rgb(prev_frame, size)
                        yield prev_rgb
                    else:
                        if rgb is None:
                            rgb = _to_rgb(frame, size)
                        yield rgb
                    k += 1
                prev_t, prev_frame, prev_rgb = t, frame, rgb
        except av.FFmpegError as exc:
            raise CorruptVideo(
                f"The video cannot be decoded ({_reason(exc)}); it looks truncated or damaged. "
                "Upload the complete file again, or re-export it from your editor."
            ) from None
        finally:
            container.close()
        if prev_frame is None:
            raise CorruptVideo(
                "The video track contains no decodable frame; the file looks truncated or damaged. "
                "Upload the complete file again, or re-export it from your editor."
            )
        self.duration = prev_t + last_dur
        n_out = max(k, int(round(self.duration * cfg.fps)))
        while k < n_out:
            if prev_rgb is None:
                prev_rgb = _to_rgb(prev_frame, size)
            yield prev_rgb
            k += 1
        self.n_frames = k
        promised = self.probe.duration
        if promised > 0 and self.duration < (
            0.9 * promised - 0.5 if self._exact_header else 0.5 * promised - 1.0
        ):
            # The header promises much more than the file holds: the upload was cut off.
            raise CorruptVideo(
                f"Only {self.duration:.1f} s of the {self.probe.duration:.1f} s video could be decoded; "
                "the file looks truncated. Upload the complete file again."
            )
        if self.duration < cfg.min_seconds:
            raise VideoTooShort(
                f"The video is {self.duration:.2f} s long; at least {cfg.min_seconds:g} s is needed. "
                "Send a longer clip of the speaker."
            )


def _frame_time(frame: av.VideoFrame, prev_t: float, last_dur: float, t0: float | None) -> float:
    """Presentation time in seconds; frames without a timestamp follow the previous one."""
    if frame.pts is not None and frame.time_base is not None:
        return float(Fraction(frame.pts) * frame.time_base)
    if t0 is None:
        return 0.0
    return t0 + prev_t + last_dur


def decode_video(path: Path, cfg: VideoConfig, limits: VideoLimits = DEFAULT_LIMITS) -> DecodedVideo:
    """Decode a whole video, resampled to `cfg.fps` by timestamps.

    Returns frames RGB uint8 [T, H, W, 3] with T = round(duration * fps) and the longest side <= 640.
    Raises EmptyFile, UnsupportedVideo, NoVideoStream, CorruptVideo, VideoTooShort, VideoTooLong (the
    last one from the header before anything is decoded when the header knows the duration).
    """
    reader = VideoReader(Path(path), cfg, limits)
    frames = list(reader)
    return DecodedVideo(
        frames=np.stack(frames),
        fps=cfg.fps,
        duration=reader.duration,
        source_fps=reader.probe.fps,
        width=reader.probe.width,
        height=reader.probe.height,
        has_audio=reader.probe.has_audio,
    )
