// One style-transfer job on the page: its progress, read live from the server's event stream
// (through fetch, since EventSource cannot send the token), and the picture so far; then the
// result beside the original with Download and Add to library, or the state and error of a
// job that did not finish.

import { api, isAbort } from "./api.js";
import { el } from "./dom.js";

export const FINISHED = new Set(["done", "failed", "cancelled"]);
const LANDING_TIMEOUT_MS = 60_000; // how long "Add to library" waits for the item to be indexed

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(t);
      reject(new DOMException("aborted", "AbortError"));
    }, { once: true });
  });
}

/** One event of a text/event-stream block ("event: job\ndata: {...}"), or null (a comment). */
function parseEvent(block) {
  let event = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const i = line.indexOf(":");
    const field = i < 0 ? line : line.slice(0, i);
    let value = i < 0 ? "" : line.slice(i + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
  }
  return data.length ? { event, data: data.join("\n") } : null;
}

/** GET path as server-sent events, onEvent({event, data}) for each; resolves when it ends. */
export async function readEvents(path, onEvent, signal) {
  const res = await api(path, { raw: true, signal, headers: { Accept: "text/event-stream" } });
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    // Lines may end in \r\n or \r; a \r at the very end may be half of a \r\n still coming.
    const keep = buf.endsWith("\r") ? "\r" : "";
    buf = buf.slice(0, buf.length - keep.length).replace(/\r\n?/g, "\n");
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const ev = parseEvent(buf.slice(0, cut));
      buf = buf.slice(cut + 2);
      if (ev) onEvent(ev);
    }
    buf += keep;
  }
}

function stateText(job) {
  const of = `step ${job.step} of ${job.total}`;
  switch (job.state) {
    case "queued":
      return job.cancel_requested ? "Cancelling…" : "Waiting in the queue…";
    case "running":
      return job.cancel_requested ? `Cancelling at ${of}…` : `Running: ${of}`;
    case "done":
      return `Done${job.seconds ? ` in ${Number(job.seconds).toFixed(1)} s` : ""}.`;
    case "cancelled":
      return `Cancelled at ${of}.`;
    case "failed":
      return `Failed at ${of}.`;
    default:
      return String(job.state);
  }
}

/**
 * createJobView({onError, onAgain}): the element, follow(job, {original, fileStem}) and stop().
 *   onAgain()   "Try another style" was pressed
 */
export function createJobView(hooks) {
  const status = el("p", { class: "sty-status", tabindex: "-1" });
  // Read out when the state changes, not at every step.
  const announce = el("p", { class: "visually-hidden", role: "status", "aria-live": "polite" });
  const progress = el("progress", { class: "sty-progress", max: "1", value: "0", "aria-label": "Progress" });
  const original = el("img", { class: "sty-original", alt: "The original" });
  const picture = el("img", { class: "sty-picture", alt: "" });
  const caption = el("figcaption", { text: "So far" });
  const cancel = el("button", { type: "button", class: "button sty-cancel", text: "Cancel" });
  const download = el("a", { class: "button primary sty-download", text: "Download", hidden: true });
  const add = el("button", { type: "button", class: "button sty-add", text: "Add to library", hidden: true });
  const open = el("a", { class: "button sty-open", text: "Open in library", hidden: true });
  const again = el("button", { type: "button", class: "button sty-again", text: "Try another style", hidden: true });
  const note = el("p", { class: "sty-note muted small", role: "status", "aria-live": "polite" });
  const error = el("p", { class: "sty-error error", hidden: true });
  const element = el(
    "div",
    { class: "sty-job", hidden: true },
    status,
    announce,
    progress,
    el("div", { class: "sty-compare" },
      el("figure", { class: "sty-fig" }, original, el("figcaption", { text: "Original" })),
      el("figure", { class: "sty-fig" }, picture, caption)),
    el("div", { class: "sty-actions" }, cancel, download, add, open, again),
    note,
    error,
  );
  const urls = new Map(); // img -> its object URL
  let job = null;
  let shownPicture = null; // the API path picture shows
  let fileStem = "stylized";
  let ctrl = null;
  let landing = false; // waiting for the result to become an item

  /** Show the API picture at path in img, fetched with the token (an object URL), unless
   * still(path) says by then that another picture is wanted. */
  async function show(img, path, signal, still = () => true) {
    const res = await api(path, { raw: true, signal });
    const url = URL.createObjectURL(await res.blob());
    if (signal.aborted || !still(path)) return URL.revokeObjectURL(url);
    const old = urls.get(img);
    img.src = url;
    img.dataset.shows = path;
    urls.set(img, url);
    if (old) URL.revokeObjectURL(old);
  }

  function showPicture(path) {
    if (!path || path === shownPicture) return;
    shownPicture = path;
    // Pictures may come back out of order (a preview after the result): the last asked wins.
    // A preview may also be gone by the time it is asked for (the job moved on or ended).
    show(picture, path, ctrl.signal, (p) => p === shownPicture).catch((e) => {
      if (!isAbort(e) && path === job?.result) hooks.onError(e);
    });
  }

  function update(next) {
    if (next.state !== job?.state || next.id !== job?.id) announce.textContent = stateText(next);
    job = next;
    const finished = FINISHED.has(job.state);
    element.dataset.jobId = String(job.id);
    element.dataset.state = job.state;
    element.dataset.step = String(job.step);
    status.textContent = stateText(job);
    progress.max = Math.max(1, job.total);
    progress.value = Math.min(job.step, job.total);
    if (job.state === "queued") progress.removeAttribute("value"); // indeterminate
    const hadFocus = element.contains(document.activeElement) && document.activeElement;
    cancel.hidden = finished;
    // (aria-disabled, not disabled: a disabled button would drop the focus on the floor)
    cancel.setAttribute("aria-disabled", String(Boolean(job.cancel_requested)));
    again.hidden = !finished;
    download.hidden = add.hidden = job.state !== "done";
    if (job.state === "done") {
      download.href = `${job.result}?download=1`;
      download.download = `${fileStem}-stylized-${job.id}.png`;
      add.hidden = job.add_to_library;
      caption.textContent = "Stylized";
      picture.alt = "The stylized picture";
      showPicture(job.result);
      if (job.add_to_library) landed(job);
    } else if (job.state === "running") {
      caption.textContent = "So far";
      picture.alt = `The picture at step ${job.step}`;
      showPicture(job.preview);
    }
    error.hidden = !job.error;
    error.textContent = job.error ? `Error: ${job.error}` : "";
    // Buttons that hide take the focus with them: hand it to what comes next.
    if (hadFocus && hadFocus.hidden) (job.state === "done" ? download : finished ? again : status).focus();
  }

  async function follow(first, opts = {}) {
    stop();
    ctrl = new AbortController();
    const signal = ctrl.signal;
    fileStem = opts.fileStem || "stylized";
    shownPicture = null;
    picture.removeAttribute("src");
    delete picture.dataset.shows;
    open.hidden = true;
    note.textContent = "";
    element.hidden = false;
    if (opts.original) show(original, opts.original, signal).catch(() => {});
    update(first);
    let tries = 0;
    while (!signal.aborted && !FINISHED.has(job.state)) {
      try {
        await readEvents(`/api/stylize/${job.id}/events`, (ev) => {
          if (ev.event === "job") update(JSON.parse(ev.data));
        }, signal);
        tries = 0;
      } catch (e) {
        if (isAbort(e)) return;
        if (e.status >= 400 && e.status < 500) return hooks.onError(e);
        tries++;
      }
      if (FINISHED.has(job.state)) break;
      // The stream broke off (a proxy, a restart): catch up, then listen again.
      try {
        await sleep(Math.min(8000, 500 * 2 ** tries), signal);
        update(await api(`/api/stylize/${job.id}`, { signal }));
      } catch (e) {
        if (isAbort(e)) return;
      }
    }
  }

  function stop() {
    ctrl?.abort();
    ctrl = null;
  }

  /** Wait until the result has become an item (indexing takes a moment), then link to it. */
  async function landed(start) {
    if (landing || !open.hidden || !ctrl) return;
    landing = true;
    try {
      await waitForItem(start, ctrl.signal);
    } finally {
      landing = false;
    }
  }

  async function waitForItem(start, signal) {
    let j = start;
    const deadline = Date.now() + LANDING_TIMEOUT_MS;
    note.textContent = "Adding to the library…";
    try {
      while (j.derived_item_id === null || j.derived_item_id === undefined) {
        if (Date.now() > deadline) {
          note.textContent = "It is taking long to index: look for it in the library later.";
          return;
        }
        await sleep(500, signal);
        j = await api(`/api/stylize/${j.id}`, { signal });
      }
    } catch (e) {
      if (!isAbort(e)) note.textContent = `Could not follow the indexing: ${e.message}`;
      return;
    }
    if (!open.hidden) return;
    open.href = `#item=${j.derived_item_id}`;
    open.hidden = false;
    note.textContent = "Added to the library.";
    if (document.activeElement === add || document.activeElement === document.body) open.focus();
  }

  cancel.addEventListener("click", async () => {
    if (!job || cancel.getAttribute("aria-disabled") === "true") return;
    cancel.setAttribute("aria-disabled", "true");
    try {
      update(await api(`/api/stylize/${job.id}/cancel`, { method: "POST" }));
    } catch (e) {
      if (e.status === 409) return; // it finished meanwhile: its last event says how
      cancel.setAttribute("aria-disabled", "false");
      hooks.onError(e);
    }
  });

  download.addEventListener("click", async (ev) => {
    ev.preventDefault(); // the file needs the token: fetch it, then save it under its name
    try {
      const res = await api(download.getAttribute("href"), { raw: true });
      const url = URL.createObjectURL(await res.blob());
      const a = el("a", { href: url, download: download.download });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60_000);
    } catch (e) {
      hooks.onError(e);
    }
  });

  add.addEventListener("click", async () => {
    add.disabled = true;
    try {
      const j = await api(`/api/stylize/${job.id}/library`, { method: "POST" });
      add.hidden = true;
      landed(j);
    } catch (e) {
      note.textContent = e.message;
    } finally {
      add.disabled = false;
    }
  });

  again.addEventListener("click", () => hooks.onAgain());

  return {
    element,
    follow,
    /** Focus what a keyboard wants next: Cancel while it runs. */
    focus() {
      (cancel.hidden ? status : cancel).focus();
    },
    /** Stop following and forget the pictures. */
    reset() {
      stop();
      job = null;
      element.hidden = true;
      for (const url of urls.values()) URL.revokeObjectURL(url);
      urls.clear();
      shownPicture = null;
      for (const img of [original, picture]) {
        img.removeAttribute("src");
        delete img.dataset.shows;
      }
    },
    get job() {
      return job;
    },
  };
}
