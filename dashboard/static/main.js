// soundmon dashboard entry: hash routes (#/, #/device/ID, #/alerts, #/settings[/ID]) over one
// live stream; each page module mounts into <main> and returns its clean-up.
import { api, connect, loadDefaultBounds, loadFeatures, mergeDevice, refreshOpenAlerts, setupNotifications } from "./core.js";
import * as alerts from "./alerts.js";
import * as device from "./device.js";
import * as overview from "./overview.js";
import * as settings from "./settings.js";

const ROUTES = [
  [/^\/?$/, overview, "overview"],
  [/^\/device\/([^/]+)$/, device, "overview"],
  [/^\/alerts$/, alerts, "alerts"],
  [/^\/settings(?:\/([^/]+))?$/, settings, "settings"],
];

let cleanup = null;

function route() {
  const [path, qs] = (location.hash.slice(1) || "/").split("?");
  const query = new URLSearchParams(qs || "");
  const view = document.getElementById("view");
  if (cleanup) cleanup();
  cleanup = null;
  view.textContent = "";
  for (const [re, page, nav] of ROUTES) {
    const m = path.match(re);
    if (!m) continue;
    const params = m.slice(1).filter((x) => x != null).map(decodeURIComponent);
    document.querySelectorAll("[data-nav]").forEach((a) => a.classList.toggle("on", a.dataset.nav === nav));
    document.body.dataset.page = page === device ? "device" : nav;
    cleanup = page.mount(view, params, query) || null;
    return;
  }
  view.textContent = "No such page.";
}

async function start() {
  setupNotifications();
  await loadFeatures();
  await loadDefaultBounds();
  try {
    for (const d of await api("/api/devices")) mergeDevice(d);
  } catch { /* the stream's snapshot fills them in */ }
  connect();
  refreshOpenAlerts();
  window.addEventListener("hashchange", route);
  route();
}

start();
