// The item view: one picture with its detections, tags, styles, labels and metadata, or
// one sound with its waveform and a player.

import { api, basename, BlobUrls, hasToken, isAbort, setPicture, withParams } from "./api.js";
import { el } from "./dom.js";
import { formatDuration, stopPlaying } from "./sound.js";
import { createStylize } from "./stylize.js";

const $ = (id) => document.getElementById(id);

export const pct = (x) => `${Math.round(Number(x) * 100)}%`;

function hue(label) {
  let h = 0;
  for (const ch of String(label)) h = (h * 31 + ch.codePointAt(0)) % 360;
  return h;
}

export function formatBytes(n) {
  if (n === null || n === undefined) return null;
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  let v = Number(n);
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i ? v.toFixed(v < 10 ? 1 : 0) : v} ${units[i]}`;
}

export function formatDate(iso) {
  if (!iso) return null;
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  const dateOnly = /^\d{4}-\d{2}-\d{2}$/.test(iso);
  return dateOnly
    ? d.toLocaleDateString(undefined, { dateStyle: "medium", timeZone: "UTC" })
    : d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

function section(title, ...content) {
  const items = content.filter(Boolean);
  if (!items.length) return null;
  return el("section", { class: "detail-section" }, el("h3", { text: title }), ...items);
}

/**
 * createItemView({onSimilar, onFilter, onError, onClose, neighbour}):
 *   onSimilar(detail)      "More like this" was pressed
 *   onFilter(param, value) a tag / object / label in the view was pressed (filter the grid by it)
 *   onError(err)           an API error to show
 *   onClose()              the user asked to close (Esc, ✕, backdrop): the caller handles history
 *   neighbour(id, step)    id of the result step places away in the grid, or null
 *   onNavigate(id)         the user moved to another result (arrow keys, ‹ ›)
 */
export function createItemView(hooks) {
  const dialog = $("item-view");
  const img = $("item-img");
  const boxes = $("item-boxes");
  const details = $("item-details");
  const audio = $("item-audio");
  const title = $("item-title");
  const fileLink = $("open-file");
  const showBoxes = $("show-boxes");
  const pool = new BlobUrls();
  const stylize = createStylize({ button: $("stylize-open"), onError: (e) => hooks.onError(e) });
  let current = null; // ItemDetail on show
  let currentId = null;
  let ctrl = null;

  showBoxes.addEventListener("change", () => {
    boxes.hidden = !showBoxes.checked;
  });
  $("item-close").addEventListener("click", () => hooks.onClose());
  dialog.addEventListener("cancel", (ev) => {
    ev.preventDefault(); // Esc: let the caller close through history
    hooks.onClose();
  });
  dialog.addEventListener("click", (ev) => {
    if (ev.target === dialog) hooks.onClose(); // backdrop
  });
  $("more-like-this").addEventListener("click", () => current && hooks.onSimilar(current));
  const step = (s) => {
    const id = currentId !== null ? hooks.neighbour(currentId, s) : null;
    if (id !== null) hooks.onNavigate(id);
  };
  $("item-prev").addEventListener("click", () => step(-1));
  $("item-next").addEventListener("click", () => step(1));
  dialog.addEventListener("keydown", (ev) => {
    if (ev.target.closest("input, textarea, select, .stylize-panel")) return;
    if (ev.key === "ArrowLeft") step(-1);
    else if (ev.key === "ArrowRight") step(1);
    else return;
    ev.preventDefault();
  });
  fileLink.addEventListener("click", async (ev) => {
    if (!current || !hasToken()) return; // plain link: the browser opens it
    ev.preventDefault();
    try {
      const res = await api(current.file, { raw: true });
      const url = URL.createObjectURL(await res.blob());
      const a = el("a", { href: url, download: basename(current.paths?.[0]) || `item-${current.id}` });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60_000);
    } catch (e) {
      if (!isAbort(e)) hooks.onError(e);
    }
  });
  // Fit the picture to the room it has, scaling small ones up (boxes follow: they are in %).
  const media = img.closest(".item-media");
  const actions = media.querySelector(".media-actions");
  function fit() {
    const w = img.naturalWidth || current?.width;
    const h = img.naturalHeight || current?.height;
    if (!w || !h || !dialog.open) return;
    const cs = getComputedStyle(media);
    const padX = parseFloat(cs.paddingLeft) + parseFloat(cs.paddingRight);
    const padY = parseFloat(cs.paddingTop) + parseFloat(cs.paddingBottom);
    const stacked = matchMedia("(max-width: 860px)").matches;
    const roomW = media.clientWidth - padX;
    const roomH = stacked
      ? window.innerHeight * 0.6
      : media.clientHeight - padY - actions.offsetHeight - (parseFloat(cs.rowGap) || 0);
    const s = Math.max(0, Math.min(roomW / w, roomH / h, 4));
    img.style.width = `${Math.floor(w * s)}px`;
    img.style.height = `${Math.floor(h * s)}px`;
  }
  img.addEventListener("load", fit);
  new ResizeObserver(fit).observe(media);
  img.addEventListener("error", () => {
    if (img.getAttribute("src")) dialog.classList.add("no-picture");
  });

  function updateNav() {
    $("item-prev").disabled = currentId === null || hooks.neighbour(currentId, -1) === null;
    $("item-next").disabled = currentId === null || hooks.neighbour(currentId, 1) === null;
  }

  function reset(id) {
    stylize.reset();
    pool.clear();
    img.removeAttribute("src");
    img.alt = "";
    img.style.width = "";
    img.style.height = "";
    boxes.replaceChildren();
    details.replaceChildren(el("p", { class: "muted", text: "Loading…" }));
    audio.pause();
    audio.hidden = true;
    audio.removeAttribute("src");
    dialog.classList.remove("no-picture", "is-audio");
    dialog.dataset.itemId = String(id);
    title.textContent = `Item ${id}`;
    fileLink.href = `/api/items/${id}/file`;
    current = null;
  }

  async function open(id) {
    stopPlaying(); // the grid's sound, if one plays: the view has its own player
    if (!dialog.open) {
      dialog.showModal();
      $("item-close").focus();
    }
    if (currentId === id && current) return;
    currentId = id;
    ctrl?.abort();
    ctrl = new AbortController();
    const signal = ctrl.signal;
    reset(id);
    updateNav();
    try {
      const d = await api(`/api/items/${encodeURIComponent(id)}`, { signal });
      if (signal.aborted || currentId !== id) return;
      render(d);
    } catch (e) {
      if (isAbort(e) || currentId !== id) return;
      details.replaceChildren(el("p", { class: "error", text: e.message }));
      hooks.onError(e);
    }
  }

  function render(d) {
    current = d;
    const name = basename(d.paths?.[0]) || `Item ${d.id}`;
    title.textContent = name;
    title.title = d.paths?.[0] || "";
    img.alt = d.kind === "audio" ? `Waveform of ${name}` : name;
    img.width = d.width || 0;
    img.height = d.height || 0;
    if (d.kind === "audio") {
      // The big waveform (1024 x 256) above a player of the file itself.
      dialog.classList.add("is-audio");
      audio.hidden = false;
      audio.preload = "metadata";
      setPicture(audio, d.file, pool);
    }
    setPicture(img, d.thumbnail || `/api/items/${d.id}/thumbnail?size=1024`, pool);
    fileLink.href = d.file || `/api/items/${d.id}/file`;
    drawBoxes(d.detections || []);
    details.replaceChildren(stylize.element, ...renderDetails(d).filter(Boolean));
    stylize.show(d).then(fit); // the button may take another row of the actions
    fit();
  }

  function drawBoxes(dets) {
    boxes.replaceChildren();
    for (const det of dets) {
      const [x0, y0, x1, y1] = (det.box || []).map(Number);
      if (![x0, y0, x1, y1].every(Number.isFinite)) continue;
      const clamp = (v) => Math.min(1, Math.max(0, v));
      const left = clamp(Math.min(x0, x1));
      const top = clamp(Math.min(y0, y1));
      const box = el(
        "div",
        {
          class: "box",
          "data-label": det.label,
          "data-confidence": String(det.confidence),
          title: `${det.label} ${pct(det.confidence)}`,
        },
        el("span", { class: "box-label", text: `${det.label} ${pct(det.confidence)}` }),
      );
      box.style.left = `${left * 100}%`;
      box.style.top = `${top * 100}%`;
      box.style.width = `${(clamp(Math.max(x0, x1)) - left) * 100}%`;
      box.style.height = `${(clamp(Math.max(y0, y1)) - top) * 100}%`;
      box.style.setProperty("--hue", hue(det.label));
      boxes.append(box);
    }
    showBoxes.closest("label").hidden = !dets.length;
  }

  function filterButton(cls, param, value, text, extra = {}) {
    const b = el("button", { type: "button", class: cls, "data-value": value, title: `Show only items with ${value}`, ...extra });
    b.append(...(Array.isArray(text) ? text : [text]));
    b.addEventListener("click", () => hooks.onFilter(param, value));
    return b;
  }

  function renderDetails(d) {
    const out = [];
    // Objects: counts per label, each a filter.
    const counts = new Map();
    for (const det of d.detections || []) counts.set(det.label, (counts.get(det.label) || 0) + 1);
    if (counts.size) {
      const list = el("div", { class: "chip-list" });
      for (const [label, n] of [...counts].sort((a, b) => b[1] - a[1])) {
        list.append(filterButton("chip object", "has", label, [label, el("span", { class: "count", text: `×${n}` })]));
      }
      out.push(section(`Objects (${d.detections.length})`, list));
    }
    if (d.tags?.length) {
      const list = el("div", { class: "chip-list" });
      for (const t of d.tags) list.append(filterButton("chip tag", "tag", t, t));
      out.push(section("Tags", list));
    }
    if (d.styles?.length) {
      const bars = el("div", { class: "bars" });
      for (const s of d.styles || []) {
        const score = Math.max(0, Math.min(1, Number(s.score) || 0));
        const fill = el("span", { class: "bar-fill" });
        fill.style.width = pct(score);
        bars.append(
          el(
            "div",
            { class: "style-bar", "data-artist": s.artist, role: "meter", "aria-valuemin": "0", "aria-valuemax": "1", "aria-valuenow": String(score), "aria-label": `${s.artist} ${pct(score)}` },
            el("span", { class: "bar-name", text: s.artist }),
            el("span", { class: "bar-track" }, fill),
            el("span", { class: "bar-value", text: pct(score) }),
          ),
        );
      }
      const art = d.artwork !== null && d.artwork !== undefined
        ? el("p", { class: "muted small", text: `Artwork likelihood: ${pct(d.artwork)}` })
        : null;
      out.push(section("Style", bars, art));
    }
    const labelGroups = Object.entries(d.labels || {}).filter(
      ([k, v]) => !["style", "artwork"].includes(k) && Array.isArray(v) && v.length,
    );
    if (labelGroups.length) {
      const wrap = el("div");
      for (const [group, list] of labelGroups) {
        const ul = el("ul", { class: "label-list", "aria-label": group });
        for (const l of list) {
          ul.append(
            el("li", { class: "label-item" },
              filterButton("label-name link-button", "label", l.label, l.label),
              el("span", { class: "label-score", text: pct(l.score) })),
          );
        }
        if (labelGroups.length > 1) wrap.append(el("h4", { text: group }));
        wrap.append(ul);
      }
      out.push(section("Labels", wrap));
    }
    // (labels are scored in the CLIP space, which holds no sounds)
    if (d.kind !== "audio") out.push(section("Try your own labels", classifyForm(d)));
    if (d.derived_from) out.push(section("Stylized", derivedFrom(d.derived_from)));
    out.push(section("Details", metadata(d)));
    const paths = el("ul", { class: "paths" });
    for (const p of d.paths || []) paths.append(el("li", { class: "path", text: p, title: p }));
    out.push(section(d.paths?.length === 1 ? "Path" : `Paths (${d.paths?.length || 0})`, paths));
    const failed = (d.stages || []).filter((s) => s.status && !["done", "ok", "skipped"].includes(s.status));
    if (failed.length) {
      const ul = el("ul", { class: "stage-list" });
      for (const s of failed) ul.append(el("li", { text: `${s.stage}: ${s.status}${s.error ? ` — ${s.error}` : ""}` }));
      out.push(section("Enrichment", ul));
    }
    return out;
  }

  function classifyForm(d) {
    const form = el("form", { class: "classify" });
    const input = el("input", { type: "text", placeholder: "cat, dog, a sunset", "aria-label": "Labels, separated by commas" });
    const result = el("ul", { class: "label-list" });
    form.append(el("div", { class: "inline-form" }, input, el("button", { type: "submit", class: "button", text: "Score" })), result);
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const labels = input.value.split(",").map((s) => s.trim()).filter(Boolean);
      if (!labels.length) return;
      result.replaceChildren(el("li", { class: "muted", text: "Scoring…" }));
      try {
        const r = await api(`/api/items/${d.id}/classify`, {
          method: "POST",
          body: JSON.stringify({ labels }),
          headers: { "Content-Type": "application/json" },
        });
        result.replaceChildren(
          ...(r.labels || []).map((l) =>
            el("li", { class: "label-item" }, el("span", { class: "label-name", text: l.label }), el("span", { class: "label-score", text: pct(l.score) }))),
        );
      } catch (e) {
        result.replaceChildren(el("li", { class: "error", text: e.message }));
      }
    });
    return form;
  }

  /** Where a style-transfer result came from: links to the picture and the style item. */
  function derivedFrom(f) {
    const link = (id) => el("a", { href: `#item=${id}`, text: `item ${id}` });
    const s = f.style || {};
    const style = s.kind === "artist" ? `${s.artist}'s style`
      : s.kind === "item" && s.item_id ? ["the style of ", link(s.item_id)]
        : s.kind === "item" ? "the style of a picture no longer in the library"
          : "the style of an uploaded picture";
    return el("p", { class: "derived-from", "data-job-id": String(f.job_id) },
      "Rendered from ", f.item_id ? link(f.item_id) : "a picture no longer in the library",
      " in ", ...[style].flat(), ".");
  }

  function metadata(d) {
    const rows = [
      ["Kind", d.kind],
      ["Format", d.format],
      ["File size", formatBytes(d.size_bytes)],
      ["Dimensions", d.width && d.height ? `${d.width} × ${d.height}` : null],
      ["Duration", d.duration_s !== null && d.duration_s !== undefined ? formatDuration(d.duration_s) : null],
      ["Sample rate", d.sample_rate ? `${Number(d.sample_rate).toLocaleString()} Hz` : null],
      ["Channels", d.channels ? channels(d.channels) : null],
      ["Taken", formatDate(d.taken_at)],
      ["Camera", [d.camera_make, d.camera_model].filter(Boolean).join(" ") || null],
      ["GPS", Array.isArray(d.gps) && d.gps.length === 2 ? gps(d.gps) : null],
      ["Artwork", d.artwork !== null && d.artwork !== undefined && !d.styles?.length ? pct(d.artwork) : null],
      ["Added", formatDate(d.created_at)],
      ["SHA-256", d.sha256 ? el("code", { text: d.sha256.slice(0, 16) + "…", title: d.sha256 }) : null],
      ["ID", String(d.id)],
    ];
    const dl = el("dl", { class: "meta" });
    for (const [k, v] of rows) {
      if (v === null || v === undefined || v === "") continue;
      dl.append(el("dt", { text: k }), el("dd", {}, v));
    }
    return dl;
  }

  function channels(n) {
    return { 1: "1 (mono)", 2: "2 (stereo)" }[n] || String(n);
  }

  function gps([lat, lon]) {
    const text = `${Number(lat).toFixed(5)}, ${Number(lon).toFixed(5)}`;
    return el("a", {
      href: withParams("https://www.openstreetmap.org/", { mlat: lat, mlon: lon }) + `#map=15/${lat}/${lon}`,
      target: "_blank",
      rel: "noopener noreferrer",
      text,
      title: "Open on OpenStreetMap",
    });
  }

  function hide() {
    ctrl?.abort();
    stylize.reset();
    currentId = null;
    current = null;
    if (dialog.open) dialog.close();
    pool.clear();
    img.removeAttribute("src");
    audio.pause();
    audio.removeAttribute("src");
  }

  return {
    open,
    hide,
    get isOpen() {
      return dialog.open;
    },
    get id() {
      return currentId;
    },
    /** The token changed: load the open item again. */
    reload() {
      if (currentId === null) return;
      const id = currentId;
      current = null;
      currentId = null;
      open(id);
    },
    updateNav,
  };
}
