// Filter chips built from GET /api/facets.

/** Chip rows: facets key, the search parameter it sets, and whether several may be chosen. */
export const ROWS = [
  { key: "objects", param: "has", name: "Objects", multi: true },
  { key: "tags", param: "tag", name: "Tags", multi: true },
  { key: "styles", param: "style", name: "Styles", multi: false },
  { key: "labels", param: "label", name: "Labels", multi: true },
];
// (kind is not a chip row: the kind selector, kind.js, chooses it and shows the counts)
export const MULTI = new Set(ROWS.filter((r) => r.multi).map((r) => r.param));
const TOP = 12;

/**
 * Filters state: {has: [], tag: [], label: [], style: []} (single-valued ones hold at most
 * one value), plus after/before strings.
 */
export function emptyFilters() {
  return { has: [], tag: [], label: [], style: [], after: "", before: "" };
}

export function activeCount(f) {
  return ROWS.reduce((n, r) => n + f[r.param].length, 0) + (f.after ? 1 : 0) + (f.before ? 1 : 0);
}

/** Toggle value of param in filters (in place). Returns true when it is now on. */
export function toggle(filters, param, value) {
  const list = filters[param];
  const i = list.indexOf(value);
  if (i >= 0) {
    list.splice(i, 1);
    return false;
  }
  if (MULTI.has(param)) list.push(value);
  else filters[param] = [value];
  return true;
}

/** Query parameters for the filters. */
export function filterParams(f) {
  const p = {};
  for (const r of ROWS) {
    if (f[r.param].length) p[r.param] = r.multi ? [...f[r.param]] : f[r.param][0];
  }
  if (f.after) p.after = f.after;
  if (f.before) p.before = f.before;
  return p;
}

function chip(row, value, count, pressed) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = "chip";
  b.dataset.facet = row.param;
  b.dataset.group = row.key;
  b.dataset.value = value;
  b.setAttribute("aria-pressed", String(pressed));
  const label = document.createElement("span");
  label.className = "chip-label";
  label.textContent = value;
  b.append(label);
  if (count !== null && count !== undefined) {
    const c = document.createElement("span");
    c.className = "count";
    c.textContent = formatCount(count);
    c.setAttribute("aria-label", `${count} items`);
    b.append(c);
  }
  return b;
}

export function formatCount(n) {
  if (n >= 1e6) return `${(n / 1e6).toFixed(n >= 1e7 ? 0 : 1)}M`;
  if (n >= 1e4) return `${Math.round(n / 1e3)}k`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}k`;
  return String(n);
}

/**
 * Build the chip rows into container. onToggle(param, value) is called on a click; the caller
 * updates its filters and calls sync() to refresh the pressed states.
 */
export function renderFacets(container, facets, filters, onToggle) {
  container.replaceChildren();
  const expanded = new Set();
  for (const row of ROWS) {
    const values = Array.isArray(facets?.[row.key]) ? facets[row.key] : [];
    const chosen = filters[row.param];
    if (!values.length && !chosen.length) continue;
    const el = document.createElement("div");
    el.className = "facet-row";
    el.dataset.row = row.key;
    const name = document.createElement("span");
    name.className = "facet-name";
    name.id = `facet-${row.key}`;
    name.textContent = row.name;
    const list = document.createElement("div");
    list.className = "chips";
    list.setAttribute("role", "group");
    list.setAttribute("aria-labelledby", name.id);
    el.append(name, list);
    container.append(el);

    const fill = (all) => {
      list.replaceChildren();
      const known = new Set(values.map((v) => v.value));
      // Chosen values stay visible even when they are not among the top ones (or unknown).
      for (const v of chosen) if (!known.has(v)) list.append(chip(row, v, null, true));
      const shown = all ? values : values.filter((v, i) => i < TOP || chosen.includes(v.value));
      for (const v of shown) list.append(chip(row, v.value, v.count, chosen.includes(v.value)));
      const rest = values.length - shown.length;
      if (rest > 0) {
        const more = document.createElement("button");
        more.type = "button";
        more.className = "chip more-chip";
        more.textContent = `+${rest} more`;
        more.setAttribute("aria-label", `Show ${rest} more ${row.name.toLowerCase()}`);
        more.addEventListener("click", () => {
          expanded.add(row.key);
          fill(true);
          list.querySelectorAll(".chip")[shown.length]?.focus();
        });
        list.append(more);
      }
    };
    fill(expanded.has(row.key));
    list.addEventListener("click", (ev) => {
      const b = ev.target.closest(".chip[data-facet]");
      if (b) onToggle(b.dataset.facet, b.dataset.value);
    });
  }
}

/** Refresh aria-pressed of every chip from filters. */
export function syncChips(container, filters) {
  for (const b of container.querySelectorAll(".chip[data-facet]")) {
    b.setAttribute("aria-pressed", String(filters[b.dataset.facet]?.includes(b.dataset.value)));
  }
}
