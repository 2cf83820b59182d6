// The operator's console: polls the JSON API (/docs) and draws with charts.js. No framework.
"use strict";

const S = window.consoleState = {
  token: localStorage.getItem("accelpilot-token") || new URLSearchParams(location.search).get("token") || "",
  inventory: null, status: null, live: null, selected: null, history: null, score: null,
  recs: null, streams: null, hosts: {}, lastEditMs: 0, polls: 0, errors: 0,
};
const $ = id => document.getElementById(id);
const HISTORY_S = 180;

function esc(s) {
  return String(s ?? "").replace(/[&<>"']/g, c => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}
function fmt(v, digits = 0, unit = "") {
  return v === null || v === undefined || Number.isNaN(v) ? "–" : Number(v).toFixed(digits) + unit;
}
function fmtBytes(b) {
  if (b === null || b === undefined) return "not reported";
  return (b / 2 ** 30).toFixed(0) + " GiB";
}
function ago(tsNs) {
  const d = new Date(tsNs / 1e6);
  return d.toLocaleTimeString([], { hour12: false });
}

function toast(msg, bad) {
  const t = $("toast");
  t.textContent = msg;
  t.className = "toast " + (bad ? "bad" : "good");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => t.className = "toast hidden", 5000);
}

async function api(path, body) {
  const opts = { headers: {} };
  if (S.token) opts.headers.Authorization = "Bearer " + S.token;
  if (body !== undefined) {
    opts.method = "POST";
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  if (r.status === 401) $("token-bar").classList.remove("hidden");
  const data = await r.json().catch(() => ({}));
  if (!r.ok) {
    const err = new Error(typeof data.detail === "string" ? data.detail : `${r.status}`);
    err.status = r.status;
    throw err;
  }
  return data;
}

async function act(path, body, what) {
  S.lastEditMs = Date.now();
  try {
    const r = await api(path, body);
    const o = r.outcomes ? Object.entries(r.outcomes).map(([k, v]) => `${v} ${k}`).join(", ") : "done";
    toast(`${what}: ${o}`);
    await pollFast();
    pollSlow();
    return r;
  } catch (e) {
    toast(`${what} refused: ${e.message}`, true);
    return null;
  }
}

// -- inventory ---------------------------------------------------------------------------------
// Discovery's capabilities (collectors/device.py Capabilities; null = the backend cannot tell).
const flag = (v, yes, no) => v === null || v === undefined ? null : v ? yes : no;
const CAPABILITIES = [
  ["compute capability", c => c.compute_capability],
  ["MIG", c => c.mig_supported === null || c.mig_supported === undefined ? null : !c.mig_supported ? "not supported"
    : `supported, ${flag(c.mig_enabled, "enabled", "disabled") ?? "mode not reported"}`],
  ["ECC", c => flag(c.ecc_enabled, "enabled", "disabled")],
  ["PCIe", c => c.pcie_gen || c.pcie_width ? `gen ${c.pcie_gen ?? "?"} x${c.pcie_width ?? "?"}` : null],
  ["NVLink links", c => c.nvlink_links],
  ["max clocks", c => c.max_clock_sm_mhz || c.max_clock_mem_mhz ?
    `SM ${fmt(c.max_clock_sm_mhz)} MHz, memory ${fmt(c.max_clock_mem_mhz)} MHz` : null],
  ["power limits", c => c.power_limits &&
    `${c.power_limits.min_w}–${c.power_limits.max_w} W, default ${c.power_limits.default_w} W`],
  ["driver", c => c.driver_version],
  ["management library", c => c.library_version],
];

function capabilitiesHtml(d) {
  const c = d.capabilities || {};
  const rows = [["backend", d.backend], ["uuid", d.uuid], ["index", d.index],
    ["streams", (d.streams || []).join(", ") || null],
    ...CAPABILITIES.map(([k, get]) => [k, get(c)]),
    ...Object.entries(c.extra || {}).map(([k, v]) => [`${k} (backend extra)`, v])];
  const note = S.status && S.status.read_only
    ? '<p class="muted">read-only mode: discovery data (vendor, model, capabilities) is not in InfluxDB</p>'
    : S.status && S.status.pipeline
    ? '<p class="muted">real pipeline: discovery data is not in InfluxDB; power limits and streams come from the fleet description</p>' : "";
  return note + '<dl class="caps">' + rows.map(([k, v]) =>
    `<dt>${esc(k)}</dt><dd${v === null || v === undefined ? ' class="muted">not reported' : `>${esc(v)}`}</dd>`).join("") + "</dl>";
}

function toggleCapabilities(tr, d) {
  const open = tr.nextElementSibling && tr.nextElementSibling.classList.contains("caps-row");
  if (open) tr.nextElementSibling.remove();
  else {
    const row = document.createElement("tr");
    row.className = "caps-row";
    row.dataset.capsOf = d.device_id;
    row.innerHTML = `<td colspan="12">${capabilitiesHtml(d)}</td>`;
    tr.after(row);
  }
  tr.querySelector(".more").textContent = open ? "▸" : "▾";
  tr.querySelector(".more").setAttribute("aria-expanded", String(!open));
}

function buildInventory() {
  const tb = $("inventory").querySelector("tbody");
  tb.innerHTML = "";
  for (const d of S.inventory.devices) {
    const pl = d.capabilities.power_limits;
    const tr = document.createElement("tr");
    tr.dataset.device = d.device_id;
    tr.innerHTML = `<td><button class="ghost more" title="capabilities" aria-expanded="false">▸</button></td>
      <td class="id">${esc(d.device_id)}</td><td>${esc(d.kind)}</td>
      <td>${d.vendor || d.model ? `${esc(d.vendor)} ${esc(d.model)}` : "–"}</td><td>${fmtBytes(d.memory_total_bytes)}</td>
      <td>${pl ? `${pl.min_w}–${pl.max_w} W` : "–"}</td>
      <td class="num p">–</td><td class="num c">–</td><td class="num t">–</td><td class="num u">–</td>
      <td class="num r">–</td><td class="flags"></td>`;
    tr.addEventListener("click", () => select(d.device_id));
    tr.querySelector(".more").addEventListener("click", e => { e.stopPropagation(); toggleCapabilities(tr, d); });
    tb.appendChild(tr);
  }
  $("inv-count").textContent = `${S.inventory.devices.length} accelerators on ${S.inventory.hosts.length} hosts`;
  const g = $("group-select");
  g.innerHTML = S.inventory.hosts.map(h => `<option value="host:${esc(h)}">host ${esc(h)}</option>`).join("");
}

function renderLive() {
  const rows = $("inventory").querySelectorAll("tbody tr[data-device]");
  for (const tr of rows) {
    const v = S.live.devices[tr.dataset.device];
    if (!v) continue;
    tr.querySelector(".p").textContent = v.reporting ? fmt(v.power_w) : "silent";
    tr.querySelector(".c").textContent = fmt(v.commanded_cap_w);
    tr.querySelector(".t").textContent = fmt(v.temp_c, 1);
    tr.querySelector(".u").textContent = fmt(v.util_compute_pct);
    const r = tr.querySelector(".r");
    r.textContent = v.risk === null ? "–" : v.risk ? v.risk.toFixed(2) : "0";
    r.className = "num r" + (v.risk >= 0.5 ? " hot" : v.risk >= 0.2 ? " warm" : "");
    tr.querySelector(".flags").innerHTML =
      (v.pinned ? '<span class="chip op">operator</span>' : "") +
      (v.parked ? '<span class="chip">parked</span>' : "") +
      (!v.reporting ? '<span class="chip crit">silent</span>' : "");
    tr.classList.toggle("silent", !v.reporting);
    tr.classList.toggle("selected", tr.dataset.device === S.selected);
  }
  const sel = S.live.devices[S.selected];
  if (sel && !S.status.read_only && sel.min_cap_w !== null && sel.min_cap_w !== undefined) {
    const slider = $("cap-slider");
    slider.min = sel.min_cap_w;
    slider.max = sel.tdp_w;
    if (document.activeElement !== slider && Date.now() - S.lastEditMs > 2500) {
      slider.value = sel.commanded_cap_w;
      $("cap-value").textContent = `${fmt(sel.commanded_cap_w)} W`;
    }
    $("sel-caps").textContent = `cap ${fmt(sel.commanded_cap_w)} W in [${sel.min_cap_w}, ${sel.tdp_w}] W` +
      (S.status.pipeline ? " · as last sampled" : sel.pinned ? " · set by operator" : " · optimizer's");
  }
}

function select(deviceId) {
  S.selected = deviceId;
  S.lastEditMs = 0;
  $("sel-device").textContent = deviceId;
  $("cap-device-name").textContent = deviceId;
  if (S.live) renderLive();
  pollFast();
}

// -- charts ------------------------------------------------------------------------------------
// The four charts of a device or a host (history: /api/history/device or /host), by class name.
const METRIC_CHARTS = [
  ["pw", "power W", h => [{ values: h.cap_w, cls: "c", label: "cap" }, { values: h.power_w, cls: "p", label: "power" }],
    { floor: 0 }],
  ["tp", "temp °C", h => [{ values: h.temp_c, cls: "t", label: "temp" }], {}],
  ["ut", "util %", h => [{ values: h.util_compute_pct, cls: "u", label: "util" }], { min: 0, max: 100 }],
  ["mm", "memory B", h => [{ values: h.mem_used_bytes, cls: "m", label: "mem" }], { floor: 0 }],
];

function drawMetricCharts(root, h, small) {
  for (const [cls, title, series, opts] of METRIC_CHARTS) {
    lineChart(root.querySelector("svg." + cls), h.ts_ns, series(h), {
      ...opts, title: small ? title : undefined,
      emptyText: cls === "mm" ? (small ? "memory not reported" : "memory not reported by this backend") : undefined,
    });
  }
}

function renderDeviceCharts() {
  if (S.history) drawMetricCharts($("device-charts"), S.history, false);
}

function renderHosts() {
  const grid = $("host-charts");
  for (const [host, h] of Object.entries(S.hosts)) {
    let fig = grid.querySelector(`[data-host="${host}"]`);
    if (!fig) {
      fig = document.createElement("figure");
      fig.dataset.host = host;
      fig.innerHTML = `<figcaption>${esc(host)} <b class="hp"></b></figcaption>` +
        METRIC_CHARTS.map(([cls]) => `<svg class="chart small ${cls}"></svg>`).join("");
      grid.appendChild(fig);
    }
    const lastP = [...h.power_w].reverse().find(v => v !== null);
    fig.querySelector(".hp").textContent = lastP !== undefined ? `${lastP.toFixed(0)} W` : "";
    drawMetricCharts(fig, h, true);
  }
}

// -- status, mode, score ---------------------------------------------------------------------
function renderStatus() {
  const s = S.status;
  $("h-scenario").textContent = s.read_only ? "InfluxDB" : s.pipeline ? "InfluxDB + Kafka" : s.scenario;
  $("h-tick").textContent = s.read_only ? "read-only" : s.pipeline ? "steering" : s.tick;
  $("h-power").textContent = fmt(s.fleet_power_w, 0, " W");
  $("h-caps").textContent = fmt(s.fleet_caps_w, 0, " W");
  $("h-budget").textContent = s.budget_w ? fmt(s.budget_w, 0, " W") : "none";
  $("h-alerts").textContent = s.alerts_firing;
  $("h-alerts").parentElement.classList.toggle("alarm", s.alerts_firing > 0);
  for (const m of ["auto", "advise"]) $("mode-" + m).classList.toggle("on", s.mode === m);
  if (s.read_only || s.pipeline) return;
  const b = $("budget-slider");
  b.min = Math.ceil(s.fleet_min_cap_w / 100) * 100;
  b.max = s.fleet_tdp_w;
  if (document.activeElement !== b && Date.now() - S.lastEditMs > 2500) {
    b.value = s.budget_w ?? s.fleet_tdp_w;
    $("budget-value").textContent = s.budget_w ? `${fmt(s.budget_w)} W` : "none";
  }
}

function renderScore() {
  const s = S.score;
  $("h-points").textContent = s.points;
  $("s-points").textContent = s.points;
  const wh = 1000 * s.saved_kwh;
  $("s-saved").textContent = (Math.abs(wh) >= 1000 ? `${s.saved_kwh.toFixed(2)} kWh` : `${wh.toFixed(1)} Wh`) +
    ` · ${(100 * s.saved_fraction).toFixed(1)}%`;
  $("s-jpu").textContent = fmt(s.j_per_unit, 3);
  $("s-jpu-base").textContent = fmt(s.baseline_j_per_unit, 3);
  $("s-streak").textContent = `${s.streak_s.toFixed(0)} s`;
  $("s-best").textContent = `${s.best_streak_s.toFixed(0)} s`;
  const v = s.slo_violated_streams;
  $("s-slo").textContent = v.length ? `missed: ${v.join(", ")}` : "held";
  $("s-slo").className = v.length ? "bad" : "good";
  $("badges").innerHTML = s.badges.map(b =>
    `<span class="badge ${b.earned ? "earned" : ""}" title="${esc(b.description)}" data-badge="${esc(b.id)}">
      ${b.earned ? "★" : "☆"} ${esc(b.title)}</span>`).join("");
}

// -- recommendations -------------------------------------------------------------------------
function recText(r) {
  if (r.kind === "set_power_cap") return `cap <b>${esc(r.device_id)}</b> at ${fmt(r.cap_w)} W`;
  if (r.kind === "park" || r.kind === "wake") return `${r.kind} <b>${esc(r.device_id)}</b>`;
  const w = Object.entries(r.weights || {}).map(([d, x]) => `${d.split("/")[1]} ${(100 * x).toFixed(0)}%`).join(", ");
  return `spread <b>${esc(r.stream_id)}</b> on ${esc(r.host_id)}: ${esc(w)}`;
}

function renderRecs() {
  const r = S.recs;
  const ul = $("recs");
  $("recs-accept-all").classList.toggle("hidden", r.mode !== "advise" || !r.recommendations.length);
  if (r.mode !== "advise") {
    $("recs-summary").textContent = "";
    ul.innerHTML = `<li class="muted">The optimizer is in <b>auto</b> mode and applies its decisions itself.
      Switch to <b>advise</b> (top right) to review them here first.</li>`;
    return;
  }
  $("recs-summary").textContent =
    `${r.recommendations.length} open · expected ${fmt(r.expected_savings_w)} W · accepted ${r.accepted_total} · dismissed ${r.dismissed_total}`;
  if (!r.recommendations.length) { ul.innerHTML = '<li class="muted">nothing to recommend right now</li>'; return; }
  ul.innerHTML = r.recommendations.slice(0, 40).map(x => `
    <li class="rec" data-rec="${esc(x.id)}">
      <div>${recText(x)}<br><small>${x.expected_savings_w === null ? "savings: unknown" :
        `saves ~${fmt(x.expected_savings_w)} W`} · ${esc(x.basis)}</small></div>
      <div class="btns"><button class="accept" data-rec="${esc(x.id)}">accept</button>
      <button class="ghost dismiss" data-rec="${esc(x.id)}">dismiss</button></div>
    </li>`).join("");
}

// -- alerts, risk, audit -----------------------------------------------------------------------
function renderAlerts(alerts, anomalies) {
  const items = alerts.map(a => {
    const ev = Object.entries(a.evidence || {}).slice(0, 4).map(([k, v]) => `${k}=${Number(v).toPrecision(3)}`).join(" ");
    return `<li class="alert ${a.state} ${a.severity}"><span class="chip ${a.severity === "critical" ? "crit" : "warn"}">${esc(a.severity)}</span>
      <b>${esc(a.kind)}</b> ${esc(a.device_id || a.host_id)} <small class="state">${esc(a.state)} · ${ago(a.ts_ns)}</small>
      <div class="reason">${esc(a.reason)}</div><div class="evidence">${esc(ev)}</div></li>`;
  });
  const an = anomalies.slice(0, 5).map(a =>
    `<li class="alert anomaly"><span class="chip">score ${a.score.toFixed(2)}</span> <b>${esc(a.detector)}</b>
      ${esc(a.device_id)} <small>${esc(a.metric || "")} · ${ago(a.ts_ns)}</small></li>`);
  $("alerts").innerHTML = items.concat(an).join("") || '<li class="muted">all quiet</li>';
}

function renderRisk(ranking) {
  const risky = ranking.filter(r => r.risk > 0.005);
  $("risk").innerHTML = (risky.length ? "" : '<li class="muted">no device at risk</li>') + risky.map(r => `<li><span class="id">${esc(r.device_id)}</span>
    <span class="bar"><i style="width:${(100 * r.risk).toFixed(0)}%"></i></span> ${r.risk.toFixed(2)}
    <small>${esc(Object.keys(r.rules).join(", ") || "no rule firing")}</small></li>`).join("");
}

function renderAudit(audit) {
  const rows = audit.actions.map(a => [a.ts_ns, (() => {
    const res = a.results;
    const outs = {};
    for (const r of res) outs[r.outcome] = (outs[r.outcome] || 0) + 1;
    const outcome = Object.entries(outs).map(([k, v]) => `<span class="chip ${k === "applied" ? "ok" : k === "rejected" || k === "failed" ? "crit" : ""}">${k}${v > 1 ? " ×" + v : ""}</span>`).join("") || "pending";
    const value = a.cap_w !== null && a.cap_w !== undefined ? `${a.cap_w.toFixed(0)} W` : a.weights ? "weights" : "";
    const who = (a.issuer || "").startsWith("operator:") ? "op" : "opt";
    return `<tr><td>${ago(a.ts_ns)}</td><td class="${who}">${esc(a.issuer || "not stored")}</td><td>${esc(a.mode || "–")}</td><td>${esc(a.kind)}</td>
      <td>${esc(a.device_id || a.stream_id || a.host_id)}</td><td>${value}</td><td>${outcome}</td>
      <td class="reason">${esc(a.reason)}${a.signed ? ' <span class="chip">signed</span>' : ""}</td></tr>`;
  })()]);
  const evs = audit.events.map(e => [e.ts_ns, `<tr class="event"><td>${ago(e.ts_ns)}</td><td class="op">operator:${esc(e.who)}</td>
    <td>console</td><td>${esc(e.what)}</td><td colspan="4">${esc(e.detail)}</td></tr>`]);
  const all = evs.concat(rows).sort((x, y) => y[0] - x[0]).slice(0, 80);
  $("audit").querySelector("tbody").innerHTML = all.map(x => x[1]).join("");
}

function renderStreams() {
  const sel = $("stream-select");
  if (!sel.options.length) {
    sel.innerHTML = S.streams.map(s => `<option>${esc(s.stream_id)}</option>`).join("");
    const g = $("group-select");
    g.innerHTML += S.streams.map(s => `<option value="stream:${esc(s.stream_id)}">stream ${esc(s.stream_id)}</option>`).join("");
  }
  if (Date.now() - S.lastEditMs < 4000 && $("weights").children.length) return;
  const st = S.streams.find(s => s.stream_id === sel.value) || S.streams[0];
  $("weights").innerHTML = Object.entries(st.weights).map(([d, w]) => `<label class="w">${esc(d)}
    <input type="range" min="0" max="100" step="1" value="${(100 * w).toFixed(0)}" data-device="${esc(d)}">
    <output>${(100 * w).toFixed(0)}%</output></label>`).join("") +
    (st.pinned ? '<p class="muted">set by the operator</p>' : "") +
    (st.weights_known === false ? '<p class="muted">the current shares are not in InfluxDB: the sliders start even</p>' : "");
}

// -- polling -----------------------------------------------------------------------------------
async function pollFast() {
  try {
    if (!S.inventory) { S.inventory = await api("/api/inventory"); buildInventory(); select(S.inventory.devices[0].device_id); }
    const sel = S.selected;
    const status = await api("/api/status");
    const demoOnly = !status.read_only && !status.pipeline;
    const [live, hist, score, recs] = await Promise.all([
      api("/api/live"),
      api(`/api/history/device?device_id=${encodeURIComponent(sel)}&seconds=${HISTORY_S}`),
      demoOnly ? api("/api/score") : null, demoOnly ? api("/api/recommendations") : null,
    ]);
    Object.assign(S, { status, live, score, recs });
    if (hist.device_id === S.selected) S.history = hist;
    document.body.classList.toggle("read-only", status.read_only);
    document.body.classList.toggle("pipeline", !!status.pipeline);
    renderStatus(); renderLive(); renderDeviceCharts();
    if (demoOnly && score && recs) { renderScore(); renderRecs(); }
    S.polls += 1;
    $("conn").textContent = "live";
    $("conn").className = "conn ok";
  } catch (e) {
    S.errors += 1;
    $("conn").textContent = e.status === 401 ? "token needed" : "offline";
    $("conn").className = "conn bad";
  }
}

async function pollSlow() {
  try {
    const hosts = S.inventory ? S.inventory.hosts : [];
    const ro = S.status ? S.status.read_only : true;
    const demoOnly = S.status ? !ro && !S.status.pipeline : false;
    const [alerts, anomalies, risk, audit, streams, ...hh] = await Promise.all([
      api("/api/alerts?limit=30"), api("/api/anomalies?limit=10"),
      demoOnly ? api("/api/risk?limit=8") : null, api("/api/audit?limit=60"), ro ? null : api("/api/streams"),
      ...hosts.map(h => api(`/api/history/host?host_id=${encodeURIComponent(h)}&seconds=${HISTORY_S}`)),
    ]);
    hosts.forEach((h, i) => S.hosts[h] = hh[i]);
    renderAlerts(alerts.alerts, anomalies.anomalies); renderAudit(audit); renderHosts();
    if (risk) renderRisk(risk.ranking);
    if (streams) { S.streams = streams.streams; renderStreams(); }
  } catch (e) { S.errors += 1; }
}

// -- controls ----------------------------------------------------------------------------------
function wire() {
  const cap = $("cap-slider");
  cap.addEventListener("input", () => { S.lastEditMs = Date.now(); $("cap-value").textContent = `${cap.value} W`; });
  cap.addEventListener("change", () => act("/api/actions/power-cap",
    { device_ids: [S.selected], cap_w: Number(cap.value) }, `cap ${S.selected} ${cap.value} W`));
  $("release-device").addEventListener("click", () => act("/api/actions/release",
    { device_ids: [S.selected] }, `${S.selected} back to the optimizer`));

  const g = $("group-slider");
  g.addEventListener("input", () => { $("group-value").textContent = `${g.value}% of TDP`; });
  g.addEventListener("change", () => {
    const [kind, id] = $("group-select").value.split(/:(.*)/s);
    const body = { fraction_of_tdp: Number(g.value) / 100 };
    body[kind === "host" ? "host_id" : "stream_id"] = id;
    act("/api/actions/power-cap", body, `cap ${kind} ${id} at ${g.value}% of TDP`);
  });

  const b = $("budget-slider");
  b.addEventListener("input", () => { S.lastEditMs = Date.now(); $("budget-value").textContent = `${b.value} W`; });
  b.addEventListener("change", () => act("/api/actions/fleet-budget", { budget_w: Number(b.value) }, `fleet budget ${b.value} W`));
  $("budget-clear").addEventListener("click", () => act("/api/actions/fleet-budget", { budget_w: null }, "budget removed"));

  $("stream-select").addEventListener("change", () => { S.lastEditMs = 0; renderStreams(); });
  $("weights").addEventListener("input", e => {
    S.lastEditMs = Date.now();
    const inputs = [...$("weights").querySelectorAll("input")];
    const total = inputs.reduce((a, i) => a + Number(i.value), 0) || 1;
    for (const i of inputs) i.nextElementSibling.textContent = `${(100 * Number(i.value) / total).toFixed(0)}%`;
  });
  $("weights-apply").addEventListener("click", () => {
    const weights = {};
    for (const i of $("weights").querySelectorAll("input")) weights[i.dataset.device] = Number(i.value);
    act("/api/actions/load-weights", { stream_id: $("stream-select").value, weights }, `load of ${$("stream-select").value}`);
  });
  $("stream-release").addEventListener("click", () => act("/api/actions/release",
    { stream_id: $("stream-select").value }, `${$("stream-select").value} back to the optimizer`));

  $("recs").addEventListener("click", e => {
    const id = e.target.dataset.rec;
    if (!id) return;
    if (e.target.classList.contains("accept")) act(`/api/recommendations/${id}/accept`, {}, "accepted");
    else if (e.target.classList.contains("dismiss")) act(`/api/recommendations/${id}/dismiss`, {}, "dismissed");
  });
  $("recs-accept-all").addEventListener("click", () => act("/api/recommendations/accept-all", {}, "accepted all"));
  for (const m of ["auto", "advise"]) $("mode-" + m).addEventListener("click", () => act("/api/mode", { mode: m }, `mode ${m}`));
  $("token-save").addEventListener("click", () => {
    S.token = $("token-input").value.trim();
    localStorage.setItem("accelpilot-token", S.token);
    $("token-bar").classList.add("hidden");
    S.inventory = null;
    pollFast(); pollSlow();
  });
}

wire();
pollFast().then(pollSlow);
setInterval(pollFast, 1000);
setInterval(pollSlow, 3000);
