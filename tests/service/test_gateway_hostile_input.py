"""Hostile uploads against the in-process gateway (real Redis): each generated at test time, each with
its documented status and error code. After each, nothing lies outside the storage directory and a
good video is still accepted. (Worker-side outcomes: tests/e2e/test_e2e_hostile_input.py.)"""

from __future__ import annotations

import os
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import httpx
import numpy as np
import pytest

from service.settings import Settings
from tests.service.conftest import png_bytes, write_audio_only, write_video

pytestmark = pytest.mark.anyio


def write_frames(path: Path, w: int, h: int, n: int, fps: int, codec: str = "libx264") -> Path:
    """`n` black frames of w x h at `fps` (ultrafast: an 8K frame costs well under a second)."""
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"preset": "ultrafast"}
        black = np.zeros((h, w, 3), np.uint8)
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(black, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_many_streams(path: Path, n: int) -> Path:
    """A Matroska file with one video and `n` audio tracks (ffmpeg would analyse every one)."""
    with av.open(str(path), mode="w", format="matroska") as out:
        v = out.add_stream("libx264", rate=25)
        v.width = v.height = 16
        v.pix_fmt = "yuv420p"
        for _ in range(n):
            out.add_stream("pcm_s16le", rate=8000)
        for i in range(25):
            frame = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 25)
            for packet in v.encode(frame):
                out.mux(packet)
        for packet in v.encode():
            out.mux(packet)
    return path


@pytest.fixture(scope="session")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("hostile")
    clip = write_video(d / "clip.mp4", 1.0).read_bytes()
    moov = clip.find(b"moov")
    # The index (at the end of this file) overwritten: a file that starts like an mp4 but has no tracks.
    corrupt_moov = clip[: moov + 4] + b"\xff" * (len(clip) - moov - 4)
    secret = d / "secret.txt"
    secret.write_text("not for you\n")
    playlist = "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\n{}\n#EXT-X-ENDLIST\n"
    return {
        "good": clip,
        "empty": b"",
        "truncated": clip[: len(clip) // 2],
        "random": np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "png": png_bytes(),
        "pdf": b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n",
        "html": b"<!doctype html><html><body><script>alert(1)</script></body></html>",
        "audio_only": write_audio_only(d / "audio.mp4").read_bytes(),
        "one_frame": write_frames(d / "one.mp4", 32, 32, 1, 25).read_bytes(),
        "two_by_two": write_frames(d / "2x2.mp4", 2, 2, 25, 25).read_bytes(),
        "odd_size": write_frames(d / "odd.avi", 33, 31, 25, 25, codec="mpeg4").read_bytes(),
        "frame_4k": write_frames(d / "4k.mp4", 3840, 2160, 2, 2).read_bytes(),
        "frame_8k": write_frames(d / "8k.mp4", 8192, 4320, 2, 2).read_bytes(),
        "fps_1000": write_frames(d / "1000fps.mp4", 16, 16, 600, 1000).read_bytes(),
        "long": write_video(d / "long.mp4", 3.0).read_bytes(),
        "corrupt_moov": corrupt_moov,
        "vp9_webm": write_frames(d / "vp9.webm", 64, 64, 25, 25, codec="libvpx-vp9").read_bytes(),
        "many_streams": write_many_streams(d / "streams.mkv", 40).read_bytes(),
        "playlist_existing": playlist.format(secret).encode(),
        "playlist_missing": playlist.format(d / "does-not-exist.txt").encode(),
    }


# (case, filename, expected status, expected error code or None for 202)
CASES = [
    ("empty", "x.mp4", 415, "empty_file"),
    ("truncated", "x.mp4", 422, "corrupt_video"),
    ("random", "x.mp4", 415, "unsupported_video"),
    ("png", "x.mp4", 415, "unsupported_video"),
    ("pdf", "x.pdf", 415, "unsupported_video"),
    ("html", "x.html", 415, "unsupported_video"),
    ("audio_only", "x.mp4", 415, "no_video_stream"),
    ("one_frame", "x.mp4", 422, "video_too_short"),
    ("two_by_two", "x.mp4", 202, None),  # a valid video; the worker answers no_face_found
    ("odd_size", "x.avi", 202, None),  # MPEG-4 Part 2 in AVI: odd sizes are legal there
    ("frame_4k", "x.mp4", 202, None),
    ("frame_8k", "x.mp4", 422, "resolution_too_high"),
    ("fps_1000", "x.mp4", 422, "frame_rate_too_high"),
    ("long", "x.mp4", 422, "video_too_long"),  # the limit is set to 2 s below
    ("corrupt_moov", "x.mp4", 422, "corrupt_video"),
    ("vp9_webm", "x.webm", 202, None),
    # ffmpeg opens at most 8 tracks (max_streams): the other 40 cost nothing and the video is read.
    ("many_streams", "x.mkv", 202, None),
    ("playlist_existing", "x.m3u8", 415, "unsupported_video"),
    ("playlist_missing", "x.m3u8", 415, "unsupported_video"),
    ("good", "../../../../etc/passwd.mp4", 202, None),
    ("good", "x" * 1000 + ".mp4", 202, None),
    # A part header line is bounded (4 KB); the answer names the problem.
    ("good", "x" * 5000 + ".mp4", 422, "invalid_request"),
    ("good", "\u202egnp.mp4 \u0641\u064a\u062f\u064a\u0648 \U0001f600.mp4", 202, None),
]


def files_outside(root: Path, storage: Path) -> list[Path]:
    return [
        p
        for p in root.rglob("*")
        if p.is_file() and storage not in p.parents and p.suffix not in (".sqlite3",)
    ]


@pytest.mark.parametrize(
    ("case", "filename", "status", "code"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)]
)
async def test_hostile_upload_gets_its_documented_answer(
    case: str,
    filename: str,
    status: int,
    code: str | None,
    hostile: dict[str, bytes],
    settings: Settings,
    tmp_path: Path,
    make_client: Callable[..., httpx.AsyncClient],
) -> None:
    settings = settings.model_copy(update={"max_video_seconds": 2.0, "max_upload_mb": 5.0})
    before = set(os.listdir(tmp_path))
    async with make_client(settings) as client:
        resp = await client.post("/v1/synthesize", files={"video": (filename, hostile[case], "video/mp4")})
        assert resp.status_code == status, resp.text
        if code is not None:
            assert resp.json()["error"]["code"] == code
        inputs = sorted((settings.storage_dir / "inputs").glob("*")) if settings.storage_dir.exists() else []
        if status == 202:
            # Stored under the job id and a neutral suffix: the client's filename reached no path.
            assert [p.name for p in inputs] == [f"{resp.json()['id']}.upload"]
        else:
            assert inputs == []  # a refused upload leaves nothing behind
        assert files_outside(tmp_path, settings.storage_dir) == []
        assert set(os.listdir(tmp_path)) <= before | {"storage"}
        # The gateway still accepts a good video afterwards.
        good = await client.post("/v1/synthesize", files={"video": ("ok.mp4", hostile["good"], "video/mp4")})
        assert good.status_code == 202, good.text


async def test_a_playlist_is_no_file_existence_oracle(
    hostile: dict[str, bytes], client: httpx.AsyncClient
) -> None:
    """An .m3u8 naming a file that exists and one naming a missing file get the same answer: the
    playlist is refused from its first bytes, without ffmpeg opening anything it names."""
    answers = []
    for case in ("playlist_existing", "playlist_missing"):
        resp = await client.post("/v1/synthesize", files={"video": ("x.m3u8", hostile[case], "text/plain")})
        answers.append((resp.status_code, resp.json()["error"]))
    assert answers[0] == answers[1]


async def test_frame_count_limit_is_a_setting(
    hostile: dict[str, bytes], settings: Settings, make_client: Callable[..., httpx.AsyncClient]
) -> None:
    settings = settings.model_copy(update={"max_video_frames": 50})
    async with make_client(settings) as client:
        resp = await client.post("/v1/synthesize", files={"video": ("x.mp4", hostile["long"], "video/mp4")})
    assert resp.status_code == 422
    assert resp.json()["error"]["code"] == "too_many_frames"
    assert "50 frames" in resp.json()["error"]["message"]


@pytest.mark.parametrize(
    ("files", "data", "code", "says"),
    [
        ({}, {"steps": "10"}, "invalid_request", "`video`"),  # multipart without the file field
        (
            {"file": ("x.mp4", b"\x00" * 4096, "video/mp4")},
            {},
            "invalid_request",
            "`video` file part is missing",
        ),
        (
            {"upload": ("x.mp4", b"\x00" * 4096, "video/mp4")},
            {},
            "invalid_request",
            "`video` file part is missing",
        ),
        ({"video": ("x.mp4", b"GOOD", "video/mp4")}, {"steps": "9" * 5000}, "invalid_request", "longer than"),
        ({"video": ("x.mp4", b"GOOD", "video/mp4")}, {"colour": "blue"}, "invalid_parameter", "colour"),
    ],
    ids=["no-file-field", "file-as-file", "file-as-upload", "oversized-field", "unknown-field"],
)
async def test_malformed_forms_are_422_naming_the_problem(
    files: dict[str, tuple[str, bytes, str]],
    data: dict[str, str],
    code: str,
    says: str,
    hostile: dict[str, bytes],
    client: httpx.AsyncClient,
    settings: Settings,
) -> None:
    files = {k: (n, hostile["good"] if b == b"GOOD" else b, t) for k, (n, b, t) in files.items()}
    if not files:
        resp = await client.post(
            "/v1/synthesize",
            content=b'--b\r\nContent-Disposition: form-data; name="steps"\r\n\r\n10\r\n--b--\r\n',
            headers={"Content-Type": "multipart/form-data; boundary=b"},
        )
    else:
        resp = await client.post("/v1/synthesize", files=files, data=data)
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["code"] == code
    assert says in resp.json()["error"]["message"]
    inputs = settings.storage_dir / "inputs"
    assert not inputs.exists() or list(inputs.iterdir()) == []


async def test_a_huge_part_header_is_cut_off(client: httpx.AsyncClient) -> None:
    body = (
        b'--b\r\nContent-Disposition: form-data; name="video"; filename="'
        + b"a" * (256 * 1024)
        + b'.mp4"\r\n\r\nxx\r\n--b--\r\n'
    )
    resp = await client.post(
        "/v1/synthesize", content=body, headers={"Content-Type": "multipart/form-data; boundary=b"}
    )
    assert resp.status_code == 422
    assert "headers are longer than" in resp.json()["error"]["message"]
