"""Typed errors of the model library. Each has a stable `code` and a message a user can act on.

The gateway maps them to HTTP statuses in one place; the CLI prints `message` and exits non-zero.
"""

from __future__ import annotations


class DiffV2SError(Exception):
    """Base class. `code` is stable and machine-readable; the message is for humans."""

    code = "diffv2s_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InputError(DiffV2SError):
    """The input cannot be used (maps to HTTP 415/422)."""

    code = "invalid_input"


class EmptyFile(InputError):
    code = "empty_file"


class UnsupportedVideo(InputError):
    """Not a video container we can read (random bytes, an image, ...)."""

    code = "unsupported_video"


class NoVideoStream(InputError):
    """A readable container without a video stream (e.g. audio-only mp4)."""

    code = "no_video_stream"


class CorruptVideo(InputError):
    """A container that starts like a video but cannot be decoded (e.g. truncated)."""

    code = "corrupt_video"


class VideoTooShort(InputError):
    code = "video_too_short"


class VideoTooLong(InputError):
    code = "video_too_long"


class NoFaceFound(InputError):
    code = "no_face_found"


class InvalidParameter(InputError):
    code = "invalid_parameter"


class CheckpointError(DiffV2SError):
    """A checkpoint or engine file is missing, corrupt or does not match (a start-up error)."""

    code = "checkpoint_error"


class InferenceEngineUnavailable(CheckpointError):
    """The requested inference engine (`diffv2s.engines`) cannot run here: ONNX Runtime silently fell back
    to another execution provider (e.g. CUDA libraries missing), or TensorRT / a CUDA GPU is absent. A
    start-up error. (Not the corpus's text-to-speech engines: those have errors of their own.)"""

    code = "engine_unavailable"


class VideoOverLimit(InputError):
    """The video is over a limit checked before (and while) decoding; the message names the limit."""

    code = "video_over_limit"


class ResolutionTooHigh(VideoOverLimit):
    code = "resolution_too_high"


class FrameRateTooHigh(VideoOverLimit):
    code = "frame_rate_too_high"


class TooManyFrames(VideoOverLimit):
    code = "too_many_frames"


class PreparationTimeout(VideoOverLimit):
    """Decoding and face tracking took longer than the wall-clock limit on preparation."""

    code = "preparation_timeout"


class MuxFailed(DiffV2SError):
    """The speech was made but the mp4 with it could not be written (an encoder, container or disk error).
    Not the client's input error: the item fails alone, its batch goes on."""

    code = "mux_failed"
