// Sounds on the page: their cards in the grid (waveform, duration, play/pause), one sound
// playing at a time, the microphone, and turning what the server cannot decode (a
// browser's WebM/MP4 recording, an .m4a) into a WAV before it is uploaded.

import { hasToken, isAbort } from "./api.js";

/**
 * 75.9 -> "1:15", 3725 -> "1:02:05": whole seconds cut down, as the browser's own player
 * shows them beside it; a sound shorter than a second still shows "0:01".
 */
export function formatDuration(seconds) {
  const s = Number(seconds);
  if (!Number.isFinite(s) || s < 0) return "";
  let total = Math.floor(s);
  if (s > 0 && total === 0) total = 1;
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const ss = String(total % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${ss}` : `${m}:${ss}`;
}

// ---------------------------------------------------------------- playing in the grid

let playing = null; // the <audio> element that plays now

/** Pause whatever grid sound plays (a new search, the item view opening). */
export function stopPlaying() {
  playing?.pause();
}

function span(cls, text) {
  const e = document.createElement("span");
  e.className = cls;
  if (text) e.textContent = text;
  return e;
}

/**
 * Turn a card's thumbnail frame into a sound's: the waveform strip, its duration, a ♪ badge
 * and a play/pause button driving an <audio preload="none"> of the row's file. With a token
 * the file is fetched (with the header) on the first play, through pool.
 */
export function soundFrame(frame, r, name, pool, onError) {
  frame.classList.add("sound");
  const audio = document.createElement("audio");
  audio.preload = "none";
  audio.className = "card-audio";
  if (!hasToken()) audio.src = r.file;

  const play = document.createElement("button");
  play.type = "button";
  play.className = "play";
  play.tabIndex = -1; // the card holds the focus; Space on it plays (app.js)
  play.setAttribute("aria-label", `Play ${name}`);
  play.setAttribute("aria-pressed", "false");

  const progress = span("wave-progress");
  const duration = span("duration", formatDuration(r.duration_s));
  const badge = span("kind-badge", "♪");
  badge.title = "Sound";

  const show = () => {
    const on = !audio.paused;
    frame.classList.toggle("playing", on);
    play.setAttribute("aria-pressed", String(on));
    play.setAttribute("aria-label", `${on ? "Pause" : "Play"} ${name}`);
  };
  audio.addEventListener("play", () => {
    if (playing && playing !== audio) playing.pause();
    playing = audio;
    show();
  });
  audio.addEventListener("pause", show);
  audio.addEventListener("ended", () => {
    progress.style.width = "0";
    show();
  });
  audio.addEventListener("timeupdate", () => {
    const total = audio.duration || r.duration_s;
    if (total > 0) progress.style.width = `${Math.min(100, (100 * audio.currentTime) / total)}%`;
    if (!audio.paused) duration.textContent = `${formatDuration(audio.currentTime)} / ${formatDuration(total)}`;
  });
  audio.addEventListener("error", () => {
    if (!audio.getAttribute("src")) return;
    frame.classList.add("unplayable");
    play.disabled = true;
    onError(new Error(`Cannot play “${name}” in this browser.`));
  });

  play.addEventListener("click", (ev) => {
    ev.preventDefault(); // the button sits in the card's link: play, do not open
    ev.stopPropagation();
    toggle(audio, r, pool, onError);
  });
  frame.append(progress, play, duration, badge, audio);
}

/** Play or pause a sound card's audio. */
export async function toggle(audio, r, pool, onError) {
  if (!audio.paused) {
    audio.pause();
    return;
  }
  try {
    if (!audio.getAttribute("src")) audio.src = await pool.load(r.file);
    await audio.play();
  } catch (e) {
    // A pause or a new search before play() settled is not a failure.
    if (!isAbort(e)) onError(e);
  }
}

/** Play/pause the sound of a card (Space on a focused card). True when it is a sound card. */
export function toggleCard(card, pool, onError) {
  const audio = card.querySelector("audio.card-audio");
  if (!audio) return false;
  const r = { file: card.dataset.file };
  toggle(audio, r, pool, onError);
  return true;
}

// ---------------------------------------------------------------- the microphone

const MAX_RECORDING_MS = 15_000;

/**
 * Wire the Record/Stop button: shown only where the browser can record. onRecorded(file)
 * gets what MediaRecorder made (WebM/Opus in Chromium, Ogg in Firefox, MP4 in Safari).
 */
export function microphone(button, { onRecorded, say }) {
  const md = navigator.mediaDevices;
  if (!md || typeof md.getUserMedia !== "function" || !("MediaRecorder" in window)) return;
  button.hidden = false;
  const label = button.querySelector(".label");
  let recorder = null;
  let timer = 0;
  const show = (on) => {
    button.setAttribute("aria-pressed", String(on));
    button.classList.toggle("recording", on);
    label.textContent = on ? "Stop" : "Record";
  };
  button.addEventListener("click", async () => {
    if (recorder) {
      recorder.stop();
      return;
    }
    let stream;
    try {
      stream = await md.getUserMedia({ audio: true });
    } catch (e) {
      say(`No microphone: ${e.message || e.name}`, { error: true });
      return;
    }
    const chunks = [];
    recorder = new MediaRecorder(stream);
    recorder.addEventListener("dataavailable", (ev) => ev.data.size && chunks.push(ev.data));
    recorder.addEventListener("stop", () => {
      clearTimeout(timer);
      for (const t of stream.getTracks()) t.stop();
      const type = recorder.mimeType || "audio/webm";
      recorder = null;
      show(false);
      if (!chunks.length) return;
      const ext = type.includes("ogg") ? "ogg" : type.includes("mp4") ? "m4a" : "webm";
      onRecorded(new File(chunks, `recording.${ext}`, { type }));
    });
    recorder.start();
    show(true);
    say(`Recording… press Stop when done (at most ${MAX_RECORDING_MS / 1000} s).`, { sticky: true });
    timer = setTimeout(() => recorder?.stop(), MAX_RECORDING_MS);
  });
}

// ---------------------------------------------------------------- uploads the server takes

const TARGET_RATE = 16_000; // what ImageBind listens at: more would only be resampled away

/**
 * Whether the server decodes these bytes as they are: WAV, AIFF, FLAC, Ogg, MP3 (told by
 * their first bytes like the server does, not by a name or a type a browser guessed).
 */
export async function serverDecodes(blob) {
  const b = new Uint8Array(await blob.slice(0, 12).arrayBuffer());
  const tag = (o, s) => [...s].every((c, i) => b[o + i] === c.charCodeAt(0));
  if (tag(0, "RIFF") && tag(8, "WAVE")) return true;
  if (tag(0, "RF64") && tag(8, "WAVE")) return true;
  if (tag(0, "FORM") && (tag(8, "AIFF") || tag(8, "AIFC"))) return true;
  if (tag(0, "fLaC") || tag(0, "OggS") || tag(0, "ID3")) return true;
  // An MPEG audio frame: 11 sync bits and a layer; ADTS (AAC) has layer 00 and is not MP3.
  return b[0] === 0xff && (b[1] & 0xe0) === 0xe0 && (b[1] & 0x06) !== 0;
}

/**
 * Decode any sound this browser can read (WebM/Opus from MediaRecorder, MP4/AAC, ...) and
 * re-encode it as 16 kHz mono 16-bit WAV, which the server reads.
 */
export async function toWav(blob) {
  const Offline = window.OfflineAudioContext || window.webkitOfflineAudioContext;
  if (!Offline) throw new Error("This browser cannot convert sound (no Web Audio).");
  const bytes = await blob.arrayBuffer();
  // An offline context needs no user gesture (an AudioContext would start suspended and
  // warn), and decodeAudioData resamples to the context's rate.
  let decoded;
  try {
    decoded = await new Offline(1, 1, TARGET_RATE).decodeAudioData(bytes);
  } catch {
    throw new Error("This browser cannot read this sound. Send WAV, FLAC, Ogg or MP3.");
  }
  const mono = await downmix(decoded, Offline);
  if (!mono.length) throw new Error("The sound is empty.");
  return new Blob([encodeWav(mono, TARGET_RATE)], { type: "audio/wav" });
}

/** Mono at TARGET_RATE: rendered through an offline graph (the browser's own downmix and
 * resampler), or averaged by hand where that fails. */
async function downmix(buffer, Offline) {
  if (buffer.numberOfChannels === 1 && buffer.sampleRate === TARGET_RATE) return buffer.getChannelData(0);
  try {
    const frames = Math.ceil((buffer.duration || 0) * TARGET_RATE);
    const ctx = new Offline(1, Math.max(1, frames), TARGET_RATE);
    const src = ctx.createBufferSource();
    src.buffer = buffer;
    src.connect(ctx.destination);
    src.start();
    return (await ctx.startRendering()).getChannelData(0);
  } catch {
    const out = new Float32Array(buffer.length);
    for (let c = 0; c < buffer.numberOfChannels; c++) {
      const ch = buffer.getChannelData(c);
      for (let i = 0; i < out.length; i++) out[i] += ch[i] / buffer.numberOfChannels;
    }
    return out;
  }
}

/** Float samples (-1..1) -> a 16-bit PCM mono WAV file's bytes. */
export function encodeWav(samples, rate) {
  const n = samples.length;
  const buf = new ArrayBuffer(44 + 2 * n);
  const v = new DataView(buf);
  const ascii = (at, s) => [...s].forEach((c, i) => v.setUint8(at + i, c.charCodeAt(0)));
  ascii(0, "RIFF");
  v.setUint32(4, 36 + 2 * n, true);
  ascii(8, "WAVE");
  ascii(12, "fmt ");
  v.setUint32(16, 16, true); // fmt chunk size
  v.setUint16(20, 1, true); // PCM
  v.setUint16(22, 1, true); // mono
  v.setUint32(24, rate, true);
  v.setUint32(28, 2 * rate, true); // bytes per second
  v.setUint16(32, 2, true); // bytes per frame
  v.setUint16(34, 16, true); // bits per sample
  ascii(36, "data");
  v.setUint32(40, 2 * n, true);
  for (let i = 0; i < n; i++) {
    const s = Number.isFinite(samples[i]) ? Math.max(-1, Math.min(1, samples[i])) : 0;
    v.setInt16(44 + 2 * i, s < 0 ? s * 0x8000 : s * 0x7fff, true);
  }
  return buf;
}

/** What to upload for a sound: the file itself, or a WAV made from it. */
export async function uploadable(file, name) {
  if (await serverDecodes(file)) return { blob: file, name };
  const wav = await toWav(file);
  return { blob: wav, name: `${String(name).replace(/\.[^.]*$/, "") || "sound"}.wav` };
}
