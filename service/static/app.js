// DiffV2S web page: submit a video to the public API, follow the job live, play and download the result.
// Plain browser JavaScript (no build step, nothing loaded from elsewhere). Every request carries the API
// key in the Authorization header, so the event stream is read with fetch (EventSource cannot send it).
"use strict";

(() => {
  const KEY_STORE = "diffv2s.apiKey";
  const TERMINAL = new Set(["succeeded", "failed", "canceled", "expired"]);
  const CANCELABLE = new Set(["queued", "preparing"]);
  const FIELDS = [
    "output", "priority", "sampler", "steps", "seed", "guidance", "cfg_scale", "noise_scale", "deadline_s",
  ];
  const MAX_EVENT_LINES = 200;

  const $ = (id) => document.getElementById(id);
  const ui = {
    key: $("api-key"),
    forget: $("forget-key"),
    form: $("synth-form"),
    video: $("video"),
    preview: $("preview"),
    submit: $("submit"),
    cancel: $("cancel"),
    error: $("error"),
    job: $("job"),
    jobId: $("job-id"),
    status: $("status"),
    mode: $("mode"),
    progress: $("progress"),
    progressText: $("progress-text"),
    events: $("events"),
    result: $("result"),
    resultInfo: $("result-info"),
    audio: $("audio"),
    audioDownload: $("audio-download"),
    videoResult: $("video-result"),
    dubbed: $("dubbed"),
    videoDownload: $("video-download"),
  };

  let current = null; // the job this page follows: {id, output, controller, lastEventId, retryMs, urls}
  let previewUrl = null;

  // ---- errors ------------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message, retryAfter) {
      super(message);
      this.name = "ApiError";
      this.status = status;
      this.code = code;
      this.retryAfter = retryAfter;
    }
  }

  function retryAfterSeconds(resp, fallback) {
    const value = resp.headers.get("Retry-After");
    if (!value) return fallback;
    const seconds = Number(value);
    if (Number.isFinite(seconds)) return Math.max(0, seconds);
    const date = Date.parse(value);
    return Number.isNaN(date) ? fallback : Math.max(0, (date - Date.now()) / 1000);
  }

  // The API's errors are {"error": {"code", "message"}}; anything else (a proxy's page) keeps the status.
  async function errorOf(resp) {
    let code = `http_${resp.status}`;
    let message = resp.statusText || "the request failed";
    try {
      const body = await resp.json();
      if (body && body.error) {
        code = body.error.code || code;
        message = body.error.message || message;
      }
    } catch (_) {
      // not JSON
    }
    return new ApiError(resp.status, code, message, retryAfterSeconds(resp, undefined));
  }

  function isAbort(err) {
    return err && err.name === "AbortError";
  }

  async function api(path, options) {
    let resp;
    try {
      resp = await fetch(path, { cache: "no-store", ...options });
    } catch (err) {
      if (isAbort(err)) throw err;
      throw new ApiError(0, "network_error", `Could not reach the server (${err.message}).`);
    }
    if (resp.type === "opaqueredirect") {
      // Downloads answered with a redirect to presigned object-storage URLs (DIFFV2S_STORAGE_PRESIGN_TTL_S):
      // the page's policy admits this origin only, so it cannot follow them.
      throw new ApiError(
        resp.status,
        "redirected_download",
        "This server hands results out as presigned storage links, which this page cannot follow; " +
          "download them with the API or the Python client.",
      );
    }
    if (!resp.ok) throw await errorOf(resp);
    return resp;
  }

  function showError(err) {
    if (isAbort(err)) return;
    const status = err instanceof ApiError ? err.status : 0;
    const code = err instanceof ApiError ? err.code : "error";
    const message = document.createElement("p");
    message.className = "error-message";
    message.textContent = err.message || String(err);
    const meta = document.createElement("p");
    meta.className = "error-code";
    meta.textContent = status ? `${code} · HTTP ${status}` : code;
    ui.error.replaceChildren(message, meta);
    if (status === 401) {
      const hint = document.createElement("p");
      hint.textContent = "Check the API key above.";
      ui.error.append(hint);
    }
    ui.error.dataset.code = code;
    ui.error.dataset.status = String(status);
    ui.error.hidden = false;
  }

  function clearError() {
    ui.error.hidden = true;
    ui.error.replaceChildren();
    delete ui.error.dataset.code;
    delete ui.error.dataset.status;
  }

  // ---- API key -----------------------------------------------------------------------------------

  ui.key.value = sessionStorage.getItem(KEY_STORE) || "";
  ui.key.addEventListener("input", () => {
    const key = ui.key.value.trim();
    if (key) sessionStorage.setItem(KEY_STORE, key);
    else sessionStorage.removeItem(KEY_STORE);
  });
  ui.forget.addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORE);
    ui.key.value = "";
    ui.key.focus();
  });

  function authHeaders(extra) {
    return { Authorization: `Bearer ${ui.key.value.trim()}`, ...(extra || {}) };
  }

  // ---- video preview -----------------------------------------------------------------------------

  ui.video.addEventListener("change", () => {
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = null;
    const file = ui.video.files[0];
    if (!file) {
      ui.preview.removeAttribute("src");
      ui.preview.hidden = true;
      return;
    }
    previewUrl = URL.createObjectURL(file);
    ui.preview.src = previewUrl;
    ui.preview.hidden = false;
  });

  // ---- job display -------------------------------------------------------------------------------

  function setMode(mode) {
    ui.mode.dataset.mode = mode;
    ui.mode.textContent = mode === "events" ? "(live)" : mode === "polling" ? "(polling)" : "";
  }

  function setStatus(status) {
    ui.status.textContent = status;
    ui.status.dataset.status = status;
    ui.cancel.hidden = !(current && CANCELABLE.has(status));
  }

  function renderProgress(p) {
    if (!p || !p.total) return;
    ui.progress.max = p.total;
    ui.progress.value = Math.min(p.step, p.total);
    const stage = p.stage && p.stage !== "sampling" ? `${p.stage}: ` : "";
    ui.progressText.textContent = `${stage}sampling step ${p.step} of ${p.total}`;
  }

  function renderJob(job) {
    setStatus(job.status);
    if (job.progress) renderProgress(job.progress);
  }

  function logEvent(kind, text) {
    const item = document.createElement("li");
    item.dataset.kind = kind;
    item.textContent = `${new Date().toLocaleTimeString()} ${kind}: ${text}`;
    ui.events.append(item);
    while (ui.events.childElementCount > MAX_EVENT_LINES) ui.events.firstElementChild.remove();
  }

  function resetJob() {
    if (current) {
      current.controller.abort();
      current.urls.forEach((url) => URL.revokeObjectURL(url));
    }
    current = null;
    for (const media of [ui.audio, ui.dubbed]) {
      media.removeAttribute("src");
      media.load();
    }
    for (const link of [ui.audioDownload, ui.videoDownload]) link.removeAttribute("href");
    ui.result.hidden = true;
    ui.videoResult.hidden = true;
    ui.progress.value = 0;
    ui.progress.max = 1;
    ui.progressText.textContent = "";
    ui.events.replaceChildren();
    setMode("");
  }

  // ---- Server-Sent Events over fetch ---------------------------------------------------------------

  // An incremental parser of the text/event-stream format (WHATWG HTML, "Server-sent events").
  class SseParser {
    constructor() {
      this.buffer = "";
      this.data = [];
      this.event = "";
      this.lastId = null;
      this.retry = null;
    }

    push(chunk) {
      let text = this.buffer + chunk;
      // A chunk may end between the \r and \n of one line break.
      const pendingCR = text.endsWith("\r");
      if (pendingCR) text = text.slice(0, -1);
      const lines = text.split(/\r\n|\n|\r/);
      this.buffer = lines.pop() + (pendingCR ? "\r" : "");
      const out = [];
      for (const line of lines) {
        if (line === "") {
          if (this.data.length) {
            out.push({ event: this.event || "message", data: this.data.join("\n"), id: this.lastId });
          }
          this.data = [];
          this.event = "";
          continue;
        }
        if (line.startsWith(":")) continue; // a comment (the server's keepalive)
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "data") this.data.push(value);
        else if (field === "event") this.event = value;
        else if (field === "id" && !value.includes("\0")) this.lastId = value;
        else if (field === "retry" && /^\d+$/.test(value)) this.retry = Number(value);
      }
      return out;
    }
  }

  function sleep(ms, signal) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(resolve, ms);
      signal.addEventListener(
        "abort",
        () => {
          clearTimeout(timer);
          reject(new DOMException("aborted", "AbortError"));
        },
        { once: true },
      );
    });
  }

  const jobPath = (job, tail) => `v1/jobs/${encodeURIComponent(job.id)}${tail || ""}`;

  // Follows the job's event stream, resuming with Last-Event-ID after a cut; polls when the stream
  // cannot be had. Resolves once the job ended and its result is shown.
  async function follow(job) {
    const signal = job.controller.signal;
    let cuts = 0;
    while (!signal.aborted) {
      const headers = authHeaders({ Accept: "text/event-stream" });
      if (job.lastEventId) headers["Last-Event-ID"] = job.lastEventId;
      let resp = null;
      try {
        resp = await fetch(jobPath(job, "/events"), { headers, signal, cache: "no-store" });
      } catch (err) {
        if (signal.aborted) return;
      }
      if (resp && (resp.status === 401 || resp.status === 404)) throw await errorOf(resp);
      const type = resp ? resp.headers.get("Content-Type") || "" : "";
      if (!resp || !resp.ok || !resp.body || !type.startsWith("text/event-stream")) {
        return poll(job);
      }
      setMode("events");
      // Errors of the job's own handling (a result that cannot be fetched) end here; a cut stream does not.
      const outcome = await readEvents(job, resp.body);
      if (outcome.ended) return;
      // The stream was cut before the job ended: resume after the last event seen.
      cuts = outcome.seen ? 1 : cuts + 1;
      if (cuts > 5) return poll(job);
      logEvent("reconnect", `resuming after ${job.lastEventId || "the start"}`);
      await sleep(job.retryMs, signal);
    }
  }

  async function readEvents(job, body) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    const parser = new SseParser();
    let seen = 0;
    try {
      for (;;) {
        let chunk;
        try {
          chunk = await reader.read();
        } catch (err) {
          if (isAbort(err)) throw err;
          return { ended: false, seen }; // the connection broke: resume
        }
        const { value, done } = chunk;
        if (done) return { ended: false, seen };
        for (const ev of parser.push(value)) {
          seen += 1;
          if (ev.id) job.lastEventId = ev.id;
          if (await handleEvent(job, ev)) return { ended: true, seen };
        }
        if (parser.retry !== null) job.retryMs = parser.retry;
      }
    } finally {
      reader.cancel().catch(() => {});
    }
  }

  async function handleEvent(job, ev) {
    let data;
    try {
      data = JSON.parse(ev.data);
    } catch (_) {
      return false;
    }
    if (ev.event === "progress") {
      renderProgress(data);
      logEvent("progress", `step ${data.step} of ${data.total}`);
      return false;
    }
    if (ev.event !== "status") return false;
    logEvent("status", data.status);
    setStatus(data.status);
    if (!TERMINAL.has(data.status)) return false;
    const full = data.job || (await (await api(jobPath(job), { headers: authHeaders() })).json());
    await finish(job, full);
    return true;
  }

  // The fallback: GET the job until it ends, waiting as long as Retry-After asks.
  async function poll(job) {
    const signal = job.controller.signal;
    setMode("polling");
    for (;;) {
      let wait;
      let data = null;
      try {
        const resp = await api(jobPath(job), { headers: authHeaders(), signal });
        data = await resp.json();
        wait = retryAfterSeconds(resp, 1);
      } catch (err) {
        if (signal.aborted) return;
        // Only a busy or unreachable server is worth another try; 401, 404 and the like are final.
        const transient = err instanceof ApiError && (err.code === "network_error" || [429, 502, 503, 504].includes(err.status));
        if (!transient) throw err;
        wait = err.retryAfter !== undefined ? err.retryAfter : 2;
        logEvent("retry", `${err.code}: next try in ${wait} s`);
      }
      if (data) {
        renderJob(data);
        if (TERMINAL.has(data.status)) {
          await finish(job, data);
          return;
        }
      }
      await sleep(Math.max(0.2, wait) * 1000, signal);
    }
  }

  // ---- results -----------------------------------------------------------------------------------

  function sizeText(bytes) {
    if (bytes >= 1e6) return `${(bytes / 1e6).toFixed(1)} MB`;
    return `${Math.max(1, Math.round(bytes / 1e3))} kB`;
  }

  // Fetches a result with the key and offers it to the player and to the download link.
  async function present(job, tail, media, link, filename, label) {
    const resp = await api(jobPath(job, tail), {
      headers: authHeaders(),
      signal: job.controller.signal,
      redirect: "manual",
    });
    const blob = await resp.blob();
    const url = URL.createObjectURL(blob);
    job.urls.push(url);
    media.src = url;
    link.href = url;
    link.download = filename;
    link.dataset.bytes = String(blob.size);
    link.textContent = `${label} (${sizeText(blob.size)})`;
  }

  async function finish(job, data) {
    renderJob(data);
    ui.cancel.hidden = true;
    if (data.status === "succeeded") {
      if (data.progress) renderProgress(data.progress);
      const parts = [];
      if (data.audio_seconds != null) parts.push(`${data.audio_seconds.toFixed(1)} s of speech`);
      if (data.video_seconds != null) parts.push(`from ${data.video_seconds.toFixed(1)} s of video`);
      if (data.sampling) parts.push(`(${data.sampling.sampler}, ${data.sampling.steps} steps)`);
      ui.resultInfo.textContent = parts.join(" ");
      await present(job, "/audio", ui.audio, ui.audioDownload, `${job.id}.wav`, "Download WAV");
      if (data.output === "mp4") {
        await present(job, "/video", ui.dubbed, ui.videoDownload, `${job.id}.mp4`, "Download MP4");
        ui.videoResult.hidden = false;
      }
      ui.result.hidden = false;
    } else if (data.status === "failed") {
      const error = data.error || {};
      showError(new ApiError(0, error.code || "job_failed", `The job failed: ${error.message || "no reason given"}`));
    } else if (data.status === "expired") {
      showError(new ApiError(0, "result_expired", "The job's result expired and was removed."));
    }
  }

  // ---- submit and cancel -------------------------------------------------------------------------

  function formValue(name) {
    const field = ui.form.elements.namedItem(name);
    return field ? String(field.value).trim() : "";
  }

  ui.form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearError();
    const key = ui.key.value.trim();
    if (!key) {
      showError(new ApiError(0, "no_api_key", "Paste your API key first."));
      ui.key.focus();
      return;
    }
    if (!/^[\x21-\x7e]+$/.test(key)) {
      showError(new ApiError(0, "bad_api_key", "An API key is printable ASCII without spaces."));
      ui.key.focus();
      return;
    }
    const file = ui.video.files[0];
    if (!file) {
      showError(new ApiError(0, "no_video", "Choose a video first."));
      ui.video.focus();
      return;
    }
    resetJob();
    const body = new FormData();
    body.append("video", file, file.name);
    for (const name of FIELDS) {
      const value = formValue(name);
      if (value !== "") body.append(name, value);
    }
    ui.submit.disabled = true;
    ui.job.hidden = false;
    ui.jobId.textContent = "—";
    setStatus("uploading");
    try {
      const resp = await api("v1/synthesize", { method: "POST", headers: authHeaders(), body });
      const data = await resp.json();
      const job = {
        id: data.id,
        output: data.output,
        controller: new AbortController(),
        lastEventId: null,
        retryMs: Math.max(1, retryAfterSeconds(resp, 1)) * 1000,
        urls: [],
      };
      current = job;
      ui.jobId.textContent = job.id;
      logEvent("submitted", `${file.name} (${(file.size / 1e6).toFixed(2)} MB)`);
      renderJob(data);
      follow(job).catch((err) => {
        if (current === job) showError(err);
      });
    } catch (err) {
      ui.job.hidden = true;
      showError(err);
    } finally {
      ui.submit.disabled = false;
    }
  });

  ui.cancel.addEventListener("click", async () => {
    const job = current;
    if (!job) return;
    ui.cancel.disabled = true;
    try {
      const resp = await api(jobPath(job, "/cancel"), { method: "POST", headers: authHeaders() });
      renderJob(await resp.json());
    } catch (err) {
      showError(err);
    } finally {
      ui.cancel.disabled = false;
    }
  });
})();
