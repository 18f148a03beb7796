"""Hostile uploads against the in-process gateway (real Redis): each generated at test time, each with
its documented status and error code. After each, nothing lies outside the storage directory and a
good video is still accepted. (Worker-side outcomes: tests/e2e/test_e2e_hostile_input.py.)"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from service.settings import Settings
from tests.fixtures.hostile import GATEWAY_CASES, GATEWAY_SETTINGS, gateway_inputs

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="session")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    return gateway_inputs(tmp_path_factory.mktemp("hostile"))


# (case, filename, expected status, expected error code or None for 202): tests/fixtures/hostile.py
CASES = GATEWAY_CASES


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
    settings = settings.model_copy(update=GATEWAY_SETTINGS)
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
