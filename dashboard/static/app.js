// soundmon live page: devices and open alerts, updated from EventSource('/api/stream').
// Plain JS, no build step. The sign-in cookie authenticates both the stream and fetch().
"use strict";

const LEVEL_MIN_DB = parseFloat(document.body.dataset.levelMin) || 60;
const LEVEL_MAX_DB = parseFloat(document.body.dataset.levelMax) || 80;
// same rule as the API (dashboard/views.py STALE_AFTER_MS): not heard from for 60 s = offline
const OFFLINE_AFTER_MS = 60000;
// a level older than this is greyed out: never show a stale value as if it were current
const STALE_LEVEL_MS = 10000;
const FLAG_STYLE = { clipped: "bad", below_noise_floor: "warn", uncalibrated: "warn" };

const devices = new Map(); // id -> merged device state (API device dict + latest level)
const cards = new Map(); // id -> { root, level, ... } DOM nodes, built once per device
const dirty = new Set();
let frameQueued = false;
let clockOffsetMs = 0; // server clock - browser clock, from the Date header of API replies
let source = null;

const $ = (id) => document.getElementById(id);
const serverNow = () => Date.now() + clockOffsetMs;

// ---- state --------------------------------------------------------------------------------
function mergeDevice(data) {
  if (!data || !data.id) return;
  const dev = devices.get(data.id) || {};
  Object.assign(dev, data);
  devices.set(data.id, dev);
  markDirty(data.id);
}

function mergeLevel(level) {
  if (!level || !level.device) return;
  const dev = devices.get(level.device) || { id: level.device, state: "online" };
  devices.set(level.device, dev);
  dev.last_seen = Math.max(dev.last_seen || 0, serverNow());
  if (dev.level_t_ms != null && level.t_ms < dev.level_t_ms) {
    markDirty(level.device); // an older record (replayed after an outage): keep the newest
    return;
  }
  dev.level_t_ms = level.t_ms;
  for (const key of ["laeq", "lzeq", "dbfs", "dominant_hz", "duty", "flags"]) {
    if (key in level) dev[key] = level[key];
  }
  markDirty(level.device);
}

function isOnline(dev) {
  return dev.state === "online" && dev.last_seen != null &&
    serverNow() - dev.last_seen <= OFFLINE_AFTER_MS;
}

function levelClass(dev) {
  const fresh = dev.level_t_ms != null && serverNow() - dev.level_t_ms <= STALE_LEVEL_MS;
  if (!isOnline(dev) || !fresh || dev.laeq == null) return "off";
  if (dev.laeq < LEVEL_MIN_DB) return "low";
  if (dev.laeq > LEVEL_MAX_DB) return "high";
  return "ok";
}

// ---- rendering (coalesced: at most once per animation frame) ------------------------------
function markDirty(id) {
  dirty.add(id);
  if (!frameQueued) {
    frameQueued = true;
    requestAnimationFrame(flush);
  }
}

function flush() {
  frameQueued = false;
  for (const id of dirty) renderDevice(devices.get(id));
  dirty.clear();
  $("no-devices").hidden = devices.size > 0;
  $("device-count").textContent = devices.size ? `(${devices.size})` : "";
}

function el(tag, cls, parent) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (parent) parent.appendChild(node);
  return node;
}

function makeCard(id) {
  const root = el("article", "card");
  const head = el("div", "card-head", root);
  el("span", "card-id", head).textContent = id;
  const c = { root, state: el("span", "state", head) };
  c.level = el("div", "level", root);
  c.detail = el("div", "detail", root);
  c.seen = el("div", "detail", root);
  c.badges = el("div", "badges", root);
  // keep the grid sorted by id
  const after = [...cards.keys()].sort().find((other) => other > id);
  $("devices").insertBefore(root, after ? cards.get(after).root : null);
  cards.set(id, c);
  return c;
}

function renderDevice(dev) {
  if (!dev) return;
  const c = cards.get(dev.id) || makeCard(dev.id);
  const cls = levelClass(dev);
  const online = isOnline(dev);
  c.root.className = `card ${cls}`;
  c.state.className = online ? "state online" : "state";
  c.state.textContent = online ? "online" : "offline";
  c.level.className = `level ${cls}`;
  c.level.textContent = "";
  if (dev.laeq != null) {
    c.level.append(dev.laeq.toFixed(1));
    el("span", "unit", c.level).textContent = "dB(A)";
  } else {
    c.level.append("—");
    el("span", "unit", c.level).textContent = (dev.flags || []).includes("no_level")
      ? "no level" : "dB(A)";
  }
  const parts = [];
  if (dev.dominant_hz != null) parts.push(formatHz(dev.dominant_hz));
  if (dev.laeq == null && dev.lzeq != null) parts.push(`LZeq ${dev.lzeq.toFixed(1)} dB`);
  if (dev.duty != null) parts.push(`duty ${dev.duty.toFixed(1)} %`);
  if (dev.sensor) parts.push(dev.sensor);
  c.detail.textContent = parts.join(" · ") || "\u00a0";
  c.seen.textContent = dev.last_seen ? `seen ${ago(serverNow() - dev.last_seen)}` : "never seen";
  c.badges.textContent = "";
  for (const flag of dev.flags || []) {
    el("span", `badge ${FLAG_STYLE[flag] || ""}`, c.badges).textContent = flag.replace(/_/g, " ");
  }
}

function formatHz(hz) {
  return hz >= 1000 ? `${(hz / 1000).toFixed(2)} kHz` : `${Math.round(hz)} Hz`;
}

function ago(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

// ---- alerts -------------------------------------------------------------------------------
let alertsTimer = null;
function refreshAlertsSoon() {
  clearTimeout(alertsTimer);
  alertsTimer = setTimeout(refreshAlerts, 250); // a burst of alert events -> one request
}

async function refreshAlerts() {
  let reply;
  try {
    reply = await fetch("/api/alerts?state=open&limit=50", { credentials: "same-origin" });
  } catch (err) {
    return; // the stream's state shows the outage
  }
  if (reply.status === 401) return signedOut();
  if (!reply.ok) return;
  const date = Date.parse(reply.headers.get("Date"));
  // the Date header has 1 s resolution: only correct clocks that are clearly off
  if (!Number.isNaN(date) && Math.abs(date - Date.now()) > 2000) clockOffsetMs = date - Date.now();
  renderAlerts(await reply.json());
}

function renderAlerts(alerts) {
  const list = $("alerts");
  list.textContent = "";
  for (const a of alerts) {
    const li = el("li", "", list);
    const strong = el("strong", "", li);
    strong.textContent = a.device;
    li.append(` ${a.kind.replace(/_/g, " ")}: ${a.value.toFixed(1)} ${a.unit}` +
      ` (limit ${a.threshold} ${a.unit}, worst ${a.worst.toFixed(1)})`);
    el("span", "when", li).textContent = `since ${new Date(a.started).toLocaleString()}`;
  }
  $("no-alerts").hidden = alerts.length > 0;
  $("alert-count").textContent = alerts.length ? `(${alerts.length})` : "";
}

// ---- connection ---------------------------------------------------------------------------
function setConn(state, text) {
  const node = $("conn");
  node.className = `conn ${state}`;
  node.textContent = text;
}

function signedOut() {
  if (source) source.close();
  const node = $("conn");
  setConn("closed", "signed out — ");
  const link = el("a", "", node);
  link.href = "/";
  link.textContent = "sign in";
}

function connect() {
  source = new EventSource("/api/stream");
  source.onopen = () => {
    setConn("live", "live");
    refreshAlerts(); // we may have missed alert events while away
  };
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) {
      // the browser gave up (e.g. a 401): find out why, then retry ourselves
      setConn("reconnecting", "reconnecting…");
      fetch("/api/devices", { credentials: "same-origin" })
        .then((r) => (r.status === 401 ? signedOut() : setTimeout(connect, 5000)))
        .catch(() => setTimeout(connect, 5000));
    } else {
      setConn("reconnecting", "reconnecting…");
    }
  };
  source.addEventListener("device", (e) => mergeDevice(JSON.parse(e.data)));
  source.addEventListener("level", (e) => mergeLevel(JSON.parse(e.data)));
  source.addEventListener("alert", () => refreshAlertsSoon());
}

// "seen 3 s ago", offline and stale colours move with time even without events
setInterval(() => devices.forEach((dev) => markDirty(dev.id)), 1000);
flush();
connect();
