"""Put the synthesized speech back on the video: an mp4 with the original picture and a new AAC track.

H.264 video is copied packet by packet (no quality loss, no encode time); anything else is re-encoded
with libx264 so the mp4 plays everywhere; H.264 in 4:2:0 needs even dimensions, so an odd width or height
gets one edge-replicated column or row. The audio is cut or zero-padded to the video's duration, so
players do not show a frozen last frame or cut the speech short. Any audio track of the input is dropped.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from diffv2s.errors import CorruptVideo, DiffV2SError, MuxFailed, NoVideoStream

AAC_FRAME = 1024  # samples per AAC frame
AAC_BITRATE = 128_000


def _video_duration(container: av.container.InputContainer, stream: av.VideoStream) -> float:
    """Seconds from the first frame to the end of the last one, read from the packets (no decoding)."""
    first: float | None = None
    end = 0.0
    for packet in container.demux(stream):
        if packet.pts is None or packet.time_base is None:
            continue
        start = float(packet.pts * packet.time_base)
        dur = float(packet.duration * packet.time_base) if packet.duration else 0.0
        first = start if first is None else min(first, start)
        end = max(end, start + dur)
    container.seek(0)
    return 0.0 if first is None else end - first


def _fit_length(waveform: np.ndarray, n: int) -> np.ndarray:
    wave = np.asarray(waveform, dtype=np.float32).reshape(-1)[:n]
    if len(wave) < n:
        wave = np.pad(wave, (0, n - len(wave)))
    return np.clip(wave, -1.0, 1.0)


def mux_audio(video: Path, waveform: np.ndarray, sample_rate: int, out: Path) -> Path:
    """Write `out` (mp4): the picture of `video` and `waveform` as a mono AAC track.

    waveform: float32 [n_samples] in [-1, 1] at `sample_rate`; cut or zero-padded to the video duration.
    The file is interleaved and has its index first ("faststart"), so a browser can play it while it
    downloads. Returns `out`. Raises NoVideoStream / CorruptVideo when `video` has no readable video track
    and MuxFailed for any other failure (an encoder or container error, an unwritable `out`): every error
    is typed, so a caller muxing a batch fails that one item and keeps the others.
    """
    video, out = Path(video), Path(out)
    try:
        return _mux(video, waveform, sample_rate, out)
    except DiffV2SError:
        raise
    except Exception as exc:
        with contextlib.suppress(OSError):
            out.with_name(out.name + ".part").unlink(missing_ok=True)
        raise MuxFailed(
            f"The video with the new speech could not be written ({type(exc).__name__}: {exc})."
        ) from exc


def _mux(video: Path, waveform: np.ndarray, sample_rate: int, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        src = av.open(str(video))
    except av.FFmpegError as exc:
        raise CorruptVideo(f"The video {video.name!r} cannot be read for muxing ({exc}).") from None
    with src:
        if not src.streams.video:
            raise NoVideoStream(f"The video {video.name!r} has no video track to put the audio on.")
        vin = src.streams.video[0]
        duration = _video_duration(src, vin)
        wave = _fit_length(waveform, int(round(duration * sample_rate)))
        tmp = out.with_name(out.name + ".part")
        with av.open(str(tmp), mode="w", format="mp4", options={"movflags": "+faststart"}) as dst:
            copy = vin.codec_context.name == "h264"
            if copy:
                vout = dst.add_stream_from_template(vin)
            else:
                vout = dst.add_stream("libx264", rate=vin.average_rate or vin.guessed_rate or Fraction(25))
                vout.width, vout.height = vin.codec_context.width, vin.codec_context.height
                vout.pix_fmt = "yuv420p"
                # Encode in the source time base so frame timestamps (even variable ones) carry over.
                if vin.time_base is not None:
                    vout.codec_context.time_base = vin.time_base
                vout.options = {"crf": "18", "preset": "veryfast"}
            aout = dst.add_stream("aac", rate=sample_rate, layout="mono")
            aout.bit_rate = AAC_BITRATE
            audio = _AudioQueue(dst, _encode_audio(wave, sample_rate, aout))
            video_packets = _copy_video(src, vin, vout) if copy else _encode_video(src, vin, vout)
            for packet in video_packets:
                # Audio up to this video packet's time goes first: chunks alternate in the file.
                audio.mux_until(_seconds(packet))
                dst.mux(packet)
            audio.mux_until(None)
        tmp.replace(out)  # readers never see a half-written mp4
    return out


def _seconds(packet: av.Packet) -> float:
    ts = packet.dts if packet.dts is not None else packet.pts
    if ts is None or packet.time_base is None:
        return 0.0
    return float(ts * packet.time_base)


class _AudioQueue:
    """Encoded audio packets waiting to be muxed in time order with the video packets."""

    def __init__(self, dst: av.container.OutputContainer, packets: list[av.Packet]) -> None:
        self.dst = dst
        self.packets = deque(packets)

    def mux_until(self, seconds: float | None) -> None:
        while self.packets and (seconds is None or _seconds(self.packets[0]) <= seconds):
            self.dst.mux(self.packets.popleft())


def _copy_video(
    src: av.container.InputContainer, vin: av.VideoStream, vout: av.VideoStream
) -> Iterator[av.Packet]:
    for packet in src.demux(vin):
        if packet.dts is None:  # the demuxer's flush packet
            continue
        packet.stream = vout
        yield packet


def _encode_video(
    src: av.container.InputContainer, vin: av.VideoStream, vout: av.VideoStream
) -> Iterator[av.Packet]:
    first_pts: int | None = None
    turns = 0
    for i, frame in enumerate(src.decode(vin)):
        if i == 0:
            # A display rotation (phone videos) is not carried by re-encoding: turn the pixels instead.
            # The size can still change here: the encoder opens on its first frame.
            turns = int(round(getattr(frame, "rotation", 0) or 0)) % 360 // 90
            width, height = (frame.height, frame.width) if turns % 2 else (frame.width, frame.height)
            vout.width, vout.height = width + width % 2, height + height % 2
        pts = frame.pts
        if turns or frame.width % 2 or frame.height % 2:
            rgb: np.ndarray = np.rot90(frame.to_ndarray(format="rgb24"), k=turns)
            # Odd sizes: repeat the last row / column (libx264 in yuv420p refuses odd dimensions).
            rgb = np.pad(rgb, ((0, rgb.shape[0] % 2), (0, rgb.shape[1] % 2), (0, 0)), mode="edge")
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.time_base = vin.time_base
        if pts is not None:
            first_pts = pts if first_pts is None else first_pts
            # Keep the source timing (variable frame rate stays variable).
            frame.pts = pts - first_pts
        yield from vout.encode(frame.reformat(format="yuv420p"))
    yield from vout.encode(None)


def _encode_audio(wave: np.ndarray, sample_rate: int, aout: av.AudioStream) -> list[av.Packet]:
    packets: list[av.Packet] = []
    for start in range(0, len(wave), AAC_FRAME):
        chunk = wave[start : start + AAC_FRAME]
        frame = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
        frame.sample_rate = sample_rate
        frame.pts = start
        packets += aout.encode(frame)
    packets += aout.encode(None)
    return packets
