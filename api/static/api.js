// Talking to the Everlook API: the bearer token, JSON errors, and pictures that need the token.

const TOKEN_KEY = "everlook.token";

export function getToken() {
  try {
    return localStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return "";
  }
}

export function setToken(token) {
  try {
    if (token) localStorage.setItem(TOKEN_KEY, token);
    else localStorage.removeItem(TOKEN_KEY);
  } catch {
    /* storage disabled: the token lives as long as the page */
  }
  memoryToken = token;
}

let memoryToken = "";
const currentToken = () => getToken() || memoryToken;

/** An API error: {"error": {"status", "code", "message"}} from the server, or a network failure. */
export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

const unauthorizedListeners = new Set();
/** fn() is called whenever any request comes back 401. */
export function onUnauthorized(fn) {
  unauthorizedListeners.add(fn);
}

export const isAbort = (e) => e && e.name === "AbortError";

/** "/api/search" + {q: "x", has: ["a", "b"]} -> "/api/search?q=x&has=a&has=b" (empty values left out). */
export function withParams(path, params = {}) {
  const sp = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    for (const v of Array.isArray(value) ? value : [value]) {
      if (v !== undefined && v !== null && v !== "") sp.append(key, String(v));
    }
  }
  const qs = sp.toString();
  return qs ? `${path}${path.includes("?") ? "&" : "?"}${qs}` : path;
}

async function toError(res) {
  let body = null;
  try {
    body = await res.json();
  } catch {
    /* not JSON: a proxy's page, say */
  }
  const e = body && body.error;
  if (e && typeof e.message === "string") {
    return new ApiError(e.status || res.status, e.code || "error", e.message, e.details);
  }
  return new ApiError(res.status, "http", `${res.status} ${res.statusText || "error"}`.trim());
}

/**
 * fetch() with the token. Resolves to parsed JSON (or the Response when raw), rejects with
 * ApiError (or an AbortError when signal aborts).
 */
export async function api(path, { method = "GET", body, signal, raw = false, headers = {} } = {}) {
  const h = { Accept: raw ? "*/*" : "application/json", ...headers };
  const token = currentToken();
  if (token) h.Authorization = `Bearer ${token}`;
  let res;
  try {
    res = await fetch(path, { method, body, signal, headers: h });
  } catch (e) {
    if (isAbort(e)) throw e;
    throw new ApiError(0, "network", "Cannot reach the Everlook server. Is it running?");
  }
  if (!res.ok) {
    const err = await toError(res);
    if (res.status === 401) for (const fn of unauthorizedListeners) fn(err);
    throw err;
  }
  return raw ? res : res.json();
}

export const hasToken = () => Boolean(currentToken());

/**
 * Object URLs made from fetched pictures, so that they can all be revoked when the pictures
 * they back are replaced.
 */
export class BlobUrls {
  constructor() {
    this.urls = new Set();
    this.ctrl = new AbortController();
  }
  async load(path) {
    const res = await api(path, { raw: true, signal: this.ctrl.signal });
    const url = URL.createObjectURL(await res.blob());
    if (this.ctrl.signal.aborted) {
      URL.revokeObjectURL(url);
      throw new DOMException("aborted", "AbortError");
    }
    this.urls.add(url);
    return url;
  }
  revoke(url) {
    if (this.urls.delete(url)) URL.revokeObjectURL(url);
  }
  /** Revoke every URL and abort the fetches still running. */
  clear() {
    this.ctrl.abort();
    this.ctrl = new AbortController();
    for (const url of this.urls) URL.revokeObjectURL(url);
    this.urls.clear();
  }
}

/**
 * Point img at an API picture. Without a token a plain src (the browser caches and lazy-loads);
 * with one, the picture is fetched with the header and shown through an object URL from pool.
 */
export function setPicture(img, path, pool) {
  if (!hasToken()) {
    img.src = path;
    return Promise.resolve();
  }
  return pool.load(path).then(
    (url) => {
      img.src = url;
    },
    (e) => {
      if (!isAbort(e)) img.dispatchEvent(new Event("error"));
    },
  );
}

export const basename = (path) => {
  const s = String(path || "");
  const i = Math.max(s.lastIndexOf("/"), s.lastIndexOf("\\"));
  return i >= 0 ? s.slice(i + 1) : s;
};
