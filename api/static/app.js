// Everlook web page: search box, filter chips, result grid with paging, item view, auth.

import {
  api, ApiError, basename, BlobUrls, getToken, hasToken, isAbort, onUnauthorized, setPicture,
  setToken, withParams,
} from "./api.js";
import {
  activeCount, emptyFilters, filterParams, MULTI, renderFacets, ROWS, syncChips, toggle,
} from "./facets.js";
import { createItemView } from "./item.js";
import { defaultKind, kindParams, kindPicker, KINDS } from "./kind.js";
import { microphone, soundFrame, stopPlaying, toggleCard, uploadable } from "./sound.js";

const $ = (id) => document.getElementById(id);
const els = {
  q: $("q"),
  form: $("search-form"),
  results: $("results"),
  loadMore: $("load-more"),
  sentinel: $("sentinel"),
  status: $("status"),
  fileInput: $("file-input"),
  pickFile: $("pick-file"),
  mic: $("mic"),
  facetRows: $("facet-rows"),
  dateRow: $("date-row"),
  after: $("after"),
  before: $("before"),
  clearFilters: $("clear-filters"),
  pill: $("query-pill"),
  pillImg: $("query-pill-img"),
  pillText: $("query-pill-text"),
  pillClear: $("query-pill-clear"),
  drop: $("drop-overlay"),
  auth: $("auth-dialog"),
  tokenForm: $("token-form"),
  tokenInput: $("token-input"),
  authMessage: $("auth-message"),
  forgetToken: $("forget-token"),
  kindPicker: $("kind-picker"),
};

const DEBOUNCE_MS = 250;
const pageParams = new URLSearchParams(location.search);
const PAGE_SIZE = clampInt(pageParams.get("k"), 1, 200, 24);

function clampInt(s, lo, hi, dflt) {
  const n = Number.parseInt(s ?? "", 10);
  return Number.isFinite(n) ? Math.min(hi, Math.max(lo, n)) : dflt;
}

const state = {
  filters: emptyFilters(),
  upload: null, // {kind: "image"|"audio", blob, name, preview}
  like: null, // {id, name, kind}
  kind: null, // "image" | "audio" | "both" the user chose; null: the query's default
  facets: null,
  cursor: null,
  seq: 0, // bumped by every new search; responses of older ones are dropped
  ctrl: null, // AbortController of the request in flight
  loading: false,
  shown: new Set(), // item ids in the grid
  focusIndex: 0,
};
const thumbs = new BlobUrls(); // object URLs of grid thumbnails (token mode)

// ---------------------------------------------------------------- status

let statusTimer = 0;
function say(message, { error = false, sticky = error } = {}) {
  clearTimeout(statusTimer);
  els.status.textContent = message || "";
  els.status.classList.toggle("error", Boolean(error && message));
  if (message && !sticky) statusTimer = setTimeout(() => say(""), 4000);
}
const sayError = (e) => say(e instanceof ApiError || e?.message ? e.message : String(e), { error: true });

// ---------------------------------------------------------------- URL state

/** Mirror the text query, filters and "like" in the address (replaceState: no history spam). */
function writeUrl() {
  const f = state.filters;
  const p = { q: els.q.value.trim(), ...filterParams(f), kind: state.kind, like: state.like?.id };
  if (pageParams.has("k")) p.k = PAGE_SIZE;
  const url = withParams(location.pathname, p) + location.hash;
  if (url !== location.pathname + location.search + location.hash) history.replaceState(history.state, "", url);
}

function readUrl() {
  els.q.value = pageParams.get("q") || "";
  for (const r of ROWS) {
    const vals = pageParams.getAll(r.param).filter(Boolean);
    state.filters[r.param] = MULTI.has(r.param) ? vals : vals.slice(0, 1);
  }
  state.filters.after = pageParams.get("after") || "";
  state.filters.before = pageParams.get("before") || "";
  els.after.value = state.filters.after;
  els.before.value = state.filters.before;
  const kind = pageParams.get("kind");
  state.kind = KINDS.includes(kind) ? kind : null;
  const like = pageParams.get("like");
  if (like && /^\d+$/.test(like)) {
    state.like = { id: Number(like), name: `item ${like}`, kind: "image" };
    api(`/api/items/${like}`).then((d) => {
      if (state.like?.id !== d.id) return;
      state.like.name = basename(d.paths?.[0]) || state.like.name;
      const wasDefault = effectiveKind();
      state.like.kind = d.kind;
      updatePill();
      if (effectiveKind() !== wasDefault) search(); // more like a sound: pictures and sounds
    }, () => {});
  }
}

// ---------------------------------------------------------------- searching

function describe() {
  if (state.like) return `Similar to ${state.like.name}`;
  if (state.upload) return `${state.upload.kind === "audio" ? "Sound" : "Image"}: ${state.upload.name}`;
  return "";
}

/** What the query is: "audio", "image", "text", or "none" (a listing of the newest). */
function modality() {
  const source = state.like || state.upload;
  if (source) return source.kind === "audio" ? "audio" : "image";
  return els.q.value.trim() ? "text" : "none";
}

const effectiveKind = () => state.kind || defaultKind(modality());
const librarySounds = () => Boolean(state.facets?.kinds?.some((k) => k.value === "audio" && k.count > 0));

/** The request for one page of the current search. */
function request(cursor, signal) {
  const q = els.q.value.trim();
  const params = {
    k: PAGE_SIZE, cursor, ...filterParams(state.filters),
    ...kindParams(effectiveKind(), modality(), librarySounds()),
  };
  if (state.like) return api(withParams(`/api/items/${state.like.id}/similar`, params), { signal });
  if (state.upload) {
    const body = new FormData();
    body.append("file", state.upload.blob, state.upload.name);
    if (q && state.upload.kind === "image") body.append("q", q);
    const path = state.upload.kind === "audio" ? "/api/search/audio" : "/api/search/image";
    return api(withParams(path, params), { method: "POST", body, signal });
  }
  return api(withParams("/api/search", { q, ...params }), { signal });
}

/** Start a new search (replacing the grid once its first page arrives). */
async function search() {
  clearTimeout(typingTimer);
  state.seq++;
  state.ctrl?.abort();
  const seq = state.seq;
  const ctrl = new AbortController();
  state.ctrl = ctrl;
  state.loading = true;
  els.results.setAttribute("aria-busy", "true");
  els.loadMore.disabled = true;
  writeUrl();
  updatePill();
  updateClearFilters();
  picker.show(effectiveKind());
  try {
    const page = await request(null, ctrl.signal);
    if (seq !== state.seq) return; // a newer search started meanwhile
    clearGrid();
    state.cursor = page.next_cursor || null;
    const added = appendResults(page.results || []);
    if (!added) say(emptyMessage(), { sticky: true });
    else say("");
    state.loading = false;
    afterPage();
  } catch (e) {
    if (isAbort(e) || seq !== state.seq) return;
    state.loading = false;
    const noSoundSpace = e.status === 409 && state.upload?.kind === "audio";
    if (state.upload && ([413, 415, 422, 501].includes(e.status) || noSoundSpace)) {
      // The file itself was refused (or sound search is off): go back to the search before it.
      setUpload(null);
      updatePill();
      picker.show(effectiveKind());
    }
    if (e.status !== 401) sayError(e);
    els.loadMore.disabled = false;
  } finally {
    if (seq === state.seq) els.results.setAttribute("aria-busy", "false");
  }
}

function emptyMessage() {
  if (els.q.value.trim() || state.upload || state.like || activeCount(state.filters)) {
    return "Nothing matches. Try fewer filters or other words.";
  }
  return "The library is empty. Index a folder with `everlook index PATH`.";
}

/** Load the next page of the current search into the grid. */
async function loadMore() {
  if (state.loading || !state.cursor) return;
  const seq = state.seq;
  const ctrl = new AbortController();
  state.ctrl = ctrl;
  state.loading = true;
  els.loadMore.disabled = true;
  els.loadMore.textContent = "Loading…";
  try {
    const page = await request(state.cursor, ctrl.signal);
    if (seq !== state.seq) return;
    state.cursor = page.next_cursor || null;
    appendResults(page.results || []);
    state.loading = false;
    afterPage();
  } catch (e) {
    if (isAbort(e) || seq !== state.seq) return;
    state.loading = false;
    if (e.status !== 401) sayError(e);
  } finally {
    if (seq === state.seq) {
      els.loadMore.textContent = "Load more";
      els.loadMore.disabled = false;
    }
  }
}

function afterPage() {
  els.loadMore.hidden = !state.cursor;
  els.loadMore.disabled = false;
  els.loadMore.textContent = "Load more";
  view.updateNav();
  // A page that does not fill the screen: keep filling it (the observer only fires on change).
  if (state.cursor && observer && nearBottom()) requestAnimationFrame(() => nearBottom() && loadMore());
}

function nearBottom() {
  const r = els.sentinel.getBoundingClientRect();
  return r.top < window.innerHeight + 600 && els.results.childElementCount > 0;
}

let typingTimer = 0;
els.q.addEventListener("input", () => {
  if (state.like) state.like = null; // typing starts a text search
  if (state.upload?.kind === "audio") setUpload(null); // (words do not go with a sound)
  convertSeq++;
  clearTimeout(typingTimer);
  typingTimer = setTimeout(search, DEBOUNCE_MS);
});
els.form.addEventListener("submit", (ev) => {
  ev.preventDefault();
  search();
});
els.loadMore.addEventListener("click", loadMore);

const observer = "IntersectionObserver" in window
  ? new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting)) loadMore();
  }, { rootMargin: "0px 0px 600px 0px" })
  : null;
observer?.observe(els.sentinel);

// ---------------------------------------------------------------- the grid

const lazyThumbs = "IntersectionObserver" in window
  ? new IntersectionObserver((entries) => {
    for (const e of entries) {
      if (!e.isIntersecting) continue;
      lazyThumbs.unobserve(e.target);
      const img = e.target;
      if (img.dataset.src) setPicture(img, img.dataset.src, thumbs);
    }
  }, { rootMargin: "400px" })
  : null;

function clearGrid() {
  stopPlaying();
  lazyThumbs?.disconnect();
  thumbs.clear();
  els.results.replaceChildren();
  state.shown.clear();
  state.focusIndex = 0;
}

const srcAt = (thumb, size) => thumb.replace(/([?&]size=)\d+/, `$1${size}`);

function resultElement(r) {
  const name = basename(r.path) || `Item ${r.item_id}`;
  const a = document.createElement("a");
  a.className = "result";
  a.href = `#item=${r.item_id}`;
  a.tabIndex = -1;
  a.dataset.itemId = String(r.item_id);
  a.dataset.path = r.path || "";
  a.dataset.kind = r.kind || "";
  if (r.file) a.dataset.file = r.file;
  if (r.score !== null && r.score !== undefined) a.dataset.score = String(r.score);
  a.title = r.path || name;

  const frame = document.createElement("span");
  frame.className = "thumb";
  const img = document.createElement("img");
  img.alt = name;
  img.loading = "lazy";
  img.decoding = "async";
  img.width = 256;
  img.height = r.kind === "audio" ? 64 : 256; // a sound's thumbnail is its waveform, 4:1
  const thumb = r.thumbnail || `/api/items/${r.item_id}/thumbnail?size=256`;
  img.addEventListener("error", () => frame.classList.add("broken"), { once: true });
  if (hasToken()) {
    img.dataset.src = thumb;
    if (lazyThumbs) lazyThumbs.observe(img);
    else setPicture(img, thumb, thumbs);
  } else {
    img.src = thumb;
    if (/[?&]size=256\b/.test(thumb)) {
      img.srcset = `${thumb} 256w, ${srcAt(thumb, 512)} 512w`;
      img.sizes = "(max-width: 600px) 34vw, 200px";
    }
  }
  frame.append(img);
  if (r.kind === "audio") soundFrame(frame, r, name, thumbs, sayError);

  const score = document.createElement("span");
  score.className = "score";
  if (r.score !== null && r.score !== undefined) {
    score.textContent = Number(r.score).toFixed(2);
    score.title = `Similarity ${Number(r.score).toFixed(3)}`;
  }
  const caption = document.createElement("span");
  caption.className = "caption";
  caption.textContent = name;
  a.append(frame, score, caption);
  return a;
}

/** Append results not yet shown; returns how many were added. */
function appendResults(results) {
  const frag = document.createDocumentFragment();
  let n = 0;
  for (const r of results) {
    if (r === null || r.item_id === undefined || state.shown.has(r.item_id)) continue;
    state.shown.add(r.item_id);
    frag.append(resultElement(r));
    n++;
  }
  const first = els.results.childElementCount === 0;
  els.results.append(frag);
  if (first && els.results.firstElementChild) els.results.firstElementChild.tabIndex = 0;
  return n;
}

const cards = () => els.results.children;

function columns() {
  const tracks = getComputedStyle(els.results).gridTemplateColumns.split(" ").filter(Boolean);
  return Math.max(1, tracks.length);
}

function focusCard(i) {
  const list = cards();
  if (!list.length) return;
  i = Math.max(0, Math.min(list.length - 1, i));
  list[state.focusIndex]?.setAttribute("tabindex", "-1");
  state.focusIndex = i;
  list[i].tabIndex = 0;
  list[i].focus();
  if (i >= list.length - columns() && state.cursor) loadMore();
}

els.results.addEventListener("focusin", (ev) => {
  const card = ev.target.closest(".result");
  if (!card) return;
  const i = Array.prototype.indexOf.call(cards(), card);
  if (i >= 0 && i !== state.focusIndex) {
    cards()[state.focusIndex]?.setAttribute("tabindex", "-1");
    state.focusIndex = i;
    card.tabIndex = 0;
  }
});

els.results.addEventListener("keydown", (ev) => {
  if (!ev.target.closest(".result") || ev.altKey || ev.ctrlKey || ev.metaKey) return;
  const i = state.focusIndex;
  const moves = {
    ArrowRight: i + 1,
    ArrowLeft: i - 1,
    ArrowDown: i + columns(),
    ArrowUp: i - columns(),
    Home: 0,
    End: cards().length - 1,
  };
  if (ev.key in moves) {
    ev.preventDefault();
    focusCard(moves[ev.key]);
  } else if (ev.key === " ") {
    ev.preventDefault();
    const card = ev.target.closest(".result");
    if (!toggleCard(card, thumbs, sayError)) card.click(); // Space plays a sound, opens a picture
  }
});

function neighbour(id, step) {
  const list = [...cards()];
  const i = list.findIndex((c) => c.dataset.itemId === String(id));
  const j = i + step;
  if (i < 0 || j < 0 || j >= list.length) return null;
  return Number(list[j].dataset.itemId);
}

// ---------------------------------------------------------------- filters

function buildFacets() {
  if (!state.facets) return;
  renderFacets(els.facetRows, state.facets, state.filters, onChip);
  const dates = state.facets.dates || {};
  const min = dates.min ? String(dates.min).slice(0, 10) : "";
  const max = dates.max ? String(dates.max).slice(0, 10) : "";
  for (const input of [els.after, els.before]) {
    input.min = min;
    input.max = max;
  }
  els.dateRow.hidden = !(min || max || state.filters.after || state.filters.before);
  updateClearFilters();
}

function onChip(param, value) {
  toggle(state.filters, param, value);
  syncChips(els.facetRows, state.filters);
  search();
}

function updateClearFilters() {
  els.clearFilters.hidden = activeCount(state.filters) === 0;
}

for (const [input, key] of [[els.after, "after"], [els.before, "before"]]) {
  input.addEventListener("change", () => {
    if (input.value && !/^\d{4}-\d{2}-\d{2}$/.test(input.value)) return;
    state.filters[key] = input.value;
    search();
  });
}

els.clearFilters.addEventListener("click", () => {
  state.filters = emptyFilters();
  els.after.value = "";
  els.before.value = "";
  syncChips(els.facetRows, state.filters);
  buildFacets();
  search();
  els.q.focus();
});

async function loadFacets() {
  try {
    const hadSounds = librarySounds();
    state.facets = await api("/api/facets");
    buildFacets();
    picker.counts(state.facets.kinds);
    // "Both" for words or a picture asks ImageBind once the library is known to hold sounds.
    const m = modality();
    if (!hadSounds && librarySounds() && effectiveKind() === "both" && m !== "audio" && m !== "none") search();
  } catch (e) {
    if (e.status !== 401 && !isAbort(e)) sayError(e);
  }
}

// ---------------------------------------------------------------- kind: pictures / sounds / both

const picker = kindPicker(els.kindPicker, (kind) => {
  state.kind = kind;
  search();
});

// ---------------------------------------------------------------- query by file / sound / item

function updatePill() {
  const text = describe();
  els.pill.hidden = !text;
  els.pillText.textContent = text;
  const preview = state.upload?.preview;
  els.pillImg.hidden = !preview;
  if (preview) {
    els.pillImg.src = preview;
    els.pillImg.alt = state.upload.name;
  } else els.pillImg.removeAttribute("src");
  els.q.placeholder = state.upload?.kind === "image"
    ? "Add words to the image search (optional)"
    : state.like
      ? "Type to search by words instead"
      : "Search — try “a red circle” or “beach -people”";
}

function setUpload(upload) {
  if (state.upload?.preview) URL.revokeObjectURL(state.upload.preview);
  state.upload = upload;
}

const AUDIO_EXT = /\.(mp3|wav|ogg|oga|flac|m4a|aac|opus|weba|webm)$/i;
const IMAGE_EXT = /\.(jpe?g|png|gif|webp|bmp|tiff?|avif|heic|heif)$/i;

function kindOf(file) {
  if (file.type.startsWith("image/")) return "image";
  if (file.type.startsWith("audio/")) return "audio";
  if (AUDIO_EXT.test(file.name || "")) return "audio";
  if (IMAGE_EXT.test(file.name || "")) return "image";
  return null;
}

let convertSeq = 0; // bumped by anything that supersedes a sound still being converted

async function searchWithFile(file) {
  const kind = kindOf(file);
  if (!kind) {
    say(`“${file.name}” is neither an image nor a sound.`, { error: true });
    return;
  }
  const mine = ++convertSeq;
  let upload = { blob: file, name: file.name || (kind === "audio" ? "recording" : "image") };
  if (kind === "audio") {
    // The server reads WAV, FLAC, Ogg and MP3; anything else (a WebM recording, an .m4a) is
    // decoded here and sent as WAV.
    say("Reading the sound…", { sticky: true });
    try {
      upload = await uploadable(file, upload.name);
    } catch (e) {
      if (mine === convertSeq) say(`“${upload.name}”: ${e.message}`, { error: true });
      return;
    }
    if (mine !== convertSeq) return;
  }
  state.like = null;
  setUpload({
    kind,
    ...upload,
    preview: kind === "image" ? URL.createObjectURL(file) : null,
  });
  say(kind === "audio" ? "Searching with the sound…" : "Searching with the image…", { sticky: true });
  search();
}

els.pickFile.addEventListener("click", () => els.fileInput.click());
els.fileInput.addEventListener("change", () => {
  const file = els.fileInput.files?.[0];
  if (file) searchWithFile(file);
  els.fileInput.value = ""; // the same file again fires change again
});

els.pillClear.addEventListener("click", () => {
  convertSeq++;
  setUpload(null);
  state.like = null;
  search();
  els.q.focus();
});

// Drag and drop anywhere on the page.
let dragDepth = 0;
const hasFiles = (ev) => [...(ev.dataTransfer?.types || [])].includes("Files");
window.addEventListener("dragenter", (ev) => {
  if (!hasFiles(ev)) return;
  ev.preventDefault();
  dragDepth++;
  els.drop.hidden = false;
});
window.addEventListener("dragover", (ev) => {
  if (!hasFiles(ev)) return;
  ev.preventDefault();
  ev.dataTransfer.dropEffect = "copy";
});
window.addEventListener("dragleave", () => {
  dragDepth = Math.max(0, dragDepth - 1);
  if (!dragDepth) els.drop.hidden = true;
});
window.addEventListener("drop", (ev) => {
  dragDepth = 0;
  els.drop.hidden = true;
  const file = ev.dataTransfer?.files?.[0];
  if (!file) return;
  ev.preventDefault();
  searchWithFile(file);
});

// Paste an image (e.g. a screenshot) to search with it.
window.addEventListener("paste", (ev) => {
  const file = [...(ev.clipboardData?.files || [])].find((f) => kindOf(f));
  if (!file) return;
  ev.preventDefault();
  searchWithFile(file);
});

// Microphone: shown only where the browser can record; the recording goes through
// searchWithFile, which turns the browser's WebM/MP4 into WAV.
microphone(els.mic, { onRecorded: searchWithFile, say });

// ---------------------------------------------------------------- the item view and the hash

const ITEM_HASH = /^#item=(\d+)$/;
let itemEntryPushed = false; // the open item's history entry was added while on the page

const view = createItemView({
  onClose: closeItem,
  onError: (e) => e.status !== 401 && sayError(e),
  onSimilar: async (d) => {
    await closeItem();
    setUpload(null);
    convertSeq++;
    state.like = { id: d.id, name: basename(d.paths?.[0]) || `item ${d.id}`, kind: d.kind };
    els.q.value = ""; // "more like this" takes no words; typing goes back to a word search
    search();
    window.scrollTo({ top: 0 });
  },
  onFilter: async (param, value) => {
    await closeItem();
    if (!state.filters[param].includes(value)) toggle(state.filters, param, value);
    syncChips(els.facetRows, state.filters);
    buildFacets();
    search();
  },
  neighbour,
  onNavigate: (id) => {
    history.replaceState(history.state, "", `${location.pathname}${location.search}#item=${id}`);
    view.open(id);
    const i = [...cards()].findIndex((c) => c.dataset.itemId === String(id));
    if (i >= 0) {
      state.focusIndex = i;
      cards()[i].scrollIntoView({ block: "nearest" });
    }
  },
});

let lastFocus = null;
function syncHash(fromNavigation) {
  const m = ITEM_HASH.exec(location.hash);
  if (m) {
    if (!view.isOpen) lastFocus = document.activeElement;
    if (fromNavigation) itemEntryPushed = true;
    view.open(Number(m[1]));
  } else if (view.isOpen) {
    view.hide();
    itemEntryPushed = false;
    restoreFocus();
  }
}

function restoreFocus() {
  const card = [...cards()].find((c) => c === lastFocus) || cards()[state.focusIndex];
  (card || els.q).focus?.({ preventScroll: false });
}

/** Close the item view; through history.back() when opening it added an entry. */
function closeItem() {
  if (!view.isOpen) return Promise.resolve();
  if (itemEntryPushed && ITEM_HASH.test(location.hash)) {
    return new Promise((resolve) => {
      const done = () => {
        window.removeEventListener("hashchange", done);
        clearTimeout(t);
        if (view.isOpen) syncHash(false);
        resolve();
      };
      const t = setTimeout(done, 500);
      window.addEventListener("hashchange", done);
      history.back();
    });
  }
  history.replaceState(history.state, "", location.pathname + location.search);
  view.hide();
  itemEntryPushed = false;
  restoreFocus();
  return Promise.resolve();
}

window.addEventListener("hashchange", () => syncHash(true));

// ---------------------------------------------------------------- keyboard

document.addEventListener("keydown", (ev) => {
  if (ev.key !== "/" || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const t = ev.target;
  if (t.closest?.("input, textarea, select, [contenteditable=''], [contenteditable=true], dialog[open]")) return;
  if (document.querySelector("dialog[open]")) return;
  ev.preventDefault();
  els.q.focus();
  els.q.select();
});
els.q.addEventListener("keydown", (ev) => {
  if (ev.key === "ArrowDown" && cards().length) {
    ev.preventDefault();
    focusCard(state.focusIndex);
  } else if (ev.key === "Escape" && els.q.value) {
    els.q.value = "";
    search();
  }
});

// ---------------------------------------------------------------- auth

let authRetry = false;
onUnauthorized(() => {
  els.authMessage.textContent = hasToken()
    ? "The server did not accept the saved token. Enter the current one."
    : "This Everlook server asks for an API token. It is kept in this browser only.";
  say("An API token is needed.", { error: true });
  authRetry = true;
  if (!els.auth.open) {
    els.auth.showModal();
    els.tokenInput.focus();
  }
});
els.tokenForm.addEventListener("submit", (ev) => {
  ev.preventDefault();
  const token = els.tokenInput.value.trim();
  if (!token) return;
  setToken(token);
  els.tokenInput.value = "";
  els.auth.close();
  els.forgetToken.hidden = false;
  say("Token saved.");
  if (authRetry) {
    authRetry = false;
    loadFacets();
    search();
    if (view.isOpen) view.reload();
  }
});
els.auth.addEventListener("cancel", () => say("Without the token nothing can be shown.", { error: true }));
els.forgetToken.hidden = !getToken();
els.forgetToken.addEventListener("click", () => {
  setToken("");
  els.forgetToken.hidden = true;
  say("Token forgotten.");
  loadFacets();
  search();
});

// ---------------------------------------------------------------- start

readUrl();
loadFacets();
search();
syncHash(false);
