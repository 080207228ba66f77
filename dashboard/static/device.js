// Device page: live LAeq/LAFmax with the bounds, the current 1/3-octave spectrum, history with
// range and zoom (served by /history at the chart's width), statistics, limits, its recordings
// (recordings.js: listen, download, replay, analyse with changed rules), calibration, rules.
import {
  FREQ_MAX_HZ, FREQ_MIN_HZ, RANGES, api, boundsFor, defaultBounds, devices, displayName, el, fmt,
  formatHz, has, isOnline, label, latestLevel, levelClass, live, onFrame, seedLive, serverNow, setDeviceBounds,
  toLocalInput, when,
} from "./core.js";
import { hasCharts, historyChart, liveChart, spectrumChart } from "./charts.js";
import { recordingsPanel } from "./recordings.js";

const LIVE_SPAN_S = 300;

function card(title, ...children) {
  return el("section", { class: "panel" }, el("h2", { text: title }), ...children);
}

export function mount(root, [id]) {
  const cleanups = [];
  const head = el("div", { class: "dev-head" });
  const liveBox = el("div", { class: "chart", id: "live-chart" });
  const liveNote = el("p", { class: "note", id: "live-count" });
  const specBox = el("div", { class: "chart", id: "spectrum-chart" });
  const specNote = el("p", { class: "note" });
  const limits = el("div", { class: "limits", id: "limits" });
  const histBox = el("div", { class: "chart", id: "history-chart" });
  const histNote = el("p", { class: "note", id: "history-note" });
  const stats = el("dl", { class: "stats", id: "stats" });
  const exportLinks = el("p", { class: "exports", id: "exports" });
  const calib = el("div", { id: "calibration" });
  const rules = el("div", { id: "rules" });
  const devAlerts = el("ul", { class: "alerts", id: "device-alerts" });

  const rangeButtons = Object.keys(RANGES).map((r) => el("button", { type: "button", "data-range": r, text: `last ${r}`, onclick: () => setRange(r) }));
  const from = el("input", { type: "datetime-local", "aria-label": "from" });
  const to = el("input", { type: "datetime-local", "aria-label": "to" });
  const custom = el("form", { class: "custom", onsubmit: (e) => {
    e.preventDefault();
    const a = Date.parse(from.value);
    const b = Date.parse(to.value);
    if (a < b) load(a, b, "custom");
  } }, from, to, el("button", { type: "submit", text: "show" }));
  const reset = el("button", { type: "button", id: "zoom-reset", text: "reset zoom", hidden: true, onclick: () => setRange(currentRange) });

  root.append(el("div", { class: "device-page" },
    head,
    el("div", { class: "two" },
      card("Live: LAeq and LAFmax, last 5 minutes", liveBox, liveNote),
      card("Spectrum now (1/3 octave, Z-weighted)", specBox, specNote, limits)),
    card("History", el("div", { class: "range" }, ...rangeButtons, custom, reset), histBox, histNote, stats, exportLinks),
    has("/api/recordings/{}") ? recordingsPanel(id) : null,
    el("div", { class: "two" },
      card("Calibration", calib),
      card("Alerts of this device", devAlerts, rules))));

  if (!hasCharts()) {
    for (const box of [liveBox, specBox, histBox]) box.append(el("p", { class: "error", text: "Charts are unavailable: uPlot was not found (run make install)." }));
  }
  const bounds = { ...boundsFor(id) }; // this device's, once its rules are loaded
  const liveC = hasCharts() ? liveChart(liveBox, bounds, LIVE_SPAN_S) : null;
  const specC = hasCharts() ? spectrumChart(specBox) : null;
  const histC = hasCharts() ? historyChart(histBox, (a, b) => load(a, b, "zoom"), bounds) : null;
  cleanups.push(() => [liveC, specC, histC].forEach((c) => c && c.destroy()));

  // ---- header, live, spectrum --------------------------------------------------------------
  function renderHead() {
    const dev = devices.get(id) || { id };
    const cls = levelClass(dev);
    head.textContent = "";
    head.append(
      el("div", {},
        el("h2", { class: "dev-title", text: displayName(dev) }),
        el("p", { class: "note", text: [dev.name ? id : null, dev.location, dev.sensor, dev.rate ? `${dev.rate} Hz` : null, dev.fw ? `fw ${dev.fw}` : null].filter(Boolean).join(" · ") })),
      el("div", { class: `level big ${cls}`, id: "device-level" }, dev.laeq != null ? fmt(dev.laeq) : "—", el("span", { class: "unit", text: "dB(A)" })),
      el("div", { class: "note" },
        el("span", { class: isOnline(dev) ? "state online" : "state", text: isOnline(dev) ? "online" : "offline" }),
        el("br"), `bounds ${bounds.min}–${bounds.max} dB(A)`, el("br"),
        dev.calibrated ? `calibrated, K = ${fmt(dev.calibration_db, 2)} dB` : `uncalibrated (default K ${fmt(dev.calibration_db, 1)} dB)`));
  }

  function renderLimits(level) {
    const dev = devices.get(id) || {};
    const rate = (level && level.rate) || dev.rate;
    limits.textContent = "";
    if (!rate) return limits.append(el("p", { class: "note", text: "Sample rate not known yet." }));
    const nyq = rate / 2;
    const items = [
      `Sample rate ${rate} Hz: nothing above ${formatHz(nyq)} (fs/2, the Nyquist limit) can be measured.`,
      `Frequency bounds ${formatHz(FREQ_MIN_HZ)}–${formatHz(FREQ_MAX_HZ)}` +
        (nyq < FREQ_MAX_HZ ? `: the upper bound cannot be verified by this device, so no high-frequency alert is raised.` : "."),
    ];
    if (dev.dominant_hz != null) items.push(`Dominant frequency now ${formatHz(dev.dominant_hz)}.`);
    for (const t of items) limits.append(el("p", { class: "note", text: t }));
  }

  function renderSpectrum() {
    const lv = latestLevel.get(id);
    if (!lv || !lv.bands_db) {
      specNote.textContent = "No spectrum yet (this device's frames carry no band levels).";
      return;
    }
    if (specC) specC.set(lv.bands_hz, lv.bands_db);
    const top = lv.bands_hz[lv.bands_hz.length - 1];
    specNote.textContent = `${lv.bands_db.length} bands, ${formatHz(lv.bands_hz[0])}–${formatHz(top)}, at ${new Date(lv.t_ms).toLocaleTimeString()}` +
      (lv.flags && lv.flags.length ? ` · ${lv.flags.map(label).join(", ")}` : "");
    renderLimits(lv);
  }

  function renderLive() {
    const s = live.get(id);
    if (!s || !liveC) return;
    liveC.update([s.t, s.laeq, s.lafmax], serverNow() / 1000);
    liveNote.textContent = `${s.t.length} points · dashed lines: the bounds`;
    liveNote.dataset.points = String(s.t.length);
  }

  cleanups.push(onFrame((ids) => {
    if (!ids.has(id)) return;
    renderHead();
    renderLive();
    renderSpectrum();
  }));

  // ---- history -------------------------------------------------------------------------------
  let currentRange = "1h";
  let shown = null;

  function setRange(r) {
    currentRange = r;
    const end = serverNow();
    load(end - RANGES[r], end, r);
  }

  async function load(startMs, endMs, why) {
    shown = [startMs, endMs];
    for (const b of rangeButtons) b.classList.toggle("on", b.dataset.range === why);
    reset.hidden = why !== "zoom";
    from.value = toLocalInput(startMs);
    to.value = toLocalInput(endMs);
    const points = Math.min(5000, Math.max(10, Math.round(histBox.clientWidth || 600)));
    const q = `start=${Math.round(startMs)}&end=${Math.round(endMs)}`;
    histNote.textContent = "loading…";
    exportLinks.textContent = ""; // no stale links to the previous range meanwhile
    try {
      const [h, st] = await Promise.all([
        api(`/api/devices/${encodeURIComponent(id)}/history?${q}&points=${points}`),
        api(`/api/devices/${encodeURIComponent(id)}/stats?${q}`),
      ]);
      if (shown[0] !== startMs || shown[1] !== endMs) return; // a newer range was asked for
      if (histC) histC.set(h.points, startMs, endMs);
      histNote.textContent = `${new Date(startMs).toLocaleString()} – ${new Date(endMs).toLocaleString()} · ` +
        `${h.points.length} points, each ${span(h.bucket_ms)} (LAeq energetic; LAFmax/LAFmin extremes) · drag across the chart to zoom`;
      histNote.dataset.bucketMs = String(h.bucket_ms);
      renderStats(st);
    } catch (err) {
      histNote.textContent = `Could not load the history: ${err.message}`;
    }
    const ex = (kind, f) => el("a", { href: `/api/export/${kind}?device=${encodeURIComponent(id)}&${q}&format=${f}`, download: "", text: `${kind} ${f.toUpperCase()}`, "data-export": `${kind}-${f}` });
    exportLinks.textContent = "";
    exportLinks.append("Export this range: ", ex("levels", "csv"), " ", ex("levels", "json"), " ", ex("alerts", "csv"), " ", ex("alerts", "json"));
  }

  function renderStats(st) {
    stats.textContent = "";
    const rows = [
      ["LAeq", st.laeq, "dB(A)"], ["L10", st.l10, "dB(A)"], ["L50", st.l50, "dB(A)"], ["L90", st.l90, "dB(A)"],
      ["LAmax", st.lamax, "dB(A)"], ["LAmin", st.lamin, "dB(A)"],
      ["Lden", st.lden, st.lden == null ? "(needs 24 h)" : "dB"],
      ["coverage", st.coverage == null ? null : st.coverage * 100, "%"],
    ];
    for (const [k, v, unit] of rows) stats.append(el("div", {}, el("dt", { text: k }), el("dd", { text: `${fmt(v)} ${unit}` })));
  }

  // ---- calibration, alerts, rules -----------------------------------------------------------
  async function loadCalibration() {
    try {
      const c = await api(`/api/devices/${encodeURIComponent(id)}/calibration`);
      calib.textContent = "";
      calib.append(el("p", { text: c.calibrated ? `K = ${fmt(c.offset_db, 2)} dB (calibrated)` : `K = ${fmt(c.offset_db, 2)} dB: the sensor's datasheet default; levels are estimates until calibrated.` }));
      if (c.history.length) {
        calib.append(el("table", {},
          el("thead", {}, el("tr", {}, ...["when", "K (dB)", "source", "reference"].map((h) => el("th", { text: h })))),
          el("tbody", {}, ...c.history.slice().reverse().map((h) => el("tr", {},
            el("td", { text: new Date(h.t_ms).toLocaleString() }), el("td", { text: fmt(h.offset_db, 2) }),
            el("td", { text: h.source }), el("td", { text: h.reference_db != null ? `${h.reference_db} dB` : "—" }))))));
      } else calib.append(el("p", { class: "note", text: "Never calibrated. Set K on the settings page or with soundmon calibrate." }));
      calib.append(el("a", { href: `#/settings/${encodeURIComponent(id)}`, text: "change settings →" }));
    } catch (err) {
      calib.textContent = err.message;
    }
  }

  async function loadAlerts() {
    try {
      const list = await api(`/api/alerts?device=${encodeURIComponent(id)}&limit=10`);
      devAlerts.textContent = "";
      for (const a of list) {
        devAlerts.append(el("li", { class: a.state }, el("strong", { text: label(a.kind) }),
          ` ${fmt(a.value)} ${a.unit} (limit ${a.threshold}, worst ${fmt(a.worst)}) · ${a.state}`,
          el("span", { class: "when", text: `${when(a.started)} → ${a.ended ? when(a.ended) : "now"}` })));
      }
      if (!list.length) devAlerts.append(el("li", { class: "empty", text: "No alerts." }));
      devAlerts.append(el("li", { class: "plain" }, el("a", { href: `#/alerts?device=${encodeURIComponent(id)}`, text: "all alerts of this device →" })));
    } catch (err) {
      devAlerts.textContent = err.message;
    }
  }

  async function loadRules() {
    rules.textContent = "";
    if (!has("/api/devices/{}/rules")) {
      rules.append(el("p", { class: "note", text: `Rules: the default bounds, ${defaultBounds.min}–${defaultBounds.max} dB(A), ${formatHz(FREQ_MIN_HZ)}–${formatHz(FREQ_MAX_HZ)}.` }));
      return;
    }
    try {
      const r = await api(`/api/devices/${encodeURIComponent(id)}/rules`);
      const eff = r.effective || {};
      setDeviceBounds(id, eff.level);
      Object.assign(bounds, boundsFor(id));
      renderHead();
      const own = r.override && Object.keys(r.override).length ? "this device's own rules over the defaults" : "the default rules";
      rules.append(el("h3", { text: "Rules for this device" }), el("p", { class: "note", text: `Runs under ${own}.` }),
        el("table", { class: "rules" }, el("tbody", {}, ...Object.entries(eff).map(([name, rule]) => el("tr", {},
          el("th", { text: label(name) }),
          el("td", { text: rule && typeof rule === "object" ? describeRule(rule) : String(rule) }))))),
        el("a", { href: `#/settings/${encodeURIComponent(id)}`, text: "edit rules →" }));
    } catch (err) {
      rules.append(el("p", { class: "note", text: `Rules: ${err.message}` }));
    }
  }

  // ---- start ---------------------------------------------------------------------------------
  (async () => {
    try {
      const dev = await api(`/api/devices/${encodeURIComponent(id)}`);
      devices.set(id, Object.assign(devices.get(id) || {}, dev));
    } catch (err) {
      head.append(el("p", { class: "error", text: err.status === 404 ? `No device ${id}.` : err.message }));
      return;
    }
    try {
      const end = serverNow();
      const { levels } = await api(`/api/devices/${encodeURIComponent(id)}/levels?start=${Math.round(end - LIVE_SPAN_S * 1000)}&end=${Math.round(end)}&limit=5000`);
      seedLive(id, levels);
      const last = levels.filter((l) => l.bands_db).pop();
      if (last && !latestLevel.has(id)) latestLevel.set(id, { ...last, device: id });
    } catch { /* live points still arrive */ }
    renderHead(); renderLive(); renderSpectrum(); renderLimits(latestLevel.get(id));
    setRange("1h");
    loadCalibration(); loadAlerts(); loadRules();
  })();
  return () => cleanups.forEach((f) => f());
}

// a rule as one line: "on · min db 60 · max db 80 · window s 5 ..."
function describeRule(rule) {
  const parts = [rule.enabled === false ? "off" : "on"];
  for (const [k, v] of Object.entries(rule)) {
    if (k === "enabled" || v == null || typeof v === "object") continue;
    parts.push(`${k.replace(/_/g, " ")} ${v}`);
  }
  return parts.join(" · ");
}

function span(ms) {
  if (ms < 1000) return `${ms} ms`;
  if (ms < 120000) return `${(ms / 1000).toFixed(ms < 10000 ? 1 : 0)} s`;
  if (ms < 7200000) return `${(ms / 60000).toFixed(1)} min`;
  return `${(ms / 3600000).toFixed(1)} h`;
}
