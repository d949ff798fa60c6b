// The console's devices pages, login and router, loaded by console.html after console-pages.js
// and console-device.js (whose `PAGES`, `stopPageTimer`, `commandsView` and `messagesView` it
// calls). The token comes only from the login form and is kept in sessionStorage, never in a
// URL. No inline handlers: buttons rendered from HTML strings carry data-* attributes and one
// listener on #view acts on them.
"use strict";
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({"&":"&amp;","<":"&lt;",">":"&gt;","\"":"&quot;","'":"&#39;"}[c]));
let token = sessionStorage.getItem("fleetflow-token");
// The hash is `#/page?key=value&...` for the control-plane pages (console-pages.js), or
// `#key=value&...` for the devices list and a device page (`#device=ID`).
function parseHash() {
  let rest = location.hash.slice(1), path = "";
  if (rest.startsWith("/")) { const q = rest.indexOf("?"); path = q < 0 ? rest : rest.slice(0, q); rest = q < 0 ? "" : rest.slice(q + 1); }
  return { path, params: new URLSearchParams(rest) };
}
const samples = [];

async function api(path, opts = {}) {
  const r = await fetch(path, { ...opts, headers: { ...(opts.headers || {}), "Authorization": "Bearer " + token, "Content-Type": "application/json" } });
  if (r.status === 401) { token = null; sessionStorage.removeItem("fleetflow-token"); showLogin("The token was refused."); throw new Error("unauthorized"); }
  return r;
}
function showLogin(err) { $("login").hidden = false; $("app").hidden = true; $("loginerr").textContent = err || ""; }
$("loginform").addEventListener("submit", (e) => { e.preventDefault(); token = $("token").value; sessionStorage.setItem("fleetflow-token", token); start(); });

async function stats() {
  const s = await (await api("/api/v1/stats")).json();
  samples.push(s); if (samples.length > 60) samples.shift();
  const cards = [["messages", s.messages], ["readings stored", s.readings], ["captures stored", s.captures_stored], ["captures failed", s.captures_failed], ["NACKs", s.nacks], ["errors", s.errors], ["device actors", s.device_actors]];
  $("cards").innerHTML = cards.map(([k, v]) => `<div class="card"><div class="v">${Math.round(v)}</div><div class="k">${k}</div></div>`).join("");
  $("conn").textContent = s.mqtt_connected ? "MQTT connected" : "MQTT disconnected";
  drawChart();
}
function drawChart() {
  const c = $("chart"), g = c.getContext("2d"); g.clearRect(0, 0, c.width, c.height);
  const rates = [];
  for (let i = 1; i < samples.length; i++) { const dt = (Date.parse(samples[i].at) - Date.parse(samples[i-1].at)) / 1000; rates.push(dt > 0 ? (samples[i].messages - samples[i-1].messages) / dt : 0); }
  const max = Math.max(1, ...rates);
  g.strokeStyle = "#1565c0"; g.beginPath();
  rates.forEach((r, i) => { const x = 10 + i * (c.width - 20) / 59, y = c.height - 10 - r / max * (c.height - 30); i ? g.lineTo(x, y) : g.moveTo(x, y); });
  g.stroke(); g.fillStyle = "#5b6b7c"; g.font = "12px sans-serif"; g.fillText(`messages/s (max ${Math.round(max)})`, 10, 14);
}
async function listView(seq) {
  $("nav").innerHTML = "";
  $("fleet-charts").hidden = false;
  capturesChart().catch((e) => { $("msg").textContent = "captures per day: " + e; });
  const src = await (await api("/api/v1/sources")).json();
  const srcRows = src.sources.map((x) => `<tr data-source="${esc(x.source)}"><td>${esc(x.source)}</td><td>${x.connected ? "connected" : "disconnected"}</td><td>${esc(x.connection_error)}</td><td><button data-restart-target="source:${esc(x.source)}">reconnect</button></td></tr>`).join("");
  const d = await (await api("/api/v1/devices?limit=200")).json();
  if (seq !== routeSeq) return;
  const rows = d.devices.map((x) => `<tr data-device="${esc(x.device_id)}"><td><a href="#device=${esc(x.device_id)}">${esc(x.device_id)}</a></td><td>${esc(new Date(x.last_seen_at).toLocaleString())}</td><td>${esc(x.status)}</td><td>${x.battery_v ?? ""}</td><td>${x.rssi ?? ""}</td><td class="state-${esc(x.actor)}">${esc(x.actor)}</td><td>${x.in_flight}</td><td><button data-restart-device="${esc(x.device_id)}">restart</button></td></tr>`).join("");
  $("view").innerHTML = `<table id="sources"><thead><tr><th>MQTT source</th><th>state</th><th>error</th><th></th></tr></thead><tbody>${srcRows}</tbody></table><table id="devices"><thead><tr><th>device</th><th>last seen</th><th>status</th><th>battery V</th><th>RSSI</th><th>actor</th><th>in flight</th><th></th></tr></thead><tbody>${rows}</tbody></table><p>${d.total} device(s)</p>`;
}
async function deviceView(id, seq) {
  $("nav").innerHTML = `<a href="#" style="color:#fff">← all devices</a>`;
  $("fleet-charts").hidden = true;
  const r = await api("/api/v1/devices/" + encodeURIComponent(id));
  if (!r.ok) { $("view").innerHTML = `<p>Device ${esc(id)}: ${r.status}</p>`; return; }
  const d = await r.json();
  if (seq !== routeSeq) return;
  const caps = d.captures.map((c) => `<div class="thumb" data-capture="${esc(c.capture_id)}"><img alt="${esc(c.capture_id)}" data-src="${c.ingest_status === "stored" ? `/api/v1/devices/${encodeURIComponent(id)}/captures/${encodeURIComponent(c.capture_id)}/thumbnail` : ""}"><div>${esc(c.capture_id)} · ${esc(c.ingest_status)} · ${c.image_bytes} B</div></div>`).join("");
  const errs = d.errors.map((e) => `<tr><td>${e.error_code}</td><td>${esc(e.message)}</td><td>${esc(new Date(e.occurred_at).toLocaleString())}</td></tr>`).join("");
  $("view").innerHTML = `<h2 id="device-title">${esc(d.device_id)}</h2>
    <p>status <b>${esc(d.status)}</b> · battery ${d.battery_v ?? "–"} V · RSSI ${d.rssi ?? "–"} · fw ${esc(d.fw)} · last seen ${esc(new Date(d.last_seen_at).toLocaleString())}</p>
    <p>actor <b class="state-${esc(d.actor.state)}">${esc(d.actor.state)}</b> · ${d.actor.in_flight} in flight · ${d.actor.restarts} restart(s) <button class="warn" data-restart-device="${esc(d.device_id)}">restart actor</button></p>
    <h3>Wake schedule</h3><div id="schedule-box"></div>
    <h3>Commands</h3><div id="commands-box"></div>
    <h3>Recent captures</h3><div class="thumbs" id="thumbs">${caps || "<p>none yet</p>"}</div>
    <h3>Sensor trends</h3><div id="trends-box"></div>
    <h3>Errors</h3><table><thead><tr><th>code</th><th>message</th><th>when</th></tr></thead><tbody>${errs}</tbody></table>
    <h3>Message log</h3><div id="messages-box"></div>`;
  await trendsView(id, "24h");
  await scheduleView(id);
  await commandsView(id);
  await messagesView(id);
  for (const img of document.querySelectorAll("#thumbs img[data-src]")) {
    if (!img.dataset.src) continue;
    const t = await api(img.dataset.src);
    if (!t.ok) continue;
    img.addEventListener("load", () => { img.dataset.loaded = String(img.naturalWidth); }, { once: true });
    img.src = URL.createObjectURL(await t.blob());
  }
}
async function scheduleView(id) {
  const r = await api(`/api/v1/devices/${encodeURIComponent(id)}/schedule`);
  if (!r.ok) { $("schedule-box").textContent = `schedule: ${r.status}`; return; }
  const s = await r.json(), sc = s.schedule;
  const opt = (v, label) => `<option value="${v}"${sc.mode === v ? " selected" : ""}>${label}</option>`;
  $("schedule-box").innerHTML = `<form id="schedule-form" data-mode="${esc(sc.mode)}">
    <select id="sched-mode">${opt("per_day", "captures per day")}${opt("fixed", "fixed wake times")}${opt("every_minutes", "test mode: every N minutes")}</select>
    <input id="sched-per-day" type="number" min="1" max="1440" value="${esc(sc.captures_per_day ?? 2)}" title="captures per day">
    <input id="sched-times" placeholder="08:00, 17:30" value="${esc((sc.times || []).join(", "))}" title="local wake times">
    <input id="sched-minutes" type="number" min="1" max="1440" value="${esc(sc.minutes ?? 5)}" title="minutes">
    <input id="sched-tz" value="${esc(sc.timezone)}" title="IANA time zone">
    <button type="submit">Save schedule</button></form>
    <p id="sched-next">${s.configured ? "configured" : "default (never configured)"} · next wake ${s.next_wake_at ? esc(new Date(s.next_wake_at).toLocaleString()) : "not recorded: the next wake hello captures"}</p>`;
  $("schedule-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const mode = $("sched-mode").value, body = { mode, timezone: $("sched-tz").value || "UTC" };
    if (mode === "per_day") body.captures_per_day = Number($("sched-per-day").value);
    if (mode === "fixed") body.times = $("sched-times").value.split(",").map((t) => t.trim()).filter(Boolean);
    if (mode === "every_minutes") body.minutes = Number($("sched-minutes").value);
    const w = await api(`/api/v1/devices/${encodeURIComponent(id)}/schedule`, { method: "PUT", body: JSON.stringify(body) });
    const out = await w.json();
    $("msg").textContent = w.ok ? "schedule saved" : `schedule refused: ${out.error.message}`;
    if (w.ok) scheduleView(id);
  });
}
// Charts (uPlot, served from the binary under /vendor/). Text goes in through textContent only.
const TRENDS = [
  { key: "temperature_c", title: "Temperature (°C)", band: true },
  { key: "humidity_pct", title: "Humidity (%)", band: true },
  { key: "pressure_hpa", title: "Pressure (hPa)", band: true },
  { key: "gas_kohm", title: "Gas (kΩ)", band: true },
  { key: "battery_v", title: "Battery (V)", band: false },
  { key: "rssi", title: "RSSI (dBm)", band: false },
];
const RANGES = { "24h": 24, "7d": 24 * 7, "30d": 24 * 30 };
function plotBox(parent, name, points) {
  const box = document.createElement("div");
  box.className = "plot"; box.dataset.plot = name; box.dataset.points = String(points);
  parent.appendChild(box);
  return box;
}
function plotWidth(perRow) {
  const w = ($("app").clientWidth || 1200) - 40;
  return Math.max(300, Math.min(620, Math.floor(w / perRow) - 40));
}
async function trendsView(id, range) {
  const box = $("trends-box");
  const from = new Date(Date.now() - RANGES[range] * 3600e3).toISOString();
  const r = await api(`/api/v1/devices/${encodeURIComponent(id)}/readings?from=${encodeURIComponent(from)}`);
  box.replaceChildren();
  const pick = document.createElement("select"); pick.id = "trends-range";
  for (const k of Object.keys(RANGES)) { const o = document.createElement("option"); o.value = k; o.textContent = "last " + k; o.selected = k === range; pick.appendChild(o); }
  pick.addEventListener("change", () => trendsView(id, pick.value));
  box.appendChild(pick);
  const note = document.createElement("span"); note.className = "plots-empty"; box.appendChild(note);
  if (!r.ok) { note.textContent = ` readings: ${r.status}`; return; }
  const d = await r.json();
  note.textContent = ` ${d.buckets.length} bucket(s) of ${d.bucket}` + (d.buckets.length ? "" : ": no readings or status in this range");
  const plots = document.createElement("div"); plots.className = "plots"; plots.id = "trends"; box.appendChild(plots);
  if (typeof uPlot === "undefined") { note.textContent += " (charts unavailable: uPlot did not load)"; return; }
  const xs = d.buckets.map((b) => Date.parse(b.t) / 1000);
  for (const t of TRENDS) {
    const pts = d.buckets.filter((b) => b[t.key].avg !== null);
    const el = plotBox(plots, t.key, pts.length);
    const series = [{}, { label: "avg", stroke: "#1565c0", width: 2, spanGaps: true }];
    const data = [xs, d.buckets.map((b) => b[t.key].avg)];
    if (t.band) {
      series.push({ label: "min", stroke: "#90caf9", dash: [4, 4], spanGaps: true }, { label: "max", stroke: "#ef9a9a", dash: [4, 4], spanGaps: true });
      data.push(d.buckets.map((b) => b[t.key].min), d.buckets.map((b) => b[t.key].max));
    }
    new uPlot({ title: t.title, class: "trend-" + t.key, width: plotWidth(3), height: 170, series, scales: { x: { time: true } }, axes: [{}, { size: 66 }] }, data, el);
  }
}
let capturesAt = 0;
async function capturesChart() {
  if (Date.now() - capturesAt < 60000 && $("captures-plot").childElementCount) return;
  capturesAt = Date.now();
  const r = await api("/api/v1/stats/captures?bucket=day");
  if (!r.ok) return;
  const d = await r.json();
  const el = $("captures-plot"); el.replaceChildren();
  const box = plotBox(el, "captures", d.buckets.length);
  if (typeof uPlot === "undefined") return;
  const xs = d.buckets.map((b) => Date.parse(b.t) / 1000);
  const bars = (align) => uPlot.paths.bars({ size: [0.4, 40], align });
  new uPlot({
    title: `Captures per day (last 14 days): ${d.totals.stored} stored, ${d.totals.failed} failed`,
    class: "fleet-captures", width: Math.min(1240, ($("app").clientWidth || 1200) - 40), height: 160,
    series: [{}, { label: "stored", stroke: "#1565c0", fill: "#1565c0aa", paths: bars(-1) }, { label: "failed", stroke: "#c62828", fill: "#c62828aa", paths: bars(1) }],
    scales: { x: { time: true, range: (u, min, max) => [min - 43200, max + 43200] } },
    axes: [{}, { size: 40 }],
  }, [xs, d.buckets.map((b) => b.stored), d.buckets.map((b) => b.failed)], box);
}
// The restart buttons of the devices list and the device page.
$("view").addEventListener("click", (e) => {
  const b = e.target.closest("button[data-restart-device], button[data-restart-target]");
  if (!b) return;
  restartTarget(b.dataset.restartDevice !== undefined ? "device:" + b.dataset.restartDevice : b.dataset.restartTarget);
});
async function restartTarget(target) {
  const r = await api("/api/v1/restarts", { method: "POST", body: JSON.stringify({ target, reason: "console" }) });
  const body = await r.json();
  $("msg").textContent = r.ok ? `${target} restarted (${body.status})` : `restart refused: ${body.error.message}`;
  route();
}
// Each route() call has a number; a view whose fetches outlast a later route() (the list's
// refresh in flight when the hash changes) does not overwrite the newer page.
let routeSeq = 0;
async function route() {
  const seq = ++routeSeq;
  const { path, params } = parseHash();
  const page = PAGES[path.slice(1)];
  stopPageTimer();
  for (const a of document.querySelectorAll("#pages a")) a.classList.toggle("active", a.dataset.page === (page ? path.slice(1) : ""));
  $("chart").hidden = Boolean(page);
  try {
    await stats();
    if (seq !== routeSeq) return;
    if (page) { $("nav").replaceChildren(); $("fleet-charts").hidden = true; await page(params); }
    else if (params.get("device")) await deviceView(params.get("device"), seq);
    else await listView(seq);
  } catch (e) { if (String(e).indexOf("unauthorized") < 0) $("msg").textContent = String(e); }
}
let ticker = null;
function start() {
  if (!token) { showLogin(); return; }
  $("login").hidden = true; $("app").hidden = false;
  route();
  if (!ticker) ticker = setInterval(tick, 2000);
}
// Only the devices list re-renders itself; the other pages hold forms and refresh their own
// parts. Nothing while signed out (a refused token is dropped).
function tick() {
  if (!token) return;
  const h = parseHash();
  if (!h.path && !h.params.get("device")) route(); else stats().catch(() => {});
}
// Signed out, the login form stays whatever the hash says.
window.addEventListener("hashchange", () => { if (token) route(); });
start();
