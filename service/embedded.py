"""`python -m service.embedded` (what `make run` starts): gateway + one worker, no external server.

The broker is Celery's SQLAlchemy transport on SQLite, the job store is SQLite, storage is a local
directory, all under ./var (DIFFV2S_VAR_DIR). Listens on 127.0.0.1:8000 unless PORT is set. API keys
come from DIFFV2S_API_KEYS / DIFFV2S_API_KEYS_FILE; without them a development key is created once in
var/dev-api-key and printed. Ctrl-C (SIGINT) or SIGTERM stops the gateway and the worker together.

The worker is started as `python -m worker` in a child process (the gateway never imports it).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import uvicorn
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from jobs import open_store
from service.__main__ import log_config
from service.main import create_app
from service.settings import Settings

HOST = "127.0.0.1"


class EmbeddedSettings(BaseSettings):
    """What the launcher reads before the gateway's `Settings` can exist (they need the dev key)."""

    model_config = SettingsConfigDict(env_prefix="DIFFV2S_", extra="ignore", frozen=True)

    # Broker, job store, storage and the dev key live here.
    var_dir: Path = Path("var")
    port: int = Field(default=8000, ge=1, le=65535, validation_alias=AliasChoices("PORT", "DIFFV2S_PORT"))


def prepare_env(var: Path) -> str | None:
    """Fill the DIFFV2S_* defaults of the embedded mode in os.environ; returns a created dev key."""
    var.mkdir(parents=True, exist_ok=True)
    env = os.environ
    env.setdefault("DIFFV2S_BROKER_URL", f"sqla+sqlite:///{var / 'broker.sqlite3'}")
    env.setdefault("DIFFV2S_STORE_URL", f"sqlite:///{var / 'jobs.sqlite3'}")
    env.setdefault("DIFFV2S_STORAGE_DIR", str(var / "storage"))
    # A CPU machine: modest batches; the worker waits briefly so concurrent requests share a batch.
    env.setdefault("DIFFV2S_MAX_BATCH_SIZE", "4")
    env.setdefault("DIFFV2S_MAX_QUEUE_DELAY_MS", "50")
    if env.get("DIFFV2S_API_KEYS") or env.get("DIFFV2S_API_KEYS_FILE"):
        return None
    key_file = var / "dev-api-key"
    if not key_file.exists():
        key_file.write_text(f"dev-{secrets.token_urlsafe(24)}\n")
        key_file.chmod(0o600)
    env["DIFFV2S_API_KEYS_FILE"] = str(key_file)
    return key_file.read_text().strip()


# The worker needs no API key; it must not hold one (a crash dump or `ps e` would show it).
_GATEWAY_ONLY_ENV = ("DIFFV2S_API_KEYS", "DIFFV2S_API_KEYS_FILE")


def worker_env(env: Mapping[str, str]) -> dict[str, str]:
    """The worker's environment: the gateway's, without the API keys."""
    return {k: v for k, v in env.items() if k not in _GATEWAY_ONLY_ENV}


def banner(url: str, key: str | None, dev_key: bool) -> str:
    shown = key if key is not None else "$KEY"
    auth = f'-H "Authorization: Bearer {shown}"'
    if key is None:
        key = "(one of the keys you configured; not shown)"
    where = " (a development key, kept in var/dev-api-key)" if dev_key else ""
    return f"""
DiffV2S is running (embedded mode: gateway + 1 worker, no external server)
  URL      {url}   API docs: {url}/docs
  API key  {key}{where}

  Submit a video, poll the job, download the speech:
    curl -s {auth} -F video=@clip.mp4 -F steps=10 {url}/v1/synthesize
    curl -s {auth} {url}/v1/jobs/JOB_ID
    curl -s {auth} -o speech.wav {url}/v1/jobs/JOB_ID/audio

  The worker is loading the model; GET {url}/readyz answers 200 once it is ready. Ctrl-C stops both.
""".rstrip()


class _Server(uvicorn.Server):
    """uvicorn's server with our own signal handling: uvicorn re-raises the signal after its shutdown,
    which would kill this process before it stopped the worker."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def main() -> int:
    launcher = EmbeddedSettings()
    dev_key = prepare_env(launcher.var_dir.resolve())
    settings = Settings()
    port = launcher.port
    url = f"http://{HOST}:{port}"

    app = create_app(settings)
    # The gateway's own log format (request id on every line), at warning: no access lines here.
    config = uvicorn.Config(
        app, host=HOST, port=port, log_level="warning", lifespan="on", log_config=log_config("warning")
    )
    server = _Server(config)

    def on_signal(sig: int, _frame: object) -> None:
        if server.should_exit and sig == signal.SIGINT:
            server.force_exit = True  # a second Ctrl-C: do not wait for open connections
        server.should_exit = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    # Own session: a terminal's Ctrl-C reaches only this process, which then stops the worker warmly.
    # The worker also stops by itself if this process dies first (WorkerSettings.parent_pid).
    worker = subprocess.Popen(
        [sys.executable, "-m", "worker"],
        env=worker_env(os.environ) | {"DIFFV2S_PARENT_PID": str(os.getpid())},
        start_new_session=True,
    )
    stopping = threading.Event()

    def watch() -> None:
        """Announce the worker once its heartbeat shows; stop the gateway if the worker dies."""
        store = open_store(settings.store_url, settings.store_prefix)
        announced = False
        while not stopping.is_set():
            if worker.poll() is not None:
                print(f"\nThe worker exited (code {worker.returncode}); stopping.", flush=True)
                server.should_exit = True
                return
            if not announced and server.started:
                try:
                    if store.live_workers():
                        print(f"Worker ready (pid {worker.pid}). Try the curl commands above.", flush=True)
                        announced = True
                except Exception:
                    pass
            stopping.wait(0.5)

    def announce() -> None:
        while not server.started and not stopping.is_set():
            time.sleep(0.05)
        if server.started:
            # An operator's own keys are never printed: only the development key created here.
            print(banner(url, dev_key, dev_key is not None), flush=True)

    threading.Thread(target=announce, daemon=True).start()
    threading.Thread(target=watch, daemon=True).start()
    try:
        server.run()  # returns on SIGINT / SIGTERM or when the worker died
    finally:
        stopping.set()
        if worker.poll() is None:
            # Warm shutdown: the worker finishes the batch in flight and hands the rest back.
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(60)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        print("Stopped gateway and worker.", flush=True)
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
