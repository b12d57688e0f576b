// "Stylize" in the item view: pick a style (a painting of the library, any work of an
// artist, or a picture file), start a style-transfer job and follow it (stylejob.js).

import { api, basename, BlobUrls, isAbort, setPicture, withParams } from "./api.js";
import { el } from "./dom.js";
import { createJobView } from "./stylejob.js";

const PAINTINGS = 12; // thumbnails offered per style
const SOURCES = [
  ["painting", "A painting"],
  ["artist", "An artist"],
  ["file", "A picture file"],
];
let available = null; // does this server run style transfer? null: not known yet

const stem = (path) => basename(path).replace(/\.[^.]*$/, "") || "picture";

/**
 * createStylize({button, onError}): the panel (element) behind the item view's Stylize button.
 *   show(detail)  an item is shown: offer the button for pictures
 *   reset()       the item goes: close the panel, stop following its job
 */
export function createStylize({ button, onError }) {
  const thumbs = new BlobUrls();
  let item = null; // the ItemDetail shown
  let chosen = null; // style_item_id of the painting picked
  let file = null; // the style picture file picked
  let preview = null; // its object URL
  let stylesLoaded = false;
  let seq = 0; // bumped when the item changes: answers for an older one are dropped

  // ------------------------------------------------------------ the form
  const radios = SOURCES.map(([value]) => el("input", { type: "radio", name: "sty-source", value }));
  radios[0].checked = true;
  const styleSelect = el("select", { class: "sty-style" });
  const paintings = el("div", { class: "sty-paintings", role: "group", "aria-label": "Paintings in this style" });
  const artistSelect = el("select", { class: "sty-artist" });
  const fileInput = el("input", { type: "file", accept: "image/*", class: "sty-file visually-hidden" });
  const fileImg = el("img", { class: "sty-file-preview", alt: "", hidden: true });
  const fileText = el("span", { text: "Choose a picture, or drop one here" });
  const drop = el("label", { class: "sty-drop" }, fileInput, fileImg, fileText);
  const steps = el("input", { type: "number", min: "1", step: "1", class: "sty-steps", placeholder: "default" });
  const side = el("input", { type: "number", min: "32", step: "1", class: "sty-side", placeholder: "default" });
  const start = el("button", { type: "submit", class: "button primary sty-start", text: "Start" });
  const message = el("p", { class: "sty-message error", role: "alert" });
  const panes = {
    painting: el("div", { class: "sty-pane", "data-source": "painting" },
      el("label", { class: "sty-field" }, el("span", { text: "Style" }), styleSelect), paintings),
    artist: el("div", { class: "sty-pane", "data-source": "artist", hidden: true },
      el("label", { class: "sty-field" }, el("span", { text: "Artist" }), artistSelect),
      el("p", { class: "muted small", text: "The library's strongest artwork in this style sets the style." })),
    file: el("div", { class: "sty-pane", "data-source": "file", hidden: true }, drop),
  };
  const form = el(
    "form",
    { class: "sty-form" },
    el("fieldset", { class: "sty-sources" },
      el("legend", { class: "small muted", text: "Take the style from" }),
      el("div", { class: "segmented" },
        ...SOURCES.map(([, label], i) => el("label", {}, radios[i], el("span", { text: label }))))),
    panes.painting,
    panes.artist,
    panes.file,
    el("details", { class: "sty-settings" },
      el("summary", { text: "Settings" }),
      el("div", { class: "sty-settings-row" },
        el("label", { class: "sty-field" }, el("span", { text: "Steps" }), steps),
        el("label", { class: "sty-field" }, el("span", { text: "Long side (px)" }), side))),
    el("div", { class: "sty-actions" }, start),
    message,
  );

  const job = createJobView({ onError, onAgain: showForm });
  const close = el("button", { type: "button", class: "icon-button sty-close", "aria-label": "Close Stylize", title: "Close Stylize", text: "✕" });
  const element = el(
    "section",
    { id: "stylize-panel", class: "detail-section stylize-panel", hidden: true, "aria-labelledby": "stylize-title" },
    el("div", { class: "sty-head" }, el("h3", { id: "stylize-title", text: "Stylize" }), close),
    form,
    job.element,
  );
  button.setAttribute("aria-controls", "stylize-panel");
  button.setAttribute("aria-expanded", "false");

  // ------------------------------------------------------------ choosing the style
  const source = () => radios.find((r) => r.checked).value;
  function showPane() {
    for (const [name, pane] of Object.entries(panes)) pane.hidden = name !== source();
    message.textContent = "";
  }
  for (const r of radios) r.addEventListener("change", showPane);

  async function loadStyles() {
    if (stylesLoaded) return;
    stylesLoaded = true;
    try {
      const styles = (await api("/api/facets")).styles || [];
      const options = () => styles.map((s) => el("option", { value: s.value, text: `${s.value} (${s.count})` }));
      styleSelect.replaceChildren(...options());
      artistSelect.replaceChildren(...options());
      styleSelect.closest("label").hidden = !styles.length;
      radios[1].disabled = !styles.length; // no artist to name
      if (!styles.length) {
        panes.artist.replaceChildren(el("p", { class: "muted small", text: "No artwork of the library has a known style." }));
      }
      loadPaintings(styles.length ? styleSelect.value : null);
    } catch (e) {
      stylesLoaded = false;
      if (!isAbort(e)) message.textContent = e.message;
    }
  }
  styleSelect.addEventListener("change", () => loadPaintings(styleSelect.value));

  let paintSeq = 0;
  async function loadPaintings(style) {
    const mine = ++paintSeq;
    chosen = null;
    thumbs.clear();
    paintings.replaceChildren(el("p", { class: "muted small", text: "Loading…" }));
    // Without known styles, any picture may lend its style: offer the most painting-like.
    const params = style ? { style, kind: "image", k: PAINTINGS } : { q: "a painting", kind: "image", k: PAINTINGS };
    try {
      const { results } = await api(withParams("/api/search", params));
      if (mine !== paintSeq) return;
      paintings.replaceChildren(...results.map(paintingButton));
      if (!results.length) paintings.append(el("p", { class: "muted small", text: "No pictures found." }));
    } catch (e) {
      if (mine === paintSeq && !isAbort(e)) paintings.replaceChildren(el("p", { class: "error", text: e.message }));
    }
  }

  function paintingButton(r) {
    const name = basename(r.path) || `Item ${r.item_id}`;
    const img = el("img", { alt: "", width: 96, height: 96, decoding: "async" });
    setPicture(img, r.thumbnail || `/api/items/${r.item_id}/thumbnail?size=256`, thumbs);
    const b = el("button", { type: "button", class: "sty-painting", "aria-pressed": "false", "data-item-id": String(r.item_id), "aria-label": `Style of ${name}`, title: name }, img);
    b.addEventListener("click", () => {
      for (const other of paintings.querySelectorAll(".sty-painting")) other.setAttribute("aria-pressed", "false");
      b.setAttribute("aria-pressed", "true");
      chosen = r.item_id;
      message.textContent = "";
    });
    return b;
  }

  function pickFile(f) {
    if (!f) return;
    if (f.type && !f.type.startsWith("image/")) {
      message.textContent = `${f.name} is not a picture.`;
      return;
    }
    file = f;
    if (preview) URL.revokeObjectURL(preview);
    preview = URL.createObjectURL(f);
    fileImg.src = preview;
    fileImg.hidden = false;
    fileText.textContent = f.name;
    message.textContent = "";
  }
  fileInput.addEventListener("change", () => pickFile(fileInput.files?.[0]));
  // A drop here picks the style; it must not reach the page, where a drop searches.
  const hasFiles = (ev) => [...(ev.dataTransfer?.types || [])].includes("Files");
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (ev) => {
      if (!hasFiles(ev)) return;
      ev.preventDefault();
      ev.stopPropagation();
      ev.dataTransfer.dropEffect = "copy";
      drop.classList.add("over");
    });
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => {
    drop.classList.remove("over");
    if (!ev.dataTransfer?.files?.length) return;
    ev.preventDefault();
    ev.stopPropagation();
    pickFile(ev.dataTransfer.files[0]);
  });

  // ------------------------------------------------------------ starting and following
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (!item) return;
    const body = new FormData();
    body.append("item_id", String(item.id));
    const src = source();
    if (src === "painting" && chosen === null) return complain("Choose a painting first.", paintings.querySelector("button"));
    if (src === "artist" && !artistSelect.value) return complain("Choose an artist first.", artistSelect);
    if (src === "file" && !file) return complain("Choose a picture file first.", fileInput);
    if (src === "painting") body.append("style_item_id", String(chosen));
    else if (src === "artist") body.append("artist", artistSelect.value);
    else body.append("style", file, file.name);
    if (steps.value) body.append("steps", steps.value);
    if (side.value) body.append("side", side.value);
    const mine = seq;
    start.disabled = true;
    message.textContent = "";
    try {
      const j = await api("/api/stylize", { method: "POST", body });
      if (mine === seq) follow(j);
    } catch (e) {
      if (mine === seq) message.textContent = e.status === 429 ? `${e.message} Try again in a moment.` : e.message;
    } finally {
      start.disabled = false;
    }
  });

  function complain(text, focus) {
    message.textContent = text;
    focus?.focus();
  }

  function follow(j) {
    form.hidden = true;
    job.follow(j, { original: `/api/items/${item.id}/thumbnail?size=512`, fileStem: stem(item.paths?.[0]) });
    job.focus();
  }

  function showForm() {
    job.reset();
    form.hidden = false;
    radios.find((r) => r.checked).focus();
  }

  /** A job of this item still queued or running (started before, maybe elsewhere) is followed again. */
  async function resume() {
    const mine = seq;
    try {
      const { jobs } = await api(withParams("/api/stylize", { item_id: item.id, state: ["queued", "running"], limit: 1 }));
      if (mine === seq && jobs.length && !element.hidden && !form.hidden && !job.job) follow(jobs[0]);
    } catch (e) {
      if (!isAbort(e)) onError(e);
    }
  }

  // ------------------------------------------------------------ the panel
  function openPanel() {
    element.hidden = false;
    button.setAttribute("aria-expanded", "true");
    form.hidden = false;
    showPane();
    loadStyles();
    resume();
    element.scrollIntoView({ block: "nearest" });
    radios.find((r) => r.checked).focus();
  }

  function closePanel() {
    job.reset();
    element.hidden = true;
    button.setAttribute("aria-expanded", "false");
  }

  button.addEventListener("click", () => (element.hidden ? openPanel() : closePanel()));
  close.addEventListener("click", () => {
    closePanel();
    button.focus();
  });

  async function probe() {
    try {
      await api("/api/stylize?limit=1");
      available = true;
    } catch (e) {
      if (e.status === 503 || e.status === 404) available = false;
      else if (e.status !== 401) available = true;
    }
  }

  return {
    element,
    async show(d) {
      item = d;
      button.hidden = true;
      if (d.kind !== "image") return;
      if (available === null) await probe();
      if (item === d) button.hidden = !available;
    },
    reset() {
      seq++;
      closePanel();
      item = null;
      button.hidden = true;
      chosen = null;
      for (const b of paintings.querySelectorAll(".sty-painting")) b.setAttribute("aria-pressed", "false");
    },
  };
}
