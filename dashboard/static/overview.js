// Overview: every device at a glance (live LAeq against its bounds, online, sparkline, open
// alerts, calibration) and the open alerts. Cards are built once and only patched per frame.
import {
  ago, api, boundsFor, devices, displayName, el, fmt, formatHz, isOnline, label, levelClass, live, onAlerts,
  markDirty, onFrame, openAlerts, seedLive, serverNow, when,
} from "./core.js";
import { sparkline } from "./charts.js";

const FLAG_STYLE = { clipped: "bad", below_noise_floor: "warn", uncalibrated: "warn" };

export function mount(root) {
  const summary = el("p", { class: "summary", id: "summary" });
  const grid = el("div", { class: "devices", id: "devices" });
  const empty = el("p", { class: "empty", id: "no-devices", text: "No devices yet. They appear here as soon as they publish." });
  const alertList = el("ul", { class: "alerts", id: "alerts" });
  const noAlerts = el("p", { class: "empty", id: "no-alerts", text: "No open alerts." });
  root.append(el("div", { class: "overview" },
    el("section", { "aria-labelledby": "devices-title" },
      el("h2", { id: "devices-title", text: "Devices" }), summary, empty, grid),
    el("aside", { "aria-labelledby": "alerts-title" },
      el("h2", { id: "alerts-title" }, "Open alerts ", el("a", { href: "#/alerts", class: "more", text: "all alerts →" })),
      noAlerts, alertList)));

  const cards = new Map();
  // Only cards on screen are patched; the others wait in `pending` until they scroll into view.
  // With 500 devices streaming, that keeps each frame's DOM work to the dozen cards one sees.
  const visible = new Set();
  const pending = new Set();
  const io = new IntersectionObserver((entries) => {
    for (const e of entries) {
      const id = e.target.dataset.id;
      if (e.isIntersecting) {
        visible.add(id);
        if (pending.delete(id)) markDirty(id);
      } else visible.delete(id);
    }
  });
  const setText = (node, text) => { if (node.textContent !== text) node.textContent = text; };
  const setClass = (node, cls) => { if (node.className !== cls) node.className = cls; };

  function card(id) {
    let c = cards.get(id);
    if (c) return c;
    const spark = sparkline();
    c = {
      root: el("a", { class: "card", href: `#/device/${encodeURIComponent(id)}`, "data-id": id }),
      name: el("span", { class: "card-id" }),
      state: el("span", { class: "state" }),
      level: el("div", { class: "level" }),
      num: el("span", { class: "num" }),
      unit: el("span", { class: "unit" }),
      detail: el("div", { class: "detail" }),
      seen: el("div", { class: "detail" }),
      badges: el("div", { class: "badges" }),
      spark,
      key: "",
    };
    c.level.append(c.num, c.unit);
    c.root.append(el("div", { class: "card-head" }, c.name, c.state), c.level, spark.canvas, c.detail, c.seen, c.badges);
    const after = [...cards.keys()].sort().find((other) => other > id);
    grid.insertBefore(c.root, after ? cards.get(after).root : null);
    cards.set(id, c);
    io.observe(c.root);
    return c;
  }

  function alertsByDevice() {
    const out = new Map();
    for (const a of openAlerts.values()) out.set(a.device, (out.get(a.device) || 0) + (a.state === "open" ? 1 : 0));
    return out;
  }

  function render(ids) {
    const counts = alertsByDevice();
    const now = serverNow();
    for (const id of ids) {
      const dev = devices.get(id);
      if (!dev) continue;
      const isNew = !cards.has(id);
      if (!isNew && !visible.has(id)) {
        pending.add(id);
        continue;
      }
      const c = card(id);
      const cls = levelClass(dev);
      const online = isOnline(dev);
      setClass(c.root, `card ${cls}`);
      if (dev.level_t_ms != null) c.root.dataset.levelT = String(dev.level_t_ms); // the level shown
      setText(c.name, displayName(dev));
      c.name.title = dev.name ? `${dev.name} (${id})` : id;
      setClass(c.state, online ? "state online" : "state");
      setText(c.state, online ? "online" : "offline");
      setClass(c.level, `level ${cls}`);
      setText(c.num, dev.laeq != null ? fmt(dev.laeq) : "—");
      setText(c.unit, dev.laeq == null && (dev.flags || []).includes("no_level") ? "no level" : "dB(A)");
      const parts = [];
      if (dev.dominant_hz != null) parts.push(formatHz(dev.dominant_hz));
      if (dev.laeq == null && dev.lzeq != null) parts.push(`LZeq ${fmt(dev.lzeq)} dB`);
      if (dev.duty != null) parts.push(`duty ${fmt(dev.duty)} %`);
      if (dev.sensor) parts.push(dev.sensor);
      if (dev.location) parts.push(dev.location);
      setText(c.detail, parts.join(" · ") || "\u00a0");
      setText(c.seen, dev.last_seen ? `seen ${ago(now - dev.last_seen)}` : "never seen");
      const n = counts.get(id) || 0;
      // uncalibrated has its own badge; nyquist_limited is normal for an ADC board (device page)
      const flags = (dev.flags || []).filter((f) => f !== "uncalibrated" && f !== "nyquist_limited");
      const key = `${n}|${dev.calibrated}|${flags.join(",")}`;
      if (key !== c.key) { // badges change rarely: rebuild only then
        c.key = key;
        c.badges.textContent = "";
        if (n) c.badges.append(el("span", { class: "badge bad", text: `${n} open alert${n > 1 ? "s" : ""}` }));
        c.badges.append(dev.calibrated
          ? el("span", { class: "badge", text: "calibrated" })
          : el("span", { class: "badge warn", text: "uncalibrated" }));
        for (const f of flags) c.badges.append(el("span", { class: `badge ${FLAG_STYLE[f] || ""}`, text: label(f) }));
      }
      c.spark.draw(live.get(id), now / 1000, boundsFor(id));
    }
    empty.hidden = devices.size > 0;
    let up = 0;
    devices.forEach((d) => { if (isOnline(d)) up += 1; });
    const open = [...openAlerts.values()].filter((a) => a.state === "open").length;
    summary.textContent = devices.size ? `${devices.size} devices, ${up} online, ${open} open alerts` : "";
  }

  function renderAlerts() {
    alertList.textContent = "";
    const items = [...openAlerts.values()].sort((a, b) => String(b.started).localeCompare(String(a.started)));
    for (const a of items.slice(0, 50)) {
      alertList.append(el("li", { class: a.state },
        el("a", { href: `#/device/${encodeURIComponent(a.device)}` }, el("strong", { text: displayName(devices.get(a.device)) || a.device })),
        ` ${label(a.kind)}: ${fmt(a.value)} ${a.unit} (limit ${a.threshold}, worst ${fmt(a.worst)})`,
        a.state === "acknowledged" ? el("span", { class: "badge", text: "acknowledged" }) : null,
        el("span", { class: "when", text: `since ${when(a.started)}` })));
    }
    noAlerts.hidden = items.length > 0;
  }

  // the sparklines' first minutes, from the store (live points take over from there)
  (async () => {
    const end = serverNow();
    for (const id of [...devices.keys()].sort().slice(0, 60)) {
      if ((live.get(id)?.t.length || 0) > 20) continue;
      try {
        const h = await api(`/api/devices/${encodeURIComponent(id)}/history?start=${Math.round(end - 300e3)}&end=${Math.round(end)}&points=150`);
        seedLive(id, h.points);
        markDirty(id);
      } catch { /* live points still arrive */ }
    }
  })();
  const offFrame = onFrame(render);
  const offAlerts = onAlerts(renderAlerts);
  render(new Set(devices.keys()));
  renderAlerts();
  return () => { offFrame(); offAlerts(); io.disconnect(); };
}

export const title = "Overview";
