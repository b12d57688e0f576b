// The kind selector: Pictures / Sounds / Both, and what each asks of the API.

import { formatCount } from "./facets.js";

export const KINDS = ["image", "audio", "both"];

/**
 * The kind and space parameters of a search. modality is what the query is: "text",
 * "image", "audio" (an upload or a "more like" item of that kind) or "none" (a listing).
 * Without a kind the API answers a sound query with pictures and sounds through ImageBind,
 * but words and pictures through CLIP, which holds pictures only: so "Both" for them asks
 * ImageBind by name, where the library holds sounds at all (else CLIP answers the same).
 */
export function kindParams(kind, modality, librarySounds) {
  if (kind === "image" || kind === "audio") return { kind };
  if (modality !== "audio" && modality !== "none" && librarySounds) return { space: "imagebind" };
  return {};
}

/** Words and pictures look for pictures; a sound looks for pictures and sounds. */
export const defaultKind = (modality) => (modality === "audio" ? "both" : "image");

/**
 * Wire the radio group in container: onChange(kind) when the user picks one.
 * Returns {show(kind), counts(facetKinds)}.
 */
export function kindPicker(container, onChange) {
  const radios = [...container.querySelectorAll("input[type=radio]")];
  for (const r of radios) r.addEventListener("change", () => r.checked && onChange(r.value));
  return {
    /** Check the radio of the kind in effect (the user's choice or the query's default). */
    show(kind) {
      for (const r of radios) r.checked = r.value === kind;
    },
    /** Item counts from /api/facets `kinds` beside Pictures and Sounds. */
    counts(kinds) {
      const n = Object.fromEntries((kinds || []).map((k) => [k.value, k.count]));
      for (const r of radios) {
        const c = r.closest("label")?.querySelector(".count");
        if (c) c.textContent = r.value in n ? formatCount(n[r.value]) : "";
      }
    },
  };
}
