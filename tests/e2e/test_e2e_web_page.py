"""End to end in a real browser: Debian's headless Chromium (driven by selenium through chromedriver) on
the web page of a real uvicorn gateway with two real Celery workers (small model, CPU) and real Redis.

A wrong key shows the API's error; a carphone clip submitted from the page shows live progress from the
event stream, then plays the speech and the dubbed video from blob: URLs and offers both as downloads;
at phone width nothing overflows sideways; /docs renders Swagger UI from the gateway's own files. No page
may break its Content-Security-Policy or load anything from another origin.

Set DIFFV2S_SAVE_SCREENSHOT=1 to write the finished page to docs/images/web-page.png (else tmp_path).
"""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
INSTALL = "sudo apt-get install -y chromium chromium-driver  (listed in deploy/apt-packages-deploy.txt)"
STEPS = 4
PHONE = (390, 844)
SCREENSHOT = REPO / "docs" / "images" / "web-page.png"


@pytest.fixture(scope="module")
def cluster(
    redis_base: str, checkpoint: Path | None, tmp_path_factory: pytest.TempPathFactory, cluster_tools: Any
) -> Iterator[Any]:
    """The e2e cluster (a real gateway, two real workers), its workers writing every sampling step to
    the event stream (DIFFV2S_PROGRESS_INTERVAL_S=0), so the page's progress is checked step by step."""
    env = {
        "DIFFV2S_MAX_BATCH_SIZE": "4",
        "DIFFV2S_CONCURRENCY": "6",
        "DIFFV2S_MAX_QUEUE_DELAY_MS": "300",
        "DIFFV2S_PROGRESS_INTERVAL_S": "0",
    }
    with cluster_tools.launch(redis_base, checkpoint, tmp_path_factory.mktemp("web"), 2, env) as c:
        yield c


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        pytest.fail(f"the browser test needs {', '.join(missing)}: {INSTALL}", pytrace=False)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:
        pytest.fail(f"selenium is not installed ({exc}): run make setup", pytrace=False)
    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--mute-audio",
        "--hide-scrollbars",
    ):
        options.add_argument(arg)
    options.add_argument("--window-size=1000,1200")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: Any, what: str, check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check(driver)
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def js(driver: Any, script: str, *args: Any) -> Any:
    return driver.execute_script(script, *args)


def console_problems(driver: Any) -> list[str]:
    """Browser log lines of CSP violations, failed loads and script errors since the last call."""
    return [
        e["message"]
        for e in driver.get_log("browser")
        if e["level"] == "SEVERE" or "Content Security Policy" in e["message"]
    ]


def foreign_resources(driver: Any, origin: str) -> list[str]:
    names = js(driver, "return performance.getEntriesByType('resource').map(e => e.name)")
    return [n for n in names if not n.startswith(origin + "/")]


def no_sideways_overflow(driver: Any) -> tuple[int, int]:
    width, inner = js(driver, "return [document.documentElement.scrollWidth, window.innerWidth]")
    assert width <= inner, f"the page is {width} px wide in a {inner} px window"
    return width, inner


def open_page(driver: Any, url: str, key: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(url + "/")
    wait(driver, "the page's script", lambda d: js(d, "return document.readyState") == "complete")
    field = driver.find_element(By.ID, "api-key")
    field.clear()
    field.send_keys(key)


def choose_video(driver: Any, clip: Path) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "video").send_keys(str(clip))
    src, state = wait(
        driver,
        "the preview of the chosen video",
        lambda d: (
            (v := js(d, "const v = document.getElementById('preview'); return [v.src, v.readyState]"))
            and v[1] >= 1
            and v
        ),
    )
    assert src.startswith("blob:")


def media_state(driver: Any, element_id: str) -> dict[str, Any]:
    return js(  # type: ignore[no-any-return]
        driver,
        "const m = document.getElementById(arguments[0]);"
        "return {src: m.src, readyState: m.readyState, duration: m.duration, error: m.error && m.error.code};",
        element_id,
    )


def test_docs_render_from_the_gateways_own_files(browser: Any, cluster: Any) -> None:
    from selenium.webdriver.common.by import By

    browser.get(cluster.url + "/docs")
    title = wait(
        browser,
        "Swagger UI to render the API",
        lambda d: (els := d.find_elements(By.CSS_SELECTOR, ".swagger-ui .info .title")) and els[0].text,
    )
    assert "DiffV2S" in title
    wait(browser, "the operations", lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) >= 5)
    assert foreign_resources(browser, cluster.url) == []
    assert console_problems(browser) == []


def test_wrong_key_shows_the_apis_error(browser: Any, cluster: Any, clips: list[Path]) -> None:
    from selenium.webdriver.common.by import By

    browser.set_window_size(*PHONE)
    open_page(browser, cluster.url, "not-a-key-of-this-server")
    no_sideways_overflow(browser)
    choose_video(browser, clips[0])
    browser.find_element(By.ID, "submit").click()
    box = wait(
        browser, "the error message", lambda d: (e := d.find_element(By.ID, "error")).is_displayed() and e
    )
    assert "unknown API key" in box.text
    assert "unauthorized" in box.text and "401" in box.text
    assert box.get_attribute("data-code") == "unauthorized"
    assert not browser.find_element(By.ID, "job").is_displayed()
    no_sideways_overflow(browser)
    # The browser logs the 401 itself as a failed load; nothing else may be wrong.
    problems = [m for m in console_problems(browser) if "401" not in m]
    assert problems == []


def test_a_job_from_the_page_plays_and_offers_its_results(
    browser: Any, cluster: Any, clips: list[Path], tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select

    browser.set_window_size(1000, 1200)
    open_page(browser, cluster.url, cluster.key_a)
    clip = clips[0]
    choose_video(browser, clip)
    browser.find_element(By.CSS_SELECTOR, "input[name=output][value=mp4]").click()
    Select(browser.find_element(By.ID, "priority")).select_by_value("high")
    browser.find_element(By.CSS_SELECTOR, "#synth-form details summary").click()
    browser.find_element(By.ID, "steps").send_keys(str(STEPS))
    browser.find_element(By.ID, "submit").click()

    job_id = wait(
        browser, "the job id", lambda d: (t := d.find_element(By.ID, "job-id").text) and len(t) == 36 and t
    )
    # Follow the page while the job runs: the status and the progress bar change as events arrive.
    seen_status, seen_progress = [], []
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status, value, mode = js(
            browser,
            "return [document.getElementById('status').dataset.status,"
            " document.getElementById('progress').value, document.getElementById('mode').dataset.mode];",
        )
        if not seen_status or seen_status[-1] != status:
            seen_status.append(status)
        if value and (not seen_progress or seen_progress[-1] != value):
            seen_progress.append(value)
        if status in ("succeeded", "failed", "canceled", "expired"):
            break
        time.sleep(0.05)
    assert seen_status[-1] == "succeeded", (
        f"{seen_status}: {browser.find_element(By.ID, 'error').text}\n{cluster.logs()}"
    )
    assert mode == "events", "the page fell back to polling: the event stream was not read"
    # The event log of the page: every status change and each sampling step, in order.
    log = js(
        browser,
        "return [...document.querySelectorAll('#events li')].map(li => [li.dataset.kind, li.textContent]);",
    )
    statuses = [text.rsplit(": ", 1)[1] for kind, text in log if kind == "status"]
    steps = [text.rsplit(": ", 1)[1] for kind, text in log if kind == "progress"]
    assert statuses[-1] == "succeeded" and "running" in statuses, log
    assert steps == [f"step {i} of {STEPS}" for i in range(1, STEPS + 1)], log
    assert seen_progress and seen_progress[-1] == STEPS
    assert "queued" in seen_status or "preparing" in seen_status or "running" in seen_status, seen_status

    # The results: played from blob: URLs the page made of what it fetched with the key.
    with httpx.Client(base_url=cluster.url, headers={"Authorization": f"Bearer {cluster.key_a}"}) as api:
        job = api.get(f"/v1/jobs/{job_id}").json()
        wav = api.get(f"/v1/jobs/{job_id}/audio").content
        mp4 = api.get(f"/v1/jobs/{job_id}/video").content
    wait(browser, "the result", lambda d: d.find_element(By.ID, "result").is_displayed())
    audio = wait(
        browser, "the speech to load", lambda d: (m := media_state(d, "audio"))["readyState"] >= 1 and m
    )
    assert audio["src"].startswith("blob:") and audio["error"] is None
    assert abs(audio["duration"] - job["audio_seconds"]) < 0.05, (audio, job["audio_seconds"])
    video = wait(
        browser,
        "the dubbed video to load",
        lambda d: (m := media_state(d, "dubbed"))["readyState"] >= 1 and m,
    )
    assert video["src"].startswith("blob:") and video["error"] is None
    assert video["duration"] > 0.5 * job["video_seconds"], (video, job["video_seconds"])
    for link_id, media, name, body in (
        ("audio-download", audio, f"{job_id}.wav", wav),
        ("video-download", video, f"{job_id}.mp4", mp4),
    ):
        link = browser.find_element(By.ID, link_id)
        assert link.get_attribute("href") == media["src"]
        assert link.get_attribute("download") == name
        # The whole file, as the API serves it (the page's CSP keeps even a test from fetching the blob).
        assert link.get_attribute("data-bytes") == str(len(body))
    assert not browser.find_element(By.ID, "error").is_displayed()
    assert foreign_resources(browser, cluster.url) == []
    assert console_problems(browser) == []

    # Phone width: nothing wider than the screen, results included.
    browser.set_window_size(*PHONE)
    no_sideways_overflow(browser)
    browser.save_screenshot(str(tmp_path / "phone.png"))  # to look at when this test fails

    save_screenshot(browser, tmp_path)


def test_downloads_redirected_to_storage_show_why_they_cannot_play(
    browser: Any, cluster: Any, clips: list[Path], cutting_proxy: tuple[str, CuttingProxy]
) -> None:
    """With DIFFV2S_STORAGE_PRESIGN_TTL_S the gateway answers downloads with a 307 to the bucket; the
    page's policy admits its own origin only, so it says so instead of failing silently."""
    from selenium.webdriver.common.by import By

    url, proxy = cutting_proxy
    proxy.redirect_downloads = True
    try:
        open_page(browser, url, cluster.key_a)
        choose_video(browser, clips[0])
        browser.find_element(By.CSS_SELECTOR, "#synth-form details summary").click()
        browser.find_element(By.ID, "steps").send_keys("2")
        browser.find_element(By.ID, "submit").click()
        box = wait(
            browser,
            "the error message",
            lambda d: (e := d.find_element(By.ID, "error")).is_displayed() and e,
            timeout=600,
        )
    finally:
        proxy.redirect_downloads = False
    assert box.get_attribute("data-code") == "redirected_download"
    assert "presigned" in box.text
    assert browser.find_element(By.ID, "status").get_attribute("data-status") == "succeeded"
    assert console_problems(browser) == []


def test_cancel_a_queued_job_from_the_page(browser: Any, cluster: Any, clips: list[Path]) -> None:
    """With both workers stopped (SIGSTOP) the job stays queued: the page offers Cancel, and the job ends
    canceled."""
    from selenium.webdriver.common.by import By

    browser.set_window_size(*PHONE)
    for w in cluster.workers:
        os.kill(w.popen.pid, signal.SIGSTOP)
    try:
        open_page(browser, cluster.url, cluster.key_b)
        choose_video(browser, clips[3])
        browser.find_element(By.ID, "submit").click()
        button = wait(
            browser,
            "the cancel button",
            lambda d: (b := d.find_element(By.ID, "cancel")).is_displayed() and b,
        )
        job_id = browser.find_element(By.ID, "job-id").text
        assert browser.find_element(By.ID, "status").get_attribute("data-status") == "queued"
        no_sideways_overflow(browser)
        button.click()
        wait(
            browser,
            "the job to end canceled",
            lambda d: d.find_element(By.ID, "status").get_attribute("data-status") == "canceled",
        )
    finally:
        for w in cluster.workers:
            os.kill(w.popen.pid, signal.SIGCONT)
    with httpx.Client(base_url=cluster.url, headers={"Authorization": f"Bearer {cluster.key_b}"}) as api:
        assert api.get(f"/v1/jobs/{job_id}").json()["status"] == "canceled"
    assert not browser.find_element(By.ID, "cancel").is_displayed()
    assert not browser.find_element(By.ID, "result").is_displayed()
    assert not browser.find_element(By.ID, "error").is_displayed()
    assert console_problems(browser) == []


def test_without_the_event_stream_the_page_polls(browser: Any, cluster: Any, clips: list[Path]) -> None:
    """A proxy that cuts text/event-stream (here: the browser blocks the URL): the page polls the job."""
    from selenium.webdriver.common.by import By

    browser.set_window_size(1000, 1200)
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.setBlockedURLs", {"urls": ["*/events"]})
    try:
        open_page(browser, cluster.url, cluster.key_b)
        choose_video(browser, clips[1])
        browser.find_element(By.CSS_SELECTOR, "#synth-form details summary").click()
        browser.find_element(By.ID, "steps").send_keys("2")
        browser.find_element(By.ID, "submit").click()
        wait(
            browser,
            "the job to succeed by polling",
            lambda d: d.find_element(By.ID, "status").get_attribute("data-status") == "succeeded",
            timeout=600,
        )
        assert browser.find_element(By.ID, "mode").get_attribute("data-mode") == "polling"
        audio = wait(
            browser, "the speech to load", lambda d: (m := media_state(d, "audio"))["readyState"] >= 1 and m
        )
        assert audio["src"].startswith("blob:") and audio["duration"] > 0
        assert not browser.find_element(By.ID, "video-result").is_displayed()  # output=wav: no video
        # The blocked stream is the only failed load.
        assert [m for m in console_problems(browser) if "/events" not in m] == []
    finally:
        browser.execute_cdp_cmd("Network.setBlockedURLs", {"urls": []})


HOP_BY_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer", b"upgrade"}


class CuttingProxy:
    """A reverse proxy (ASGI, served by its own uvicorn) in front of the gateway. It records the
    Last-Event-ID of every event-stream request; after `cut_next = True` it ends the next event stream
    right after its first event, as a proxy's read timeout would."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.streams: list[dict[str, str | None]] = []
        self.cut_next = False
        self.client: httpx.AsyncClient | None = None
        # Answer downloads with a redirect to another origin, as presigned object-storage links are.
        self.redirect_downloads = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            if self.client is not None:
                await self.client.aclose()
            await send({"type": "lifespan.shutdown.complete"})
            return
        if self.client is None:
            self.client = httpx.AsyncClient(base_url=self.upstream, timeout=None)
        if self.redirect_downloads and scope["path"].endswith(("/audio", "/video")):
            location = b"http://127.0.0.2:9/bucket/result?X-Amz-Signature=0"
            await send({"type": "http.response.start", "status": 307, "headers": [(b"location", location)]})
            await send({"type": "http.response.body", "body": b""})
            return

        async def body() -> AsyncIterator[bytes]:
            while True:
                message = await receive()
                yield message.get("body", b"")
                if not message.get("more_body"):
                    return

        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in HOP_BY_HOP | {b"host"}]
        path = scope["raw_path"].decode() + (
            f"?{scope['query_string'].decode()}" if scope["query_string"] else ""
        )
        request = self.client.build_request(scope["method"], path, headers=headers, content=body())
        response = await self.client.send(request, stream=True)
        cut = False
        if scope["path"].endswith("/events"):
            given = dict(scope["headers"]).get(b"last-event-id")
            stream: dict[str, str | None] = {
                "last_event_id": given.decode() if given else None,
                "first_id": None,
            }
            self.streams.append(stream)
            cut, self.cut_next = self.cut_next, False
        await send(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": [(k, v) for k, v in response.headers.raw if k.lower() not in HOP_BY_HOP],
            }
        )
        seen = b""
        try:
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                seen += chunk
                if cut and b"\nid: " in b"\n" + seen and seen.endswith(b"\n\n"):
                    first = seen.split(b"id: ", 1)[1].split(b"\n", 1)[0]
                    stream["first_id"] = first.decode()
                    break
        finally:
            await response.aclose()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


@pytest.fixture(scope="module")
def cutting_proxy(cluster: Any) -> Iterator[tuple[str, CuttingProxy]]:
    import uvicorn

    from tests.e2e.conftest import free_port

    app = CuttingProxy(cluster.url)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the proxy did not start"
    try:
        yield url, app
    finally:
        server.should_exit = True
        thread.join(30)


def test_a_cut_event_stream_resumes_without_loss_or_repeats(
    browser: Any, cluster: Any, clips: list[Path], cutting_proxy: tuple[str, CuttingProxy]
) -> None:
    from selenium.webdriver.common.by import By

    url, proxy = cutting_proxy
    browser.set_window_size(1000, 1200)
    open_page(browser, url, cluster.key_a)
    proxy.streams.clear()
    proxy.cut_next = True
    choose_video(browser, clips[2])
    browser.find_element(By.CSS_SELECTOR, "#synth-form details summary").click()
    browser.find_element(By.ID, "steps").send_keys(str(STEPS))
    browser.find_element(By.ID, "submit").click()
    wait(
        browser,
        "the job to succeed through the cut stream",
        lambda d: d.find_element(By.ID, "status").get_attribute("data-status") == "succeeded",
        timeout=600,
    )
    assert browser.find_element(By.ID, "mode").get_attribute("data-mode") == "events"
    # The first stream was cut after one event; the page came back with that event's id.
    assert len(proxy.streams) >= 2, proxy.streams
    assert proxy.streams[0]["last_event_id"] is None and proxy.streams[0]["first_id"]
    assert proxy.streams[1]["last_event_id"] == proxy.streams[0]["first_id"]
    log = js(
        browser,
        "return [...document.querySelectorAll('#events li')].map(li => [li.dataset.kind, li.textContent]);",
    )
    kinds = [kind for kind, _ in log]
    assert "reconnect" in kinds, log
    statuses = [text.rsplit(": ", 1)[1] for kind, text in log if kind == "status"]
    steps = [text.rsplit(": ", 1)[1] for kind, text in log if kind == "progress"]
    assert statuses[0] == "queued" and statuses[-1] == "succeeded", log
    assert len(statuses) == len(set(statuses)), f"an event came twice: {log}"
    assert steps == [f"step {i} of {STEPS}" for i in range(1, STEPS + 1)], log
    audio = wait(
        browser, "the speech to load", lambda d: (m := media_state(d, "audio"))["readyState"] >= 1 and m
    )
    assert audio["src"].startswith("blob:") and audio["duration"] > 0
    assert console_problems(browser) == []


def save_screenshot(driver: Any, tmp_path: Path) -> None:
    """The finished page at a laptop-ish width, the whole height, as a small palette PNG."""
    from PIL import Image

    driver.set_window_size(900, 1000)
    wait(driver, "the video's first frame", lambda d: media_state(d, "dubbed")["readyState"] >= 2)
    height = js(driver, "return document.documentElement.scrollHeight")
    driver.set_window_size(900, min(int(height) + 200, 3200))
    time.sleep(0.5)
    image = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    small = image.quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    out = SCREENSHOT if os.environ.get("DIFFV2S_SAVE_SCREENSHOT") == "1" else tmp_path / "web-page.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    small.save(out, optimize=True)
    assert out.stat().st_size < 500_000
