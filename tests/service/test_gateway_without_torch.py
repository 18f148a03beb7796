"""The gateway must import and serve with torch unavailable (it never runs a model)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import socket, sys, threading, time
    sys.modules["torch"] = None  # any "import torch" now raises ImportError

    import httpx, uvicorn
    from service.main import create_app
    from service.settings import Settings

    app = create_app(Settings(api_keys="k", store_url="sqlite:///" + sys.argv[1], storage_dir=sys.argv[2]))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    assert httpx.get(base + "/healthz").json() == {"status": "ok"}
    assert "/v1/synthesize" in httpx.get(base + "/openapi.json").json()["paths"]
    r = httpx.get(base + "/v1/jobs", headers={"Authorization": "Bearer k"})
    assert r.status_code == 200, r.text
    server.should_exit = True
    thread.join(10)
    leaked = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
    assert leaked == ["torch"] and sys.modules["torch"] is None, leaked
    print("GATEWAY-OK-WITHOUT-TORCH")
    """
)


def test_gateway_imports_and_serves_without_torch(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "jobs.sqlite3"), str(tmp_path / "storage")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "GATEWAY-OK-WITHOUT-TORCH" in proc.stdout
