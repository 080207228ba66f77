// Devices and settings: name, location, notes and calibration offset per device, its last status,
// its rules; notification channels; long work (a WAV analysis) followed through /api/tasks/{id};
// a link to Flower for worker load. Sections whose endpoints this server lacks stay hidden.
import {
  FLOWER_URL, api, devices, displayName, el, fmt, followTask, has, isOnline, mergeDevice,
} from "./core.js";
import { wouldBeAlerts } from "./recordings.js";

export function mount(root, [selected]) {
  const list = el("tbody", { id: "device-rows" });
  const editor = el("div", { id: "device-editor" });
  root.append(el("div", { class: "settings-page" },
    el("section", { class: "panel" }, el("h2", { text: "Devices" }),
      el("div", { class: "table-wrap" }, el("table", {},
        el("thead", {}, el("tr", {}, ...["device", "name", "location", "state", "K (dB)", ""].map((h) => el("th", { text: h })))),
        list))),
    editor));

  function renderList() {
    list.textContent = "";
    for (const id of [...devices.keys()].sort()) {
      const d = devices.get(id);
      list.append(el("tr", { class: id === selected ? "on" : "" },
        el("td", {}, el("a", { href: `#/device/${encodeURIComponent(id)}`, text: id })),
        el("td", { text: d.name || "" }), el("td", { text: d.location || "" }),
        el("td", { text: isOnline(d) ? "online" : "offline" }),
        el("td", { text: `${fmt(d.calibration_db, 2)}${d.calibrated ? "" : " (default)"}` }),
        el("td", {}, el("a", { href: `#/settings/${encodeURIComponent(id)}`, class: "button", text: "edit", "data-edit": id }))));
    }
    if (!devices.size) list.append(el("tr", {}, el("td", { colspan: "6", class: "empty", text: "No devices yet." })));
  }

  async function renderEditor(id) {
    editor.textContent = "";
    let dev;
    try {
      dev = await api(`/api/devices/${encodeURIComponent(id)}`);
    } catch (err) {
      editor.append(el("p", { class: "error", text: err.message }));
      return;
    }
    const name = el("input", { name: "name", value: dev.name || "", maxlength: "80" });
    const location = el("input", { name: "location", value: dev.location || "", maxlength: "200" });
    const notes = el("textarea", { name: "notes", rows: "3", maxlength: "2000" });
    notes.value = dev.notes || "";
    const k = el("input", { name: "offset_db", type: "number", step: "0.01", min: "-50", max: "250", value: dev.calibrated ? String(dev.calibration_db) : "" , placeholder: `default ${fmt(dev.calibration_db, 1)}` });
    const msg = el("p", { class: "note", role: "status" });
    const form = el("form", { class: "edit", id: "device-form", onsubmit: async (e) => {
      e.preventDefault();
      try {
        let d = await api(`/api/devices/${encodeURIComponent(id)}`, { method: "PATCH", json: { name: name.value, location: location.value, notes: notes.value } });
        if (k.value !== "" && Number(k.value) !== (dev.calibrated ? dev.calibration_db : null)) {
          d = await api(`/api/devices/${encodeURIComponent(id)}/calibration`, { method: "PUT", json: { offset_db: Number(k.value) } });
        }
        mergeDevice(d);
        dev = d;
        msg.textContent = "Saved.";
        renderList();
      } catch (err) {
        msg.textContent = `Not saved: ${err.message}`;
      }
    } },
    el("label", {}, "Name ", name), el("label", {}, "Location ", location), el("label", {}, "Notes ", notes),
    el("label", {}, "Calibration offset K (dB = dBFS + K) ", k),
    el("button", { type: "submit", text: "Save" }), msg);
    editor.append(el("section", { class: "panel" }, el("h2", { text: `Settings of ${displayName(dev)}${dev.name ? ` (${id})` : ""}` }), form,
      el("h3", { text: "Config that soundmon deploy wrote" }),
      deployed(dev.deployed),
      el("h3", { text: "Status the device last sent" }),
      el("p", { class: "note", text: "Its firmware version, sensor and sample rate as running now (a retained config message may have changed them since the deploy)." }),
      el("pre", { class: "json", text: dev.status ? JSON.stringify(dev.status, null, 2) : "no status yet" })));
    if (has("/api/devices/{}/rules", "put")) {
      editor.append(jsonEditor(`Rules of ${id}: what it changes from the defaults`, `/api/devices/${encodeURIComponent(id)}/rules`,
        (r) => r.override, 'e.g. {"level": {"max_db": 70}}; {} uses the defaults'));
    }
  }

  // what `soundmon deploy` recorded (passwords masked as ***), or how to get it recorded
  function deployed(rec) {
    if (!rec || !rec.config) {
      return el("p", { class: "note", id: "deployed-config", text: "Nothing recorded: this device was not deployed with soundmon deploy on this server's data directory (or before deploys were recorded)." });
    }
    return el("div", { id: "deployed-config" },
      el("p", { class: "note", text: `Deployed ${rec.t_ms ? new Date(rec.t_ms).toLocaleString() : "—"} over ${rec.port || "?"}, firmware ${rec.firmware || "?"}; passwords are not kept (*** = set).` }),
      el("pre", { class: "json", text: JSON.stringify(rec.config, null, 2) }));
  }

  // edit one JSON document; pick(reply) is the part that is edited (and PUT back)
  function jsonEditor(title, path, pick = (v) => v, hint = "") {
    const area = el("textarea", { class: "json", rows: "10", spellcheck: "false", "aria-label": title });
    const msg = el("p", { class: "note", role: "status" });
    const section = el("section", { class: "panel" }, el("h2", { text: title }), hint ? el("p", { class: "note", text: hint }) : null, area,
      el("button", { type: "button", text: "Save", onclick: async () => {
        let value;
        try { value = JSON.parse(area.value); } catch (err) { msg.textContent = `Not JSON: ${err.message}`; return; }
        try { area.value = JSON.stringify(pick(await api(path, { method: "PUT", json: value })), null, 2); msg.textContent = "Saved."; } catch (err) { msg.textContent = `Not saved: ${err.message}`; }
      } }), msg);
    api(path).then((v) => { area.value = JSON.stringify(pick(v), null, 2); }).catch((err) => { msg.textContent = err.message; });
    return section;
  }

  function channels() {
    const rows = el("ul", { class: "plain-list" });
    const area = el("textarea", { class: "json", rows: "5", spellcheck: "false", placeholder: '{"kind": "webhook", "url": "https://example.org/hook"}' });
    const msg = el("p", { class: "note", role: "status" });
    async function load() {
      rows.textContent = "";
      try {
        const list = await api("/api/channels");
        for (const c of Array.isArray(list) ? list : list.channels || []) {
          rows.append(el("li", {}, el("code", { text: JSON.stringify(c) }), " ",
            has("/api/channels/{}", "delete") && !c.builtin ? el("button", { type: "button", text: "remove", onclick: async () => {
              try { await api(`/api/channels/${encodeURIComponent(c.id)}`, { method: "DELETE" }); load(); } catch (err) { msg.textContent = err.message; }
            } }) : null));
        }
        if (!rows.children.length) rows.append(el("li", { class: "empty", text: "No channels: alerts show here and go out on MQTT only." }));
      } catch (err) { msg.textContent = err.message; }
    }
    load();
    return el("section", { class: "panel" }, el("h2", { text: "Notification channels" }), rows,
      has("/api/channels", "post") ? el("div", {}, area, el("button", { type: "button", text: "Add channel", onclick: async () => {
        try { await api("/api/channels", { method: "POST", json: JSON.parse(area.value) }); area.value = ""; msg.textContent = "Added."; load(); } catch (err) { msg.textContent = `Not added: ${err.message}`; }
      } })) : null, msg);
  }

  // a WAV analysis (or any upload that answers with a task id), followed to its result
  function analysis(path) {
    const file = el("input", { type: "file", name: "file", accept: ".wav,.flac,audio/*" });
    const progress = el("progress", { max: "1", value: "0", hidden: true });
    const msg = el("p", { class: "note", role: "status", id: "task-status" });
    const out = el("pre", { class: "json", hidden: true, id: "task-result" });
    const alerts = el("div"); // the alerts the rules would have raised over the file
    return el("section", { class: "panel" }, el("h2", { text: "Analyse a recording" }),
      el("p", { class: "note", text: "Upload a WAV or FLAC file: the workers measure it with the pipeline's DSP and this page follows the task to its result." }),
      el("form", { onsubmit: async (e) => {
        e.preventDefault();
        if (!file.files.length) return;
        const f = file.files[0];
        try {
          const started = await api(`${path}?name=${encodeURIComponent(f.name.slice(0, 100))}`, { method: "POST", form: f });
          const taskId = started.task_id || started.id;
          progress.hidden = false;
          const task = await followTask(taskId, (t) => {
            progress.value = t.progress ?? 0;
            msg.textContent = `task ${taskId}: ${t.state}${t.stage ? ` (${t.stage})` : ""}`;
          });
          out.hidden = false;
          const r = task.result;
          const shown = r && typeof r === "object" ? (r.summary ?? r.stats ?? r) : (r ?? task.error);
          out.textContent = JSON.stringify(shown, null, 2).slice(0, 5000);
          alerts.textContent = "";
          if (r && Array.isArray(r.alerts)) alerts.append(wouldBeAlerts(r.alerts, "task-alerts"));
        } catch (err) { msg.textContent = err.message; }
      } }, file, el("button", { type: "submit", text: "Analyse" })), progress, msg, out, alerts);
  }

  renderList();
  if (selected) renderEditor(selected);
  if (has("/api/rules", "put")) root.append(jsonEditor("Default rules (every device)", "/api/rules"));
  if (has("/api/channels")) root.append(channels());
  if (has("/api/uploads", "post") && has("/api/tasks/{}")) root.append(analysis("/api/uploads"));
  root.append(el("section", { class: "panel" }, el("h2", { text: "Workers" }),
    FLOWER_URL ? el("p", {}, "Worker load, queues and task history: ", el("a", { href: FLOWER_URL, target: "_blank", rel: "noopener", id: "flower-link", text: `Flower (${FLOWER_URL})` }))
      : el("p", { class: "note", text: "Flower's address is not known to this server (soundmon up sets SOUNDMON_FLOWER_URL)." })));
  return () => {};
}

