/* lensflow gallery: the read service's web UI (docs/api.md). Plain JavaScript, no dependencies.
 *
 * Every /v1 call carries "Authorization: Bearer <token>" (the token lives in sessionStorage). <img src>
 * and EventSource cannot send that header, so images are fetched into blob: URLs and /v1/events is
 * read with fetch() and a streaming parser of the Server-Sent Events format, which reconnects with
 * Last-Event-ID (and a growing delay) after a drop.
 *
 * Routes (location.hash): #/ (your photos), #/search/<text|tag|person>/<query>, #/image/<id>.
 */
"use strict";

(() => {
  const TOKEN_KEY = "lensflow.token";
  const USER_KEY = "lensflow.user";
  const PAGE = 24;             // results a page
  const IMAGE_FETCHES = 4;     // blob fetches at once (the API caps a user's requests in flight)
  const BLOB_CACHE = 300;      // blob: URLs kept (least recently used go first)
  const SSE_STALL_MS = 45000;  // the API sends a comment every 15 s: this long silent means a dead stream
  const SSE_MAX_DELAY_MS = 30000;
  const MODES = ["text", "tag", "person"];

  const $ = (sel, root = document) => root.querySelector(sel);
  const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k === "dataset") Object.assign(node.dataset, v);
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  const state = {
    token: sessionStorage.getItem(TOKEN_KEY),
    user: sessionStorage.getItem(USER_KEY),
    home: null,         // the grid's listing: {key, mode, q, cursor, done, loading, generation}
    generation: 0,
    shown: new Map(),   // image id -> grid <li>
    imageId: null,      // the image page's image
    fromGrid: false,    // the image page was opened from the grid (Escape goes back in history)
    events: null,
  };

  // -- the service is busy ------------------------------------------------------------------------

  const banner = $("#banner");
  let busyTimer = null;
  function busy(message) {
    banner.textContent = message;
    banner.hidden = false;
    clearTimeout(busyTimer);
  }
  function unbusy() {
    if (banner.hidden) return;
    clearTimeout(busyTimer);
    busyTimer = setTimeout(() => { banner.hidden = true; }, 400);
  }

  // -- the API ------------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message, parameter) {
      super(message);
      this.status = status;
      this.parameter = parameter || null;
    }
  }

  function authHeaders() {
    return state.token ? { Authorization: `Bearer ${state.token}` } : {};
  }

  /** Seconds of a Retry-After header (a number or an HTTP date) in ms, or null. */
  function retryAfterMs(value) {
    if (!value) return null;
    const n = Number(value);
    if (Number.isFinite(n)) return Math.min(60, Math.max(0, n)) * 1000;
    const at = Date.parse(value);
    return Number.isFinite(at) ? Math.min(60000, Math.max(0, at - Date.now())) : null;
  }

  function backoffMs(attempt) {
    return Math.min(15000, 500 * 2 ** attempt) * (0.75 + Math.random() / 2);
  }

  /** The error of a JSON body ({"error", "parameter"}) or the status line. */
  async function errorOf(res) {
    let text = "";
    try { text = await res.text(); } catch { /* the body is gone */ }
    try {
      const body = JSON.parse(text);
      if (body && typeof body.error === "string") return { message: body.error, parameter: body.parameter };
      if (body && typeof body.detail === "string") return { message: body.detail };
    } catch { /* not JSON */ }
    return { message: text.trim().slice(0, 300) || `HTTP ${res.status} ${res.statusText}`.trim() };
  }

  /** fetch() with the token; 503 and 429 are retried after Retry-After (the banner says so), 401
   * signs out. Answers the Response (2xx) or throws ApiError. */
  async function api(path, { method = "GET", body, headers = {}, signal, retries = 6 } = {}) {
    for (let attempt = 0; ; attempt++) {
      let res;
      try {
        res = await fetch(path, { method, body, signal, cache: "no-store", headers: { ...authHeaders(), ...headers } });
      } catch (exc) {
        if (exc.name === "AbortError") throw exc;
        if (attempt >= retries) { unbusy(); throw new ApiError(0, "Cannot reach the service."); }
        busy("Cannot reach the service, retrying…");
        await sleep(backoffMs(attempt));
        continue;
      }
      if (res.status === 401) {
        const { message } = await errorOf(res);
        unauthorized(message);
        throw new ApiError(401, message);
      }
      if ((res.status === 503 || res.status === 429) && attempt < retries) {
        busy(res.status === 503 ? "The service is busy, retrying…" : "Too many requests at once, retrying…");
        await sleep(retryAfterMs(res.headers.get("Retry-After")) ?? backoffMs(attempt));
        continue;
      }
      unbusy();
      if (!res.ok) {
        const { message, parameter } = await errorOf(res);
        throw new ApiError(res.status, message, parameter);
      }
      return res;
    }
  }

  async function apiJson(path, opts) {
    return (await api(path, opts)).json();
  }

  // -- images as blob: URLs -------------------------------------------------------------------------

  const blobs = new Map();  // path -> Promise<blob: URL> (insertion order = recency)
  const waiting = [];
  let fetching = 0;

  function pump() {
    while (fetching < IMAGE_FETCHES && waiting.length) {
      const job = waiting.shift();
      fetching++;
      api(job.path, { retries: 4 })
        .then((res) => res.blob())
        .then((blob) => job.resolve(URL.createObjectURL(blob)), job.reject)
        .finally(() => { fetching--; pump(); });
    }
  }

  /** A blob: URL of an image the API serves (cached; at most IMAGE_FETCHES fetches at once). */
  function imageUrl(path) {
    let p = blobs.get(path);
    if (p) {
      blobs.delete(path);
      blobs.set(path, p);
      return p;
    }
    p = new Promise((resolve, reject) => { waiting.push({ path, resolve, reject }); pump(); });
    p.catch(() => blobs.delete(path));
    blobs.set(path, p);
    while (blobs.size > BLOB_CACHE) {
      const [oldest, op] = blobs.entries().next().value;
      blobs.delete(oldest);
      op.then((u) => setTimeout(() => URL.revokeObjectURL(u), 5000), () => {});
    }
    return p;
  }

  function forgetImage(path) {
    const p = blobs.get(path);
    if (!p) return;
    blobs.delete(path);
    p.then((u) => setTimeout(() => URL.revokeObjectURL(u), 5000), () => {});
  }

  function clearBlobs() {
    for (const p of blobs.values()) p.then((u) => URL.revokeObjectURL(u), () => {});
    blobs.clear();
    waiting.length = 0;
  }

  const derivative = (id) => `/v1/images/${encodeURIComponent(id)}/derivative.jpg`;

  // thumbnails load when they come near the viewport
  const thumbObserver = new IntersectionObserver((entries) => {
    for (const e of entries) {
      if (!e.isIntersecting) continue;
      thumbObserver.unobserve(e.target);
      loadThumb(e.target);
    }
  }, { rootMargin: "400px" });

  function loadThumb(img) {
    const id = img.dataset.imageId;
    const thumb = img.closest(".thumb");
    imageUrl(derivative(id)).then((url) => {
      img.src = url;
      thumb.classList.remove("pending");
    }, (exc) => {
      if (exc.status === 401) return;
      thumb.classList.remove("pending");
      thumb.classList.add("broken");
      thumb.dataset.note = exc.status === 404 ? "No preview" : "Preview failed";
    });
  }

  // -- signing in and out ---------------------------------------------------------------------------

  function userOfToken(token) {
    try {
      const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      const bytes = Uint8Array.from(atob(payload), (c) => c.charCodeAt(0));
      const claims = JSON.parse(new TextDecoder().decode(bytes));
      return typeof claims.sub === "string" ? claims.sub : null;
    } catch {
      return null;
    }
  }

  function signIn(token, user) {
    state.token = token.trim().replace(/^Bearer\s+/i, "");
    state.user = user || userOfToken(state.token) || "";
    sessionStorage.setItem(TOKEN_KEY, state.token);
    sessionStorage.setItem(USER_KEY, state.user);
    $("#token-input").value = "";
    showSigninMessage(null);
    startEvents();
    if (!location.hash || location.hash === "#" || location.hash.startsWith("#/signin")) location.hash = "#/";
    else route();
  }

  function signOut(message) {
    stopEvents();
    state.token = null;
    state.user = null;
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.removeItem(USER_KEY);
    resetGrid();
    state.home = null;
    $("#uploads").replaceChildren();
    $("#uploads").hidden = true;
    clearBlobs();
    showSigninMessage(message || null);
    route();
  }

  function unauthorized(message) {
    if (!state.token) return;
    signOut(`Please sign in again: ${message || "the service refused the token."}`);
  }

  function showSigninMessage(message) {
    const p = $("#signin-message");
    p.textContent = message || "";
    p.hidden = !message;
  }

  $("#token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const token = $("#token-input").value.trim();
    if (!token) return;
    signIn(token, null);
  });

  $("#dev-login").addEventListener("click", async () => {
    const button = $("#dev-login");
    button.disabled = true;
    showSigninMessage(null);
    try {
      const res = await fetch("/v1/dev/login", { method: "POST", cache: "no-store" });
      if (res.status === 404) {
        $("#dev-login-box").hidden = true;
        sessionStorage.setItem("lensflow.nodev", "1");
        showSigninMessage("Development login is not offered by this service: paste a token.");
        return;
      }
      if (!res.ok) {
        showSigninMessage(`Development login failed: ${(await errorOf(res)).message}`);
        return;
      }
      const body = await res.json();
      signIn(body.token, body.user);
    } catch {
      showSigninMessage("Cannot reach the service.");
    } finally {
      button.disabled = false;
    }
  });

  $("#sign-out").addEventListener("click", () => signOut(null));

  // -- live updates: /v1/events -------------------------------------------------------------------

  /** The SSE stream of /v1/events over fetch(), with the format's parser (event, data, id, retry
   * fields; comment lines start with ':'), and reconnection with Last-Event-ID. */
  class EventStream {
    constructor(onEvent, onState) {
      this.onEvent = onEvent;
      this.onState = onState;
      this.lastEventId = "";
      this.retryMs = 1000;
      this.failures = 0;
      this.stopped = true;
      this.controller = null;
    }

    start() {
      if (!this.stopped) return;
      this.stopped = false;
      this.run();
    }

    stop() {
      this.stopped = true;
      if (this.controller) this.controller.abort();
      if (this.wake) this.wake();
    }

    async run() {
      while (!this.stopped) {
        this.onState(this.failures ? "reconnecting" : "connecting");
        const controller = new AbortController();
        this.controller = controller;
        const headers = { ...authHeaders(), Accept: "text/event-stream" };
        if (this.lastEventId) headers["Last-Event-ID"] = this.lastEventId;
        let delay = null;
        try {
          const res = await fetch("/v1/events", { headers, signal: controller.signal, cache: "no-store" });
          if (res.status === 401) {
            const { message } = await errorOf(res);
            this.stopped = true;
            unauthorized(message);
            return;
          }
          if (!res.ok || !res.body) {
            delay = retryAfterMs(res.headers.get("Retry-After"));
            throw new Error(`HTTP ${res.status}`);
          }
          this.onState("live");
          const delivered = await this.read(res.body, controller);
          if (delivered) this.failures = 0;
        } catch (exc) {
          if (this.stopped) return;
        }
        if (this.stopped) return;
        // after a drop: wait retry (the server's `retry:` or 1 s), doubling with each failure, jittered
        const wait = delay ?? Math.min(SSE_MAX_DELAY_MS, this.retryMs * 2 ** this.failures) * (0.8 + Math.random() * 0.4);
        this.failures = Math.min(this.failures + 1, 10);
        this.onState("reconnecting");
        await new Promise((resolve) => { this.wake = resolve; setTimeout(resolve, wait); });
        this.wake = null;
      }
    }

    /** Read one response to its end; answers whether any event or comment came. */
    async read(body, controller) {
      const reader = body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      let received = false;
      let watchdog = null;
      const arm = () => {
        clearTimeout(watchdog);
        watchdog = setTimeout(() => controller.abort(), SSE_STALL_MS);
      };
      const ev = { type: "", data: "", id: this.lastEventId };
      arm();
      try {
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          arm();
          buffer += value;
          for (;;) {
            const m = /\r\n|\r|\n/.exec(buffer);
            if (!m) break;
            if (m[0] === "\r" && m.index === buffer.length - 1) break;  // maybe the first half of \r\n
            const line = buffer.slice(0, m.index);
            buffer = buffer.slice(m.index + m[0].length);
            if (this.line(line, ev)) received = true;
          }
        }
      } finally {
        clearTimeout(watchdog);
        try { reader.releaseLock(); } catch { /* already released */ }
      }
      return received;
    }

    /** One line of the stream (https://html.spec.whatwg.org/multipage/server-sent-events.html). */
    line(line, ev) {
      if (line === "") {  // dispatch
        this.lastEventId = ev.id;
        if (ev.data === "") { ev.type = ""; return false; }
        const data = ev.data.endsWith("\n") ? ev.data.slice(0, -1) : ev.data;
        const type = ev.type || "message";
        ev.type = "";
        ev.data = "";
        try {
          this.onEvent(type, data, this.lastEventId);
        } catch (exc) {
          console.error("lensflow: event handler failed", exc);
        }
        return true;
      }
      if (line.startsWith(":")) return true;  // a comment: the keep-alive
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") ev.type = value;
      else if (field === "data") ev.data += value + "\n";
      else if (field === "id") { if (!value.includes("\0")) ev.id = value; }
      else if (field === "retry") { if (/^\d+$/.test(value)) this.retryMs = Math.max(100, Number(value)); }
      return false;
    }
  }

  function setLiveState(s) {
    const node = $("#live-state");
    node.dataset.state = s;
    node.textContent = s === "live" ? "Live" : s === "reconnecting" ? "Reconnecting…" : "Connecting…";
    node.title = s === "live" ? "New photos appear here as they are analysed" : "Live updates are reconnecting";
  }

  function startEvents() {
    stopEvents();
    state.events = new EventStream((type, data) => {
      if (type !== "analyzed") return;
      let msg;
      try { msg = JSON.parse(data); } catch { return; }
      if (msg && msg.image_id) onAnalyzed(msg);
    }, setLiveState);
    state.events.start();
  }

  function stopEvents() {
    if (state.events) state.events.stop();
    state.events = null;
  }

  function onAnalyzed(msg) {
    const id = msg.image_id;
    forgetImage(derivative(id));  // a new analysis may have a new derivative
    // the upload tray
    for (const item of $$("#uploads li")) {
      if (item.dataset.imageId !== id) continue;
      if (msg.status === "failed") setUpload(item, "failed", `Analysis failed${msg.error ? `: ${msg.error}` : ""}`);
      else setUpload(item, "analysed", "Analysed");
    }
    // the grid: your photos, newest analysed first
    const existing = state.shown.get(id);
    if (existing) {
      updateTile(existing, msg);
    } else if (state.home && state.home.mode === null && state.home.started) {
      const tile = tile_(msg);
      tile.classList.add("arrived");
      $("#grid").prepend(tile);
      state.shown.set(id, tile);
      showEmpty(false);
    }
    // the image page, if it waits for this one
    if (state.imageId === id && !$("#view-image").hidden && $("#view-image").dataset.status === "processing") {
      showImage(id);
    }
  }

  // -- the grid -----------------------------------------------------------------------------------

  function tile_(item) {
    const id = item.image_id || item.id;
    const caption = item.caption || (item.status === "failed" ? "Analysis failed" : item.status === "processing" ? "Analysing…" : "");
    // the caption under it names the link; a photo without one is named by its alt text
    const img = el("img", { alt: caption ? "" : "Untitled photo", dataset: { imageId: id }, decoding: "async" });
    const meta = [];
    if (item.taken_at) meta.push(formatDate(item.taken_at, true));
    if (typeof item.score === "number" && state.home && state.home.mode === "text") meta.push(`score ${item.score.toFixed(2)}`);
    const li = el("li", { class: "tile", dataset: { imageId: id } },
      el("a", { class: "tile-link", href: `#/image/${encodeURIComponent(id)}` },
        el("div", { class: "thumb pending" }, img),
        el("span", { class: "tile-caption" }, caption || el("span", { class: "muted", "aria-hidden": "true" }, "No caption")),
        meta.length ? el("span", { class: "tile-meta" }, meta.join(" · ")) : null));
    if (item.status && item.status !== "complete") li.dataset.status = item.status;
    thumbObserver.observe(img);
    return li;
  }

  function updateTile(li, msg) {
    const caption = $(".tile-caption", li);
    if (msg.caption) {
      caption.textContent = msg.caption;
      $("img", li).alt = "";
    }
    if (msg.status) li.dataset.status = msg.status;
    const img = $("img", li);
    $(".thumb", li).classList.remove("broken");
    thumbObserver.observe(img);
  }

  function resetGrid() {
    state.generation++;
    for (const img of $$("#grid img")) thumbObserver.unobserve(img);
    $("#grid").replaceChildren();
    state.shown.clear();
    showEmpty(false);
    $("#load-more").hidden = true;
    $("#grid-error").hidden = true;
    $("#grid-loading").hidden = true;
  }

  function showEmpty(on, text) {
    $("#empty").hidden = !on;
    if (text) $("#empty-text").textContent = text;
    $("#empty [data-pick]").hidden = !(state.home && state.home.mode === null);
  }

  function listingKey(mode, q) {
    return mode ? `${mode}:${q}` : "mine";
  }

  function openListing(mode, q) {
    const key = listingKey(mode, q);
    $("#search-mode").value = mode || $("#search-mode").value;
    $("#search-q").value = q || "";
    $("#search-clear").hidden = !mode;
    $("#home-title").textContent = mode ? `${mode === "text" ? "Photos matching" : mode === "tag" ? "Tagged" : "Photos of"} “${q}”` : "Your photos";
    if (state.home && state.home.key === key) return;  // kept as it was (scroll position, loaded pages)
    resetGrid();
    state.home = { key, mode, q, cursor: null, done: false, loading: false, started: false, generation: state.generation };
    loadMore();
  }

  async function loadMore() {
    const h = state.home;
    if (!h || h.loading || h.done || !state.token) return;
    h.loading = true;
    const gen = h.generation;
    $("#grid-loading").hidden = false;
    $("#grid").setAttribute("aria-busy", "true");
    $("#grid-error").hidden = true;
    $("#load-more").hidden = true;
    const params = new URLSearchParams({ limit: String(PAGE) });
    if (h.cursor) params.set("cursor", h.cursor);
    let path = "/v1/images";
    if (h.mode) {
      params.set(h.mode, h.q);
      path = "/v1/search";
    }
    try {
      const body = await apiJson(`${path}?${params}`);
      if (gen !== state.generation) return;
      h.started = true;
      const results = Array.isArray(body.results) ? body.results : Array.isArray(body.images) ? body.images : [];
      const grid = $("#grid");
      for (const item of results) {
        const id = item && (item.image_id || item.id);
        if (!id || state.shown.has(id)) continue;
        const li = tile_(item);
        grid.append(li);
        state.shown.set(id, li);
      }
      h.cursor = body.next_cursor || null;
      h.done = !h.cursor;
      if (!state.shown.size) {
        showEmpty(true, h.mode ? `Nothing found for “${h.q}”.` : "No images yet — drop photos here");
      }
    } catch (exc) {
      if (gen !== state.generation || exc.status === 401) return;
      const p = $("#grid-error");
      p.replaceChildren(exc.parameter ? `${exc.parameter}: ${exc.message}` : exc.message || "Loading failed.", " ",
        el("button", { type: "button", class: "btn small", onclick: () => loadMore() }, "Retry"));
      p.hidden = false;
    } finally {
      if (gen === state.generation) {
        h.loading = false;
        $("#grid-loading").hidden = true;
        $("#grid").setAttribute("aria-busy", "false");
        $("#load-more").hidden = h.done || !$("#grid-error").hidden;
        // a page that does not fill the screen: the sentinel stays visible, so ask for the next one
        if (!h.done && $("#grid-error").hidden) requestAnimationFrame(checkSentinel);
      }
    }
  }

  $("#load-more").addEventListener("click", () => loadMore());

  function checkSentinel() {
    if ($("#view-home").hidden) return;
    const r = $("#sentinel").getBoundingClientRect();
    if (r.top < window.innerHeight + 600) loadMore();
  }
  new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting) && !$("#view-home").hidden) loadMore();
  }, { rootMargin: "600px" }).observe($("#sentinel"));

  $("#search").addEventListener("submit", (e) => {
    e.preventDefault();
    const mode = $("#search-mode").value;
    const q = $("#search-q").value.trim();
    location.hash = q ? `#/search/${mode}/${encodeURIComponent(q)}` : "#/";
  });
  $("#search-clear").addEventListener("click", () => {
    $("#search-q").value = "";
    location.hash = "#/";
  });

  // -- uploads ------------------------------------------------------------------------------------

  const TYPES = { jpg: "image/jpeg", jpeg: "image/jpeg", png: "image/png", webp: "image/webp", gif: "image/gif",
    tif: "image/tiff", tiff: "image/tiff", bmp: "image/bmp", heic: "image/heic", heif: "image/heif", avif: "image/avif" };
  const uploadQueue = [];
  let uploading = 0;

  function uploadFiles(files) {
    if (!state.token) return;
    const list = $("#uploads");
    for (const file of files) {
      const progress = el("progress", { max: "100", value: "0", "aria-label": `Upload of ${file.name}` });
      const item = el("li", { class: "upload", dataset: { state: "queued" } },
        el("span", { class: "upload-name", title: file.name }, file.name),
        progress,
        el("span", { class: "upload-state" }, "Waiting…"),
        el("button", { type: "button", class: "btn small ghost", "aria-label": `Dismiss ${file.name}`,
          onclick: () => { item.remove(); list.hidden = !list.children.length; } }, "✕"));
      list.append(item);
      uploadQueue.push({ file, item });
    }
    list.hidden = !list.children.length;
    pumpUploads();
  }

  function pumpUploads() {
    while (uploading < 2 && uploadQueue.length) {
      const { file, item } = uploadQueue.shift();
      uploading++;
      uploadOne(file, item).finally(() => { uploading--; pumpUploads(); });
    }
  }

  function setUpload(item, s, text, link) {
    item.dataset.state = s;
    const label = $(".upload-state", item);
    label.replaceChildren(text);
    if (link) label.append(" ", el("a", { href: link }, "Open"));
    const progress = $("progress", item);
    if (s === "submitted") progress.removeAttribute("value");  // indeterminate while analysing
    if (s === "analysed" || s === "failed") progress.classList.add("done");
    label.classList.toggle("ok", s === "analysed");
    label.classList.toggle("error", s === "failed");
  }

  function typeOf(file) {
    if (file.type) return file.type;
    const ext = (file.name.split(".").pop() || "").toLowerCase();
    return TYPES[ext] || "application/octet-stream";
  }

  /** POST /v1/images with XMLHttpRequest: fetch() reports no upload progress. */
  async function uploadOne(file, item, attempt = 0) {
    setUpload(item, "uploading", "Uploading…");
    const res = await new Promise((resolve) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", "/v1/images");
      for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
      xhr.setRequestHeader("Content-Type", typeOf(file));
      xhr.upload.onprogress = (e) => {
        if (e.lengthComputable) {
          $("progress", item).value = Math.round((100 * e.loaded) / e.total);
          $(".upload-state", item).textContent = `Uploading ${Math.round((100 * e.loaded) / e.total)}%`;
        }
      };
      xhr.onload = () => resolve({ status: xhr.status, text: xhr.responseText, retryAfter: xhr.getResponseHeader("Retry-After") });
      xhr.onerror = () => resolve({ status: 0, text: "" });
      xhr.send(file);
    });
    let body = null;
    try { body = JSON.parse(res.text); } catch { /* not JSON */ }
    if (res.status >= 200 && res.status < 300 && body && body.image_id) {
      item.dataset.imageId = body.image_id;
      setUpload(item, "submitted", "Analysing…", `#/image/${encodeURIComponent(body.image_id)}`);
      return;
    }
    if (res.status === 401) {
      unauthorized(body && body.error);
      return;
    }
    if ((res.status === 503 || res.status === 429 || res.status === 0) && attempt < 5) {
      setUpload(item, "retrying", res.status === 0 ? "Cannot reach the service, retrying…"
        : res.status === 503 ? "The service is busy, retrying…" : "Too many uploads at once, retrying…");
      await sleep(retryAfterMs(res.retryAfter) ?? backoffMs(attempt));
      return uploadOne(file, item, attempt + 1);
    }
    const why = (body && body.error) || (res.status === 0 ? "cannot reach the service" : res.status === 413 ? "too large"
      : res.status === 415 ? "not an image" : `HTTP ${res.status}`);
    setUpload(item, "failed", `Not uploaded: ${why}`);
  }

  $("#file-picker").addEventListener("change", (e) => {
    uploadFiles(Array.from(e.target.files || []));
    e.target.value = "";
  });
  for (const b of $$("[data-pick]")) b.addEventListener("click", () => $("#file-picker").click());

  // drag and drop anywhere on the page
  let dragDepth = 0;
  const hasFiles = (e) => e.dataTransfer && Array.from(e.dataTransfer.types || []).includes("Files");
  document.addEventListener("dragenter", (e) => {
    if (!state.token || !hasFiles(e)) return;
    e.preventDefault();
    dragDepth++;
    $("#drop").hidden = false;
  });
  document.addEventListener("dragover", (e) => {
    if (!state.token || !hasFiles(e)) return;
    e.preventDefault();
    e.dataTransfer.dropEffect = "copy";
  });
  document.addEventListener("dragleave", (e) => {
    if (!state.token || !hasFiles(e)) return;
    dragDepth = Math.max(0, dragDepth - 1);
    if (!dragDepth) $("#drop").hidden = true;
  });
  document.addEventListener("drop", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    dragDepth = 0;
    $("#drop").hidden = true;
    if (!state.token) return;
    uploadFiles(Array.from(e.dataTransfer.files || []));
    if (!$("#view-image").hidden) location.hash = "#/";
  });

  // -- one image ----------------------------------------------------------------------------------

  const pct = (v) => `${Math.max(0, Math.min(100, v)).toFixed(3)}%`;
  const percent = (v) => `${Math.round(v * 100)}%`;

  function formatDate(value, short = false) {
    if (!value) return "";
    const d = new Date(value);
    if (Number.isNaN(d.getTime())) return String(value);
    return short ? d.toLocaleDateString() : d.toLocaleString();
  }

  function section(title, ...content) {
    const body = content.flat(Infinity).filter(Boolean);
    if (!body.length) return null;
    return el("section", { class: "facet" }, el("h2", {}, title), ...body);
  }

  function dl(rows) {
    const items = rows.filter(([, v]) => v !== null && v !== undefined && v !== "");
    if (!items.length) return null;
    return el("dl", { class: "kv" }, items.map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  }

  function searchLink(mode, q, text, title) {
    return el("a", { class: "chip", href: `#/search/${mode}/${encodeURIComponent(q)}`, title: title || null }, text || q);
  }

  /** The boxes of an analysis: [{kind, label, text, box}], in the original's (oriented) pixels. */
  function boxesOf(a) {
    const out = [];
    for (const o of a.objects || []) {
      if (o.box) out.push({ kind: "object", label: o.label, text: `${o.label} ${percent(o.confidence)}`, box: o.box, confidence: o.confidence });
    }
    for (const f of a.faces || []) {
      if (f.box) {
        const name = f.person_name || "unknown";
        out.push({ kind: "face", label: name, text: name, box: f.box, confidence: f.confidence, person: f.person_id });
      }
    }
    for (const ln of (a.text && a.text.lines) || []) {
      if (ln.box) out.push({ kind: "text", label: ln.text, text: ln.text.length > 40 ? `${ln.text.slice(0, 39)}…` : ln.text, box: ln.box, confidence: ln.confidence });
    }
    return out;
  }

  /** Overlay boxes, placed in percent of the analysed size: they follow the displayed image at any size.
   * Stage boxes are in the pixels of the original image after EXIF orientation (analysis.size, the row's
   * original_width x original_height); the derivative is a scaled copy of it. */
  function drawOverlay(image, a, img, boxes) {
    const overlay = $("#overlay");
    overlay.replaceChildren();
    const size = a.size || {};
    const w = Number(size.width || image.original_width || image.width || img.naturalWidth);
    const h = Number(size.height || image.original_height || image.height || img.naturalHeight);
    if (!(w > 0 && h > 0)) return;
    boxes.forEach((b, i) => {
      const { x1, y1, x2, y2 } = b.box;
      if (![x1, y1, x2, y2].every(Number.isFinite)) return;
      const node = el("div", {
        class: `box ${b.kind}`, role: "img", "aria-label": `${b.kind}: ${b.label}`,
        dataset: { kind: b.kind, label: b.label, index: String(i), confidence: b.confidence ?? "" },
      }, el("span", { class: "box-label" }, b.text));
      node.style.left = pct((100 * x1) / w);
      node.style.top = pct((100 * y1) / h);
      node.style.width = pct((100 * (x2 - x1)) / w);
      node.style.height = pct((100 * (y2 - y1)) / h);
      if ((100 * y1) / h < 6) node.classList.add("label-inside");
      overlay.append(node);
      b.node = node;
    });
    applyToggles();
  }

  /** The displayed width: small derivatives scaled up (to 640 px, at most twice), tall ones kept within
   * the window's height; CSS max-width keeps it within the column (the height follows the width). */
  function fitImage(img) {
    const w = img.naturalWidth;
    const h = img.naturalHeight;
    if (!(w > 0 && h > 0)) return;
    const width = Math.min(Math.max(w, Math.min(640, 2 * w)), (0.78 * window.innerHeight * w) / h);
    img.style.width = `${Math.round(width)}px`;
  }

  function applyToggles() {
    for (const input of $$("[data-toggle]")) {
      $("#overlay").classList.toggle(`hide-${input.dataset.toggle}`, !input.checked);
    }
  }
  for (const input of $$("[data-toggle]")) input.addEventListener("change", applyToggles);

  /** A list entry that highlights its box on hover and focus. */
  function boxItem(b, content) {
    const li = el("li", { class: `boxitem ${b.kind}`, tabindex: "0" }, el("span", { class: `sw ${b.kind}`, "aria-hidden": "true" }), content);
    const on = () => b.node && b.node.classList.add("hl");
    const off = () => b.node && b.node.classList.remove("hl");
    li.addEventListener("mouseenter", on);
    li.addEventListener("mouseleave", off);
    li.addEventListener("focus", on);
    li.addEventListener("blur", off);
    return li;
  }

  function details(image, a, boxes) {
    const byKind = (k) => boxes.filter((b) => b.kind === k);
    const md = a.metadata || {};
    const gps = md.gps || (image.gps_lat != null ? { lat: image.gps_lat, lon: image.gps_lon, alt_m: image.gps_alt_m } : null);
    const place = md.place || {};
    const placeText = ["city", "region", "country"].map((k) => place[k]).filter(Boolean).join(", ");
    const make = md.camera_make || image.camera_make || "";
    const model = md.camera_model || image.camera_model || "";
    // "PENTAX Corporation" + "PENTAX K100D Super": the model alone when it starts with the make's brand
    const brand = String(make).split(/\s+/)[0].toLowerCase();
    const camera = make && model && !String(model).toLowerCase().startsWith(brand) ? `${make} ${model}` : model || make;
    const exposure = [
      md.exposure_time_s ? (md.exposure_time_s < 1 ? `1/${Math.round(1 / md.exposure_time_s)} s` : `${md.exposure_time_s} s`) : null,
      md.f_number ? `f/${md.f_number}` : null,
      md.iso ? `ISO ${md.iso}` : null,
      md.focal_length_mm ? `${md.focal_length_mm} mm` : null,
    ].filter(Boolean).join(" · ");
    const tags = Array.isArray(image.tags) ? image.tags : [];
    const scene = a.scene || null;
    const labels = (items) => (items || []).map((i) => `${i.label} ${percent(i.score)}`).join(", ");
    const textLines = byKind("text");
    const stages = image.stages || {};
    /** A section's content: its result, or why there is none (its stage failed); nothing when the
     * stage was not part of this analysis. */
    const outcome = (stage, value, render) => {
      if (value !== null && value !== undefined) return render();
      const s = stages[stage];
      if (!s) return null;
      return el("p", { class: "error" }, `The ${stage} stage: ${s.status}${s.error ? ` (${s.error})` : ""}.`);
    };

    return [
      image.status && image.status !== "complete"
        ? el("p", { class: `message ${image.status === "failed" ? "error" : "warn"}` },
          `Status: ${image.status}${image.error_message ? ` — ${image.error_message}` : ""}`)
        : null,
      section("Tags", tags.length ? el("div", { class: "chips" },
        tags.map((t) => (typeof t === "string" ? searchLink("tag", t)
          : searchLink(t.kind === "person" ? "person" : "tag", t.tag, t.tag, `${t.kind}${t.score != null ? ` ${percent(t.score)}` : ""}`)))) : null),
      section("Objects", outcome("objects", a.objects, () => (byKind("object").length
        ? el("ul", { class: "boxlist" }, byKind("object").map((b) => boxItem(b, `${b.label} — ${percent(b.confidence)}`)))
        : el("p", { class: "muted" }, "None found.")))),
      section("Faces", outcome("faces", a.faces, () => (byKind("face").length
        ? el("ul", { class: "boxlist" }, byKind("face").map((b) => boxItem(b,
          b.label !== "unknown" ? searchLink("person", b.label) : el("span", { class: "muted" }, "unknown"))))
        : el("p", { class: "muted" }, "None found.")))),
      section("Text", outcome("text", a.text, () => (a.text.text ? [
        el("pre", { class: "ocr", lang: a.text.language || null }, a.text.text),
        el("p", { class: "muted small" }, [a.text.language ? `Language: ${a.text.language}` : null,
          `${textLines.length} line${textLines.length === 1 ? "" : "s"}`].filter(Boolean).join(" · ")),
      ] : el("p", { class: "muted" }, "None found.")))),
      section("Scene", outcome("scene", scene, () => dl([
        ["Setting", scene.environment ? `${scene.environment.label} ${percent(scene.environment.score)}` : null],
        ["Places", labels(scene.places)],
        ["Events", labels(scene.events)],
        ["Classes", labels(scene.classes)],
      ]))),
      section("Safety", outcome("safety", a.safety, () => dl([
        ["NSFW score", Number(a.safety.nsfw_score).toFixed(3)],
        ["Verdict", a.safety.unsafe ? "unsafe" : "safe"],
      ]))),
      section("Photo", dl([
        ["Taken", md.taken_at_local || image.taken_at_local ? `${md.taken_at_local || image.taken_at_local}${md.tz_offset ? ` (${md.tz_offset})` : ""}` : formatDate(md.taken_at || image.taken_at)],
        ["Camera", camera],
        ["Lens", md.lens_model || image.lens_model],
        ["Exposure", exposure],
        ["GPS", gps && gps.lat != null ? `${Number(gps.lat).toFixed(5)}, ${Number(gps.lon).toFixed(5)}${gps.alt_m != null ? ` · ${Math.round(gps.alt_m)} m` : ""}` : null],
        ["Place", placeText],
        ["Title", md.title], ["Description", md.description], ["Artist", md.artist], ["Copyright", md.copyright],
        ["Keywords", (md.keywords || []).join(", ")],
      ])),
      section("File", dl([
        ["Format", image.format],
        ["Original", image.original_width ? `${image.original_width} × ${image.original_height}` : null],
        ["Size", image.size_bytes ? `${(image.size_bytes / 1024).toFixed(0)} KiB` : null],
        ["Analysed", formatDate(image.last_analyzed)],
        ["Image id", el("code", {}, image.image_id)],
      ])),
      section("Stages", Object.keys(stages).length ? el("ul", { class: "stages" }, Object.entries(stages).sort()
        .map(([name, s]) => el("li", { dataset: { status: s.status } }, el("span", {}, name),
          el("span", { class: "muted" }, `${s.status}${s.ms ? ` · ${Math.round(s.ms)} ms` : ""}`),
          s.error ? el("span", { class: "error small" }, s.error) : null))) : null),
    ];
  }

  let imageRequest = 0;
  async function showImage(id) {
    const mine = ++imageRequest;
    const view = $("#view-image");
    state.imageId = id;
    view.dataset.status = "loading";
    $("#image-title").textContent = "Photo";
    $("#image-error").hidden = true;
    $("#image-body").hidden = true;
    $("#image-loading").hidden = false;
    try {
      const image = await apiJson(`/v1/images/${encodeURIComponent(id)}`);
      if (mine !== imageRequest) return;
      if (image.status === "processing" && !image.analysis) {
        view.dataset.status = "processing";
        $("#image-loading").hidden = true;
        const p = $("#image-error");
        p.replaceChildren("Still analysing… this page updates by itself when it is done.");
        p.className = "message warn";
        p.hidden = false;
        return;
      }
      const a = image.analysis || {};
      $("#image-title").textContent = a.caption ? a.caption.charAt(0).toUpperCase() + a.caption.slice(1) : "Photo";
      $("#caption").textContent = a.caption || "";
      const img = $("#photo");
      img.alt = a.caption || "The photo";
      img.removeAttribute("src");
      $("#overlay").replaceChildren();
      const boxes = boxesOf(a);
      $("#details").replaceChildren(...details(image, a, boxes).filter(Boolean));
      for (const input of $$("[data-toggle]")) input.closest("label").hidden = !boxes.some((b) => b.kind === input.dataset.toggle);
      $(".toggles").hidden = !boxes.length;
      $("#image-loading").hidden = true;
      $("#image-body").hidden = false;
      view.dataset.status = "loaded";
      let url;
      try {
        url = await imageUrl(derivative(id));
      } catch (exc) {
        if (mine !== imageRequest || exc.status === 401) return;
        $("#stage").classList.add("broken");
        $("#stage").dataset.note = exc.status === 404 ? "No stored image to show." : `The image did not load: ${exc.message}`;
        view.dataset.status = "ready";
        return;
      }
      if (mine !== imageRequest) return;
      $("#stage").classList.remove("broken");
      img.style.width = "";
      img.src = url;
      try { await img.decode(); } catch { /* drawn on load anyway */ }
      if (mine !== imageRequest) return;
      fitImage(img);
      drawOverlay(image, a, img, boxes);
      view.dataset.status = "ready";
    } catch (exc) {
      if (mine !== imageRequest || exc.status === 401) return;
      view.dataset.status = "error";
      $("#image-loading").hidden = true;
      const p = $("#image-error");
      p.className = "message error";
      if (exc.status === 404) p.replaceChildren("This photo does not exist, or is not yours.");
      else p.replaceChildren(exc.message || "Loading failed.", " ",
        el("button", { type: "button", class: "btn small", onclick: () => showImage(id) }, "Retry"));
      p.hidden = false;
    }
  }

  function closeImage() {
    if ($("#view-image").hidden) return;
    if (state.fromGrid) history.back();
    else location.hash = state.home && state.home.mode ? `#/search/${state.home.mode}/${encodeURIComponent(state.home.q)}` : "#/";
  }
  $("#image-back").addEventListener("click", (e) => {
    e.preventDefault();
    closeImage();
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && !$("#view-image").hidden && !e.defaultPrevented) {
      e.preventDefault();
      closeImage();
    }
  });

  // -- routing ------------------------------------------------------------------------------------

  function show(view) {
    for (const v of ["signin", "home", "image"]) $(`#view-${v}`).hidden = v !== view;
    const signedIn = Boolean(state.token);
    $("#search").hidden = !signedIn;
    $("#account").hidden = !signedIn;
    $("#who").textContent = state.user || "";
  }

  let previousView = null;
  function route() {
    if (!state.token) {
      show("signin");
      $("#dev-login-box").hidden = sessionStorage.getItem("lensflow.nodev") === "1";
      previousView = "signin";
      $("#token-input").focus();
      return;
    }
    const parts = (location.hash.replace(/^#\/?/, "") || "").split("/");
    if (parts[0] === "image" && parts[1]) {
      const id = decodeURIComponent(parts[1]);
      state.fromGrid = previousView === "home";
      show("image");
      previousView = "image";
      showImage(id);
      $("#image-back").focus({ preventScroll: true });
      window.scrollTo(0, 0);
      return;
    }
    let mode = null;
    let q = "";
    if (parts[0] === "search" && MODES.includes(parts[1]) && parts[2]) {
      mode = parts[1];
      q = decodeURIComponent(parts.slice(2).join("/"));
    }
    const back = previousView === "image" ? state.imageId : null;
    show("home");
    previousView = "home";
    state.imageId = null;
    imageRequest++;
    openListing(mode, q);
    if (back && state.shown.has(back)) {  // back from an image: focus its tile
      const link = $(".tile-link", state.shown.get(back));
      link.focus({ preventScroll: true });
      link.scrollIntoView({ block: "nearest" });
    }
  }

  window.addEventListener("hashchange", route);
  if (state.token) startEvents();
  route();

  // for tests and debugging: what the page is doing
  window.lensflowGallery = {
    get lastEventId() { return state.events ? state.events.lastEventId : null; },
    get user() { return state.user; },
  };
})();
