// Recordings of one device (docs/recording.md), a panel of the device page: the recorded spans
// of a time range and the gaps between them; a chosen span played in the browser, downloaded as
// WAV, replayed through the pipeline as replay-<device>, or analysed with changed rules to see
// the alerts they would have raised. Also the would-be alerts list the upload panel shows.
import { RANGES, api, el, fmt, followTask, has, label, serverNow, when } from "./core.js";

const MAX_PLAY_MS = 3600e3; // GET /api/recordings/{id}/audio serves at most an hour
const MAX_ROWS = 200; // spans listed at once (newest first)
// the level rule's fields the override form offers: [key, label, step]
const RULE_FIELDS = [
  ["min_db", "LAeq at least (dB(A))", "0.5"],
  ["max_db", "LAeq at most (dB(A))", "0.5"],
  ["window_s", "averaged over (s)", "1"],
  ["open_s", "for at least (s)", "1"],
];

/** The alerts an analysis says its rules would have raised, as a list (or "none"). */
export function wouldBeAlerts(alerts, id) {
  const box = el("div", { id, class: "would-be" }, el("h3", { text: "Alerts these rules would have raised" }));
  if (!Array.isArray(alerts) || !alerts.length) {
    box.append(el("p", { class: "note", text: "None." }));
    return box;
  }
  box.append(el("ul", { class: "alerts" }, ...alerts.map((a) => el("li", { class: a.state, "data-kind": a.kind },
    el("strong", { text: label(a.kind) }),
    ` worst ${fmt(a.worst)} ${a.unit || ""} (limit ${a.threshold})`,
    el("span", { class: "when", text: `${when(a.started)} → ${a.ended ? when(a.ended) : "still out at the end"}` })))));
  return box;
}

/** An analysis' summary (levels and statistics) as a small table of numbers. */
export function summaryList(summary) {
  const names = { duration_s: ["length", "s"], laeq: ["LAeq", "dB(A)"], lafmax: ["LAFmax", "dB(A)"],
    l10: ["L10", "dB(A)"], l50: ["L50", "dB(A)"], l90: ["L90", "dB(A)"], dbfs: ["level", "dBFS"] };
  const dl = el("dl", { class: "stats" });
  for (const [key, [name, unit]] of Object.entries(names)) {
    if (summary && summary[key] != null) dl.append(el("div", {}, el("dt", { text: name }), el("dd", { text: `${fmt(summary[key])} ${unit}` })));
  }
  if (summary && Array.isArray(summary.gaps) && summary.gaps.length) {
    dl.append(el("div", {}, el("dt", { text: "gaps" }), el("dd", { text: String(summary.gaps.length) })));
  }
  return dl;
}

function length(ms) {
  const s = Math.round(ms / 1000);
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${(s / 3600).toFixed(1)} h`;
}

export function recordingsPanel(id) {
  const base = `/api/recordings/${encodeURIComponent(id)}`;
  const state = el("p", { class: "note", id: "recording-state" });
  const rows = el("tbody", { id: "span-rows" });
  const listNote = el("p", { class: "note", id: "spans-note" });
  const from = el("input", { name: "start", "aria-label": "span start", size: "26", spellcheck: "false" });
  const to = el("input", { name: "end", "aria-label": "span end", size: "26", spellcheck: "false" });
  const audio = el("audio", { id: "span-audio", controls: true, preload: "none" });
  const playNote = el("p", { class: "note", id: "play-note" });
  const wav = el("a", { class: "button", id: "span-download", download: "", text: "Download WAV" });
  const speed = el("input", { type: "number", name: "speed", min: "0.1", max: "1000", step: "any", value: "20", "aria-label": "replay speed" });
  const replayProgress = el("progress", { max: "1", value: "0", hidden: true });
  const replayNote = el("p", { class: "note", role: "status", id: "replay-status" });
  const ruleInputs = Object.fromEntries(RULE_FIELDS.map(([key, , step]) => [key, el("input", { type: "number", name: key, step })]));
  const analysisProgress = el("progress", { max: "1", value: "0", hidden: true });
  const analysisNote = el("p", { class: "note", role: "status", id: "analysis-status" });
  const analysisOut = el("div", { id: "analysis-result" });
  const rangeButtons = ["1h", "24h", "7d"].map((r) => el("button", { type: "button", "data-rec-range": r, text: `last ${r}`, onclick: () => load(r) }));

  const audioUrl = (download) => {
    const q = new URLSearchParams({ start: from.value.trim(), end: to.value.trim() });
    if (download) q.set("download", "true");
    return `${base}/audio?${q}`;
  };
  const selected = () => (from.value.trim() && to.value.trim() ? { start: from.value.trim(), end: to.value.trim() } : null);
  function select(span) {
    from.value = new Date(span.start_ms).toISOString();
    to.value = new Date(span.end_ms).toISOString();
    wav.href = audioUrl(true);
    playNote.textContent = "";
  }
  function play() {
    if (!selected()) return;
    const a = Date.parse(from.value);
    if (Date.parse(to.value) - a > MAX_PLAY_MS) { // one WAV holds at most an hour
      to.value = new Date(a + MAX_PLAY_MS).toISOString();
      playNote.textContent = "Longer than an hour: its first hour is selected, the most one WAV holds.";
    } else playNote.textContent = "";
    audio.src = audioUrl(false);
    wav.href = audioUrl(true);
    audio.play().catch(() => { /* the browser wants a click on the player first */ });
  }
  audio.addEventListener("error", () => {
    if (audio.src) playNote.textContent = "Could not play this span (nothing recorded in it, or not a valid time range).";
  });
  for (const input of [from, to]) input.addEventListener("change", () => { wav.href = audioUrl(true); });

  let seq = 0;
  async function load(range) {
    const mine = ++seq;
    for (const b of rangeButtons) b.classList.toggle("on", b.dataset.recRange === range);
    const end = serverNow();
    listNote.textContent = "loading…";
    let got;
    try {
      got = await api(`${base}?start=${Math.round(end - RANGES[range])}&end=${Math.round(end)}`);
    } catch (err) {
      listNote.textContent = `Could not load the recordings: ${err.message}`;
      return;
    }
    if (mine !== seq) return;
    state.textContent = got.enabled ? "Recording is on for this device: the raw audio it sends is kept (docs/recording.md)."
      : "Recording is off for this device: levels only, no audio is kept. Audio recorded before stays until retention deletes it.";
    rows.textContent = "";
    const spans = got.spans.slice().reverse(); // newest first
    const gapAfter = new Map(got.gaps.map((g) => [g.start_ms, g]));
    for (const s of spans.slice(0, MAX_ROWS)) {
      const gap = gapAfter.get(s.end_ms);
      if (gap) {
        rows.append(el("tr", { class: "gap" }, el("td", { colspan: "5", text: `gap: ${length(gap.end_ms - gap.start_ms)} not recorded` })));
      }
      rows.append(el("tr", { class: "span", "data-start": String(s.start_ms), "data-end": String(s.end_ms) },
        el("td", { text: when(s.start) }), el("td", { text: when(s.end) }),
        el("td", { text: length(s.end_ms - s.start_ms) }), el("td", { text: `${s.rate} Hz` }),
        el("td", { class: "actions" },
          el("button", { type: "button", class: "play", text: "play", onclick: () => { select(s); play(); } }),
          el("button", { type: "button", class: "select", text: "select", onclick: () => select(s) }))));
    }
    if (!spans.length) rows.append(el("tr", {}, el("td", { colspan: "5", class: "empty", text: "Nothing recorded in this range." })));
    listNote.textContent = `${got.spans.length} recorded spans and ${got.gaps.length} gaps between them, newest first` +
      (spans.length > MAX_ROWS ? ` (the newest ${MAX_ROWS} shown)` : "") + ".";
    if (spans.length && !selected()) select(spans[0]);
  }

  async function replay() {
    const span = selected();
    if (!span) return;
    replayNote.textContent = "starting…";
    try {
      const started = await api(`${base}/replay`, { method: "POST", json: { ...span, speed: Number(speed.value) || 1 } });
      replayProgress.hidden = false;
      const task = await followTask(started.task_id, (t) => {
        replayProgress.value = t.progress ?? 0;
        replayNote.textContent = `replay ${started.task_id}: ${t.state}${t.stage ? ` (${t.stage})` : ""}`;
      });
      const r = task.result;
      replayNote.textContent = task.state === "done" && r
        ? `Replayed ${r.frames} frames as ${r.device}${r.stopped ? " (stopped)" : ""}: its levels and alerts are under that device.`
        : `Replay failed: ${task.error}`;
      if (task.state === "done" && r) replayNote.append(" ", el("a", { href: `#/device/${encodeURIComponent(r.device)}`, text: `open ${r.device} →` }));
    } catch (err) {
      replayNote.textContent = `Replay not started: ${err.message}`;
    }
  }

  async function analyse(e) {
    e.preventDefault();
    const span = selected();
    if (!span) return;
    const level = {};
    for (const [key, input] of Object.entries(ruleInputs)) if (input.value !== "") level[key] = Number(input.value);
    analysisOut.textContent = "";
    analysisNote.textContent = "starting…";
    try {
      const started = await api(`${base}/analyze`, { method: "POST", json: { ...span, rules: { level } } });
      analysisProgress.hidden = false;
      const task = await followTask(started.task_id, (t) => {
        analysisProgress.value = t.progress ?? 0;
        analysisNote.textContent = `analysis ${started.task_id}: ${t.state}${t.stage ? ` (${t.stage})` : ""}`;
      });
      if (task.state !== "done" || !task.result) {
        analysisNote.textContent = `Analysis failed: ${task.error}`;
        return;
      }
      const r = task.result;
      analysisNote.textContent = `analysis ${started.task_id}: done, ${r.frames} frames`;
      analysisOut.append(summaryList(r.summary), wouldBeAlerts(r.alerts, "analysis-alerts"));
    } catch (err) {
      analysisNote.textContent = `Not analysed: ${err.message}`;
    }
  }

  async function loadRules() {
    if (!has("/api/devices/{}/rules")) return;
    try {
      const level = ((await api(`/api/devices/${encodeURIComponent(id)}/rules`)).effective || {}).level || {};
      for (const [key, input] of Object.entries(ruleInputs)) if (level[key] != null && input.value === "") input.value = String(level[key]);
    } catch { /* the fields stay empty: the device's rules apply */ }
  }

  const canReplay = has("/api/recordings/{}/replay", "post") && has("/api/tasks/{}");
  const canAnalyse = has("/api/recordings/{}/analyze", "post") && has("/api/tasks/{}");
  const section = el("section", { class: "panel", id: "recordings" }, el("h2", { text: "Recordings" }), state,
    el("div", { class: "range" }, ...rangeButtons),
    el("div", { class: "table-wrap spans" }, el("table", {},
      el("thead", {}, el("tr", {}, ...["from", "to", "length", "rate", ""].map((h) => el("th", { text: h })))), rows)),
    listNote,
    el("h3", { text: "Selected span" }),
    el("div", { class: "custom" }, el("label", {}, "from ", from), el("label", {}, "to ", to)),
    el("p", { class: "note", text: "ISO 8601 times (UTC); pick a span above or type your own. Gaps play as silence." }),
    el("div", { class: "actions" }, el("button", { type: "button", id: "span-play", text: "Play", onclick: play }), wav),
    audio, playNote,
    canReplay ? el("div", {}, el("h3", { text: "Replay through the pipeline" }),
      el("p", { class: "note", text: `As the device replay-${id} (its own levels and alerts), at the given speed (20 = twenty times real time).` }),
      el("div", { class: "custom" }, el("label", {}, "speed ", speed), el("button", { type: "button", id: "span-replay", text: "Replay", onclick: replay })),
      replayProgress, replayNote) : null,
    canAnalyse ? el("form", { id: "span-analysis", onsubmit: analyse }, el("h3", { text: "Analyse with changed rules" }),
      el("p", { class: "note", text: "The level rule over this span, with these values instead of the device's: the levels and the alerts it would have raised. Nothing is stored." }),
      el("div", { class: "custom" }, ...RULE_FIELDS.map(([key, text]) => el("label", {}, `${text} `, ruleInputs[key])),
        el("button", { type: "submit", text: "Analyse" })),
      analysisProgress, analysisNote, analysisOut) : null);

  load("24h");
  loadRules();
  return section;
}
