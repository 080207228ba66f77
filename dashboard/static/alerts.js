// Alerts page: filter by device, state and time; acknowledge, resolve and delete; delivery log;
// the clip.
// Actions that belong to other parts of soundmon show only when this server has their endpoint.
import {
  RANGES, acknowledge, api, devices, displayName, el, fmt, has, label, onAlerts, resolve, serverNow, toLocalInput, toast, when,
} from "./core.js";

const STATES = ["open", "acknowledged", "resolved"];

export function mount(root, _params, query) {
  const device = el("select", { name: "device", "aria-label": "device" }, el("option", { value: "", text: "every device" }));
  for (const id of [...devices.keys()].sort()) device.append(el("option", { value: id, text: displayName(devices.get(id)) }));
  const state = el("select", { name: "state", "aria-label": "state" }, el("option", { value: "", text: "any state" }),
    ...STATES.map((s) => el("option", { value: s, text: s })));
  const since = el("input", { type: "datetime-local", name: "since", "aria-label": "since" });
  if (query.get("device")) {
    if (![...device.options].some((o) => o.value === query.get("device"))) device.append(el("option", { value: query.get("device"), text: query.get("device") }));
    device.value = query.get("device");
  }
  state.value = query.get("state") || "";
  since.value = toLocalInput(serverNow() - RANGES["7d"]);
  const table = el("tbody", { id: "alert-rows" });
  const note = el("p", { class: "note", id: "alerts-note" });
  const exports = el("p", { class: "exports" });
  const form = el("form", { class: "filters", onsubmit: (e) => { e.preventDefault(); load(); } },
    el("label", {}, "Device ", device), el("label", {}, "State ", state), el("label", {}, "Since ", since),
    el("button", { type: "submit", text: "Filter" }));
  for (const input of [device, state, since]) input.addEventListener("change", () => load());
  root.append(el("section", { class: "panel" }, el("h2", { text: "Alerts" }), form, note,
    el("div", { class: "table-wrap" }, el("table", { class: "alert-table" },
      el("thead", {}, el("tr", {}, ...["device", "alert", "value", "limit", "worst", "state", "started", "ended", ""].map((h) => el("th", { text: h })))),
      table)), exports));

  let seq = 0;
  async function load() {
    const mine = ++seq;
    const params = new URLSearchParams({ limit: "500" });
    if (device.value) params.set("device", device.value);
    if (state.value) params.set("state", state.value);
    const sinceMs = Date.parse(since.value);
    if (!Number.isNaN(sinceMs)) params.set("since", new Date(sinceMs).toISOString());
    let list;
    try {
      list = await api(`/api/alerts?${params}`);
    } catch (err) {
      note.textContent = `Could not load alerts: ${err.message}`;
      return;
    }
    if (mine !== seq) return;
    // servers without ?since= return older alerts too: filter here as well
    if (!Number.isNaN(sinceMs)) list = list.filter((a) => !a.ended || Date.parse(a.ended) >= sinceMs);
    table.textContent = "";
    for (const a of list) table.append(...row(a));
    note.textContent = list.length ? `${list.length} alerts, newest first` : "No alerts match.";
    const q = new URLSearchParams({ start: String(Number.isNaN(sinceMs) ? serverNow() - RANGES["7d"] : sinceMs), end: String(Math.round(serverNow())) });
    if (device.value) q.set("device", device.value);
    exports.textContent = "";
    exports.append("Export: ", el("a", { href: `/api/export/alerts?${q}&format=csv`, download: "", text: "CSV" }), " ",
      el("a", { href: `/api/export/alerts?${q}&format=json`, download: "", text: "JSON" }));
  }

  function row(a) {
    const id = String(a.id);
    const actions = el("td", { class: "actions" });
    const detail = el("tr", { class: "detail-row", hidden: true }, el("td", { colspan: "9" }));
    if (a.state === "open" && has("/api/alerts/{}/ack", "post")) {
      actions.append(el("button", { type: "button", text: "Acknowledge", onclick: async (e) => {
        e.target.disabled = true;
        try { await acknowledge(id); load(); } catch (err) { toast(err.message, "bad"); e.target.disabled = false; }
      } }));
    }
    if (a.state !== "resolved" && has("/api/alerts/{}/resolve", "post")) {
      actions.append(el("button", { type: "button", text: "Resolve", onclick: async (e) => {
        e.target.disabled = true;
        try { await resolve(id); load(); } catch (err) { toast(err.message, "bad"); e.target.disabled = false; }
      } }));
    }
    if (a.state === "resolved" && has("/api/alerts/{}", "delete")) {
      actions.append(el("button", { type: "button", class: "delete", text: "Delete", onclick: async (e) => {
        // the alert, its delivery log and its audio clip go for good (retention never deletes a clip)
        if (!window.confirm(`Delete alert ${id} (${label(a.kind)} on ${a.device}), its delivery log and its audio clip? This cannot be undone.`)) return;
        e.target.disabled = true;
        try { await api(`/api/alerts/${encodeURIComponent(id)}`, { method: "DELETE" }); load(); } catch (err) { toast(err.message, "bad"); e.target.disabled = false; }
      } }));
    }
    const deliveries = deliveryPath(id);
    const clip = has("/api/alerts/{}/clip");
    if (deliveries || clip) {
      actions.append(el("button", { type: "button", text: "details", onclick: () => {
        detail.hidden = !detail.hidden;
        if (!detail.hidden && !detail.dataset.loaded) showDetail(a, detail.firstChild, deliveries, clip);
        detail.dataset.loaded = "1";
      } }));
    }
    return [el("tr", { class: a.state, "data-alert": id },
      el("td", {}, el("a", { href: `#/device/${encodeURIComponent(a.device)}`, text: displayName(devices.get(a.device)) || a.device })),
      el("td", { text: label(a.kind) }), el("td", { text: `${fmt(a.value)} ${a.unit}` }),
      el("td", { text: `${a.threshold}` }), el("td", { text: fmt(a.worst) }),
      el("td", {}, el("span", { class: `badge ${a.state === "open" ? "bad" : ""}`, text: a.state,
        title: a.resolved_by ? `resolved by ${a.resolved_by}` : a.acknowledged_by ? `acknowledged by ${a.acknowledged_by}` : null })),
      el("td", { text: when(a.started) }), el("td", { text: a.ended ? when(a.ended) : "—" }), actions), detail];
  }

  async function showDetail(a, cell, deliveries, clip) {
    cell.textContent = "";
    if (clip) {
      cell.append(el("p", {}, "Clip: ", el("audio", { controls: true, preload: "none", src: `/api/alerts/${encodeURIComponent(a.id)}/clip` })));
    }
    if (deliveries) {
      try {
        const log = await api(deliveries);
        const items = log.deliveries || [];
        cell.append(el("h3", { text: "Delivery log" }));
        if (!items.length) cell.append(el("p", { class: "note", text: "Nothing delivered yet." }));
        else {
          cell.append(el("ul", { class: "plain-list" }, ...items.map((d) => el("li", {
            text: [d.channel_name || d.channel, d.event, d.state, d.attempts > 1 ? `${d.attempts} attempts` : null,
              when(d.updated || d.created), d.error].filter(Boolean).join(" · "),
          }))));
        }
      } catch (err) {
        cell.append(el("p", { class: "note", text: `Delivery log: ${err.message}` }));
      }
    }
  }

  let timer = null; // a burst of alert events -> one reload
  const off = onAlerts(() => { clearTimeout(timer); timer = setTimeout(load, 400); });
  load();
  return off;
}

// the delivery log comes with the alert itself (GET /api/alerts/{id}) when the server has it
function deliveryPath(id) {
  return has("/api/alerts/{}") ? `/api/alerts/${encodeURIComponent(id)}` : null;
}
