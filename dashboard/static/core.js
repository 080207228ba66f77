// soundmon dashboard core: API calls, live state from /api/stream, per-frame rendering, toasts
// and browser notifications.
// Plain ES modules, no build step. The session cookie authenticates fetch() and EventSource;
// every change also sends the session's CSRF token (from <meta name="csrf-token">).

const body = document.body.dataset;
export const LEVEL_MIN_DB = parseFloat(body.levelMin) || 60;
export const LEVEL_MAX_DB = parseFloat(body.levelMax) || 80;
export const FREQ_MIN_HZ = parseFloat(body.freqMin) || 20;
export const FREQ_MAX_HZ = parseFloat(body.freqMax) || 20000;
export const FLOWER_URL = body.flower || "";
const CSRF = document.querySelector('meta[name="csrf-token"]').content;
// same rule as the API (dashboard/views.py STALE_AFTER_MS): not heard from for 60 s = offline
const OFFLINE_AFTER_MS = 60000;
// a level older than this is greyed out: never show a stale value as if it were current
const STALE_LEVEL_MS = 10000;
// live points kept per device (at 2 frames/s: 10 minutes) for the live chart and sparklines
export const LIVE_KEEP_S = 600;

// ---- small helpers --------------------------------------------------------------------------
export const $ = (sel, root = document) => root.querySelector(sel);
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c != null) node.append(c);
  return node;
}
export const fmt = (v, nd = 1) => (v == null || Number.isNaN(v) ? "—" : Number(v).toFixed(nd));
export const formatHz = (hz) =>
  hz == null ? "—" : hz >= 1000 ? `${(hz / 1000).toFixed(hz >= 10000 ? 1 : 2)} kHz` : `${Math.round(hz)} Hz`;
export function ago(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}
export const when = (iso) => (iso ? new Date(iso).toLocaleString() : "—");
export const label = (kind) => String(kind || "").replace(/_/g, " ");

// ---- API --------------------------------------------------------------------------------------
let clockOffsetMs = 0; // server clock - browser clock, from the Date header of API replies
export const serverNow = () => Date.now() + clockOffsetMs;

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail || `HTTP ${status}`);
    this.status = status;
  }
}

export async function api(path, { method = "GET", json, form } = {}) {
  const init = { method, credentials: "same-origin", headers: {} };
  if (method !== "GET") init.headers["X-CSRF-Token"] = CSRF;
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (form) init.body = form;
  const reply = await fetch(path, init);
  const date = Date.parse(reply.headers.get("Date"));
  // the Date header has 1 s resolution: only correct clocks that are clearly off
  if (!Number.isNaN(date) && Math.abs(date - Date.now()) > 2000) clockOffsetMs = date - Date.now();
  if (reply.status === 401) signedOut();
  if (!reply.ok) {
    let detail = "";
    try { detail = (await reply.json()).detail; } catch { /* not JSON */ }
    throw new ApiError(reply.status, typeof detail === "string" ? detail : JSON.stringify(detail));
  }
  const type = reply.headers.get("Content-Type") || "";
  return type.includes("json") ? reply.json() : reply.text();
}

// Which optional endpoints this server has (other parts of soundmon add some as they land):
// read once from the OpenAPI schema; a page hides what is missing instead of failing.
let schemaPaths = null;
export async function loadFeatures() {
  try {
    const schema = await api("/api/openapi.json");
    schemaPaths = {};
    for (const [path, ops] of Object.entries(schema.paths || {})) {
      schemaPaths[path.replace(/\{[^}]+\}/g, "{}")] = new Set(Object.keys(ops));
    }
  } catch {
    schemaPaths = {};
  }
}
export function has(path, method = "get") {
  const ops = schemaPaths && schemaPaths[path.replace(/\{[^}]+\}/g, "{}")];
  return Boolean(ops && ops.has(method));
}

// Long work (a WAV analysis, a replay) answers with a task id at once; follow it to the end.
export async function followTask(taskId, onUpdate, { intervalMs = 1000, maxMs = 600000 } = {}) {
  const t0 = Date.now();
  for (;;) {
    const task = await api(`/api/tasks/${encodeURIComponent(taskId)}`);
    onUpdate(task);
    const state = String(task.state || task.status || "").toUpperCase();
    if (["SUCCESS", "FAILURE", "REVOKED", "DONE", "FAILED", "ERROR"].includes(state) || task.ready) return task;
    if (Date.now() - t0 > maxMs) throw new Error("the task is taking too long; check Flower");
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

// ---- live state -------------------------------------------------------------------------------
export const devices = new Map(); // id -> merged device state (API device dict + latest level)
export const live = new Map(); // id -> {t: [s], laeq: [], lafmax: []}, the last LIVE_KEEP_S
export const latestLevel = new Map(); // id -> the newest level event (bands for the spectrum)
export const openAlerts = new Map(); // alert id -> alert (open or acknowledged, not resolved)

const dirty = new Set();
let frameQueued = false;
const renderers = new Set(); // fn(dirtyIds: Set) called once per animation frame

export function onFrame(fn) {
  renderers.add(fn);
  return () => renderers.delete(fn);
}

export function markDirty(id) {
  dirty.add(id);
  if (!frameQueued) {
    frameQueued = true;
    requestAnimationFrame(flush);
  }
}

function flush() {
  frameQueued = false;
  const ids = new Set(dirty);
  dirty.clear();
  for (const fn of renderers) {
    try { fn(ids); } catch (err) { console.error(err); }
  }
}

export function mergeDevice(data) {
  if (!data || !data.id) return;
  devices.set(data.id, Object.assign(devices.get(data.id) || {}, data));
  markDirty(data.id);
}

function pushLive(id, level) {
  let s = live.get(id);
  if (!s) live.set(id, (s = { t: [], laeq: [], lafmax: [] }));
  const t = level.t_ms / 1000;
  const n = s.t.length;
  if (n && t <= s.t[n - 1]) return; // older records (a backfill after an outage) stay in history
  s.t.push(t);
  s.laeq.push(level.laeq);
  s.lafmax.push(level.lafmax ?? level.laeq);
  if (s.t.length > 1.2 * LIVE_KEEP_S * 2) {
    const cut = s.t.findIndex((x) => x >= t - LIVE_KEEP_S);
    for (const k of ["t", "laeq", "lafmax"]) s[k].splice(0, cut);
  }
}

/** Put stored levels (or history buckets) in front of the live points of a device. */
export function seedLive(id, levels) {
  const old = live.get(id) || { t: [], laeq: [], lafmax: [] };
  const s = { t: [], laeq: [], lafmax: [] };
  for (const lv of levels) {
    if (lv.laeq == null) continue;
    s.t.push(lv.t_ms / 1000); s.laeq.push(lv.laeq); s.lafmax.push(lv.lafmax ?? lv.laeq);
  }
  const last = s.t.length ? s.t[s.t.length - 1] : -Infinity;
  old.t.forEach((t, i) => {
    if (t > last) { s.t.push(t); s.laeq.push(old.laeq[i]); s.lafmax.push(old.lafmax[i]); }
  });
  live.set(id, s);
}

export function mergeLevel(level) {
  if (!level || !level.device) return;
  const id = level.device;
  const dev = devices.get(id) || { id, state: "online" };
  devices.set(id, dev);
  dev.last_seen = Math.max(dev.last_seen || 0, serverNow());
  pushLive(id, level);
  if (dev.level_t_ms != null && level.t_ms < dev.level_t_ms) return markDirty(id);
  dev.level_t_ms = level.t_ms;
  for (const key of ["laeq", "lzeq", "dbfs", "dominant_hz", "duty", "flags", "lafmax"]) {
    if (key in level) dev[key] = level[key];
  }
  if (level.bands_db) latestLevel.set(id, level);
  markDirty(id);
}

export function isOnline(dev) {
  return dev.state !== "offline" && dev.last_seen != null && serverNow() - dev.last_seen <= OFFLINE_AFTER_MS;
}

// Level bounds: the default rules (GET /api/rules when the server has it, else the settings),
// and a device's own effective rules once its page has loaded them.
export const defaultBounds = { min: LEVEL_MIN_DB, max: LEVEL_MAX_DB };
const deviceBounds = new Map();
export const boundsFor = (id) => deviceBounds.get(id) || defaultBounds;
export function setDeviceBounds(id, level) {
  if (level && level.min_db != null) deviceBounds.set(id, { min: level.min_db, max: level.max_db });
}
export async function loadDefaultBounds() {
  if (!has("/api/rules")) return;
  try {
    const rules = await api("/api/rules");
    if (rules.level) Object.assign(defaultBounds, { min: rules.level.min_db, max: rules.level.max_db });
  } catch { /* keep the settings' bounds */ }
}

export function levelClass(dev) {
  const fresh = dev.level_t_ms != null && serverNow() - dev.level_t_ms <= STALE_LEVEL_MS;
  if (!isOnline(dev) || !fresh || dev.laeq == null) return "off";
  const b = boundsFor(dev.id);
  if (dev.laeq < b.min) return "low";
  if (dev.laeq > b.max) return "high";
  return "ok";
}

export const displayName = (dev) => (dev && dev.name ? dev.name : dev ? dev.id : "");

// ---- alerts ------------------------------------------------------------------------------------
const alertListeners = new Set();
export function onAlerts(fn) {
  alertListeners.add(fn);
  return () => alertListeners.delete(fn);
}

export async function refreshOpenAlerts() {
  try {
    const [open, acked] = await Promise.all([
      api("/api/alerts?state=open&limit=500"),
      api("/api/alerts?state=acknowledged&limit=500").catch(() => []),
    ]);
    openAlerts.clear();
    for (const a of [...open, ...acked]) openAlerts.set(String(a.id), a);
  } catch {
    return; // the connection badge shows the outage
  }
  alertsChanged();
}

function alertsChanged() {
  const pill = $("#nav-alerts");
  const n = [...openAlerts.values()].filter((a) => a.state === "open").length;
  pill.hidden = n === 0;
  pill.textContent = String(n);
  for (const fn of alertListeners) fn();
  for (const id of devices.keys()) markDirty(id);
}

function onAlertEvent(a) {
  const id = String(a.id);
  if (a.state === "resolved") openAlerts.delete(id);
  else openAlerts.set(id, { ...openAlerts.get(id), ...a });
  if (a.state === "open") toastAlert(a);
  else updateToast(a);
  if (["opened", "reminder", "test"].includes(a.event)) notifyBrowser(a);
  alertsChanged();
}

export async function acknowledge(alertId) {
  const a = await api(`/api/alerts/${encodeURIComponent(alertId)}/ack`, { method: "POST" });
  const id = String(alertId);
  if (openAlerts.has(id)) openAlerts.set(id, { ...openAlerts.get(id), state: "acknowledged", ...(a && a.id ? a : {}) });
  alertsChanged();
  return a;
}

/** Resolve an alert by hand (POST /api/alerts/{id}/resolve); the channels hear of it once. */
export async function resolve(alertId) {
  const a = await api(`/api/alerts/${encodeURIComponent(alertId)}/resolve`, { method: "POST" });
  openAlerts.delete(String(alertId));
  updateToast({ ...(a && a.id ? a : {}), id: alertId, state: "resolved" });
  alertsChanged();
  return a;
}

// ---- browser notifications ---------------------------------------------------------------------
// Off until the user turns them on with the header's bell (a click: browsers only ask for the
// permission on one); the choice is remembered in localStorage. Without the Notification API
// (old browsers, some phones) or when the browser blocks it, the toasts remain.
const NOTIFY_KEY = "soundmon.notifications";
const notifySupported = () => typeof window.Notification === "function";
export const notificationsOn = () =>
  notifySupported() && Notification.permission === "granted" && localStorage.getItem(NOTIFY_KEY) === "on";

function showNotifyToggle() {
  const button = $("#notify-toggle");
  if (!button) return;
  if (!notifySupported()) { button.hidden = true; return; }
  button.hidden = false;
  const blocked = Notification.permission === "denied";
  const on = notificationsOn();
  button.disabled = blocked;
  button.setAttribute("aria-pressed", String(on));
  button.classList.toggle("on", on);
  button.textContent = blocked ? "Notifications blocked" : on ? "Notifications on" : "Notifications off";
  button.title = blocked
    ? "The browser blocks notifications for this site (its site settings; or the page is not on HTTPS or localhost)."
    : on ? "Browser notifications for new alerts and reminders: click to turn them off"
      : "Click to get a browser notification for new alerts and reminders";
}

export async function toggleNotifications() {
  if (!notifySupported()) return false;
  if (notificationsOn()) {
    localStorage.setItem(NOTIFY_KEY, "off");
  } else {
    let permission = Notification.permission;
    if (permission === "default") {
      try { permission = await Notification.requestPermission(); } catch { permission = "denied"; }
    }
    localStorage.setItem(NOTIFY_KEY, permission === "granted" ? "on" : "off");
  }
  showNotifyToggle();
  return notificationsOn();
}

function notifyBrowser(a) {
  if (!notificationsOn()) return;
  const name = displayName(devices.get(a.device)) || a.device;
  const prefix = a.event === "reminder" ? "Still open: " : a.event === "test" ? "Test: " : "";
  try {
    const n = new Notification(`${prefix}${name}: ${label(a.kind)}`, {
      body: `worst ${fmt(a.worst ?? a.value)} ${a.unit} (limit ${a.threshold} ${a.unit}), ${a.severity || "warning"}`,
      tag: `soundmon-alert-${a.id}`, // a reminder replaces the alert's earlier notification
    });
    n.onclick = () => {
      window.focus();
      location.hash = `#/alerts?device=${encodeURIComponent(a.device)}`;
      n.close();
    };
  } catch (err) {
    console.warn("browser notification not shown:", err); // e.g. Android wants a service worker
  }
}

export function setupNotifications() {
  const button = $("#notify-toggle");
  if (button) button.addEventListener("click", () => toggleNotifications());
  showNotifyToggle();
}

// ---- toasts ------------------------------------------------------------------------------------
const toasts = new Map(); // alert id -> toast node

export function toast(text, kind = "info", ms = 6000) {
  const node = el("div", { class: `toast ${kind}`, role: "status" }, el("span", { text }));
  node.append(el("button", { class: "x", "aria-label": "dismiss", text: "×", onclick: () => node.remove() }));
  $("#toasts").prepend(node);
  if (ms) setTimeout(() => node.remove(), ms);
  return node;
}

function toastAlert(a) {
  const id = String(a.id);
  if (toasts.has(id)) return;
  const dev = devices.get(a.device);
  const msg = el("span", { class: "msg" },
    el("strong", { text: displayName(dev) || a.device }),
    ` ${label(a.kind)}: ${fmt(a.value)} ${a.unit} (limit ${a.threshold} ${a.unit})`);
  const state = el("span", { class: "state-tag", text: "open" });
  const node = el("div", { class: "toast alert", role: "alert", "data-alert": id }, msg, state);
  if (has("/api/alerts/{}/ack", "post")) {
    node.append(el("button", {
      class: "ack", text: "Acknowledge",
      onclick: async (e) => {
        e.target.disabled = true;
        try {
          await acknowledge(id);
          state.textContent = "acknowledged";
          setTimeout(() => dropToast(id), 4000);
        } catch (err) {
          e.target.disabled = false;
          state.textContent = err.message;
        }
      },
    }));
  }
  node.append(el("a", { href: `#/device/${encodeURIComponent(a.device)}`, text: "view" }));
  node.append(el("button", { class: "x", "aria-label": "dismiss", text: "×", onclick: () => dropToast(id) }));
  toasts.set(id, node);
  $("#toasts").prepend(node);
  while (toasts.size > 5) dropToast(toasts.keys().next().value);
}

function updateToast(a) {
  const node = toasts.get(String(a.id));
  if (!node) return;
  $(".state-tag", node).textContent = a.state;
  if (a.state === "resolved") {
    node.classList.add("resolved");
    const ack = $(".ack", node);
    if (ack) ack.remove();
    setTimeout(() => dropToast(String(a.id)), 8000);
  }
}

function dropToast(id) {
  const node = toasts.get(id);
  if (node) node.remove();
  toasts.delete(id);
}

// ---- the stream --------------------------------------------------------------------------------
let source = null;
let isSignedOut = false;

function setConn(state, text) {
  const node = $("#conn");
  node.className = `conn ${state}`;
  node.textContent = text;
}

export function signedOut() {
  if (isSignedOut) return;
  isSignedOut = true;
  if (source) source.close();
  setConn("closed", "signed out — ");
  $("#conn").append(el("a", { href: "/", text: "sign in" }));
}

export function connect() {
  source = new EventSource("/api/stream");
  source.onopen = () => {
    setConn("live", "live");
    refreshOpenAlerts(); // we may have missed alert events while away
  };
  source.onerror = () => {
    setConn("reconnecting", "reconnecting…");
    if (source.readyState === EventSource.CLOSED) {
      // the browser gave up (e.g. a 401): find out why, then retry ourselves
      fetch("/api/devices", { credentials: "same-origin" })
        .then((r) => (r.status === 401 ? signedOut() : setTimeout(connect, 5000)))
        .catch(() => setTimeout(connect, 5000));
    }
  };
  source.addEventListener("device", (e) => mergeDevice(JSON.parse(e.data)));
  source.addEventListener("level", (e) => mergeLevel(JSON.parse(e.data)));
  source.addEventListener("alert", (e) => onAlertEvent(JSON.parse(e.data)));
}

// "seen 3 s ago", offline and stale colours move with time even without events
setInterval(() => devices.forEach((_, id) => markDirty(id)), 1000);

// ---- time ranges -----------------------------------------------------------------------------
export const RANGES = { "1h": 3600e3, "24h": 86400e3, "7d": 7 * 86400e3 };
export function toLocalInput(ms) {
  const d = new Date(ms - new Date(ms).getTimezoneOffset() * 60000);
  return d.toISOString().slice(0, 16);
}
