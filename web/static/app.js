// minutecast dashboard: the latest forecast of every ticker (GET /api/forecasts, then live through the
// Server-Sent Events of /api/stream), a ticker's chart (GET /api/forecasts/{ticker}?history=N, uPlot) and the
// pipeline panel (GET /api/status). No framework, no CDN: uPlot is vendored by `make setup`.
"use strict";

const HISTORY = 45;            // forecasts per chart (Redis keeps 120): the last three quarters of an hour
const STATUS_EVERY_MS = 5000;
const NY = "America/New_York";

const params = new URLSearchParams(location.search);
let token = params.get("token") || sessionStorage.getItem("minutecast-token") || "";
if (params.get("token")) {                                   // keep it out of the address bar and history
  sessionStorage.setItem("minutecast-token", token);
  history.replaceState(null, "", location.pathname);
}
const withToken = (url) => token ? url + (url.includes("?") ? "&" : "?") + "access_token=" + encodeURIComponent(token) : url;
async function api(path) {
  const r = await fetch(path, { headers: token ? { Authorization: "Bearer " + token } : {} });
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.json();
}

const rows = new Map();        // ticker -> forecast (normalised)
let clockOffset = 0;           // server clock - browser clock (s)
let sortKey = "ticker", sortDir = 1, selected = null, chart = null;
const flashing = new Set();
const $ = (sel) => document.querySelector(sel);
const now = () => Date.now() / 1000 + clockOffset;
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const price = (x) => x == null ? "" : Number(x).toFixed(x >= 1000 ? 1 : 2);
const nyTime = (epoch, withDate) => new Date(epoch * 1000).toLocaleString("en-US",
  { timeZone: NY, hour12: false, hour: "2-digit", minute: "2-digit", ...(withDate ? { month: "short", day: "numeric" } : {}) });

function normalise(f) {       // a Forecast from the API or the topic (v1 or v2) -> a table row
  const out = { ...f };
  out.move_bp = (f.predicted_close / f.last_close - 1) * 1e4;
  out.interval80 = f.q10 != null && f.q90 != null ? [f.q10, f.q90] : null;
  out.width80 = out.interval80 ? (out.interval80[1] - out.interval80[0]) / f.last_close * 1e4 : -1;
  return out;
}

function accept(f) {          // the latest forecast only moves forward in as_of
  const cur = rows.get(f.ticker);
  if (cur && cur.as_of > f.as_of) return false;
  rows.set(f.ticker, normalise(f));
  return true;
}

// ---- the table -------------------------------------------------------------------------------------------
function rowHtml(f) {
  const mv = f.move_bp, cls = mv > 0.05 ? "up" : mv < -0.05 ? "down" : "";
  const iv = f.interval80 ? `${price(f.interval80[0])} – ${price(f.interval80[1])}` : '<span class="muted">–</span>';
  return `<tr id="row-${esc(f.ticker)}" data-ticker="${esc(f.ticker)}" data-as-of="${f.as_of}"` +
    ` class="${flashing.has(f.ticker) ? "flash " : ""}${f.ticker === selected ? "selected" : ""}">` +
    `<td>${esc(f.ticker)}</td><td class="num">${price(f.last_close)}</td><td class="num">${price(f.predicted_close)}</td>` +
    `<td class="num ${cls}">${mv >= 0 ? "+" : ""}${mv.toFixed(1)}</td><td class="num">${iv}</td>` +
    `<td class="num" title="${nyTime(f.as_of, true)} ET">${nyTime(f.as_of, false)}</td><td class="num age" data-at="${f.forecast_at}">${age(f.forecast_at)}</td>` +
    `<td class="model" title="${esc(f.model_version)}">${esc(modelLabel(f))}</td></tr>`;
}
// A model version is "<UTC save time %Y%m%dT%H%M%SZ>-<digest>" (minutecast.registry); persistence has none.
function modelSavedAt(version) {
  const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z/.exec(version || "");
  return m ? Date.UTC(+m[1], m[2] - 1, +m[3], +m[4], +m[5], +m[6]) / 1000 : null;
}
const span = (s) => s < 3600 ? `${Math.max(1, Math.round(s / 60))} min` : s < 172800 ? `${Math.round(s / 3600)} h` : `${Math.round(s / 86400)} d`;
function modelLabel(f) {       // "lstm · 2 h old", or "persistence"
  const kind = f.model_kind || (String(f.model_version).startsWith("persistence") ? "persistence" : "model");
  const saved = modelSavedAt(f.model_version);
  return saved == null ? kind : `${kind} · ${span(Math.max(0, now() - saved))} old`;
}
const age = (at) => { const s = Math.max(0, now() - at); return s < 120 ? s.toFixed(0) + " s" : (s / 60).toFixed(0) + " min"; };

let renderQueued = false;
function render() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    const filter = $("#filter").value.trim().toUpperCase();
    const list = [...rows.values()].filter((f) => !filter || f.ticker.includes(filter));
    list.sort((a, b) => {
      const x = a[sortKey], y = b[sortKey];
      return (typeof x === "string" ? String(x).localeCompare(String(y)) : (x ?? -Infinity) - (y ?? -Infinity)) * sortDir;
    });
    $("#forecasts tbody").innerHTML = list.map(rowHtml).join("");
    $("#count").textContent = `${rows.size} tickers`;
    const newest = list.length ? [...rows.values()].reduce((a, b) => (b.forecast_at > a.forecast_at ? b : a)) : null;
    if (newest) { $("#model").textContent = "model " + modelLabel(newest); $("#model").title = newest.model_version; }
    flashing.clear();
  });
}

$("#forecasts thead").addEventListener("click", (ev) => {
  const th = ev.target.closest("th");
  if (!th) return;
  const key = th.dataset.key;
  sortDir = key === sortKey ? -sortDir : (key === "ticker" || key === "model_kind" ? 1 : -1);
  sortKey = key;
  document.querySelectorAll("#forecasts th").forEach((h) => h.classList.remove("sorted", "asc", "desc"));
  th.classList.add("sorted", sortDir > 0 ? "asc" : "desc");
  render();
});
$("#forecasts tbody").addEventListener("click", (ev) => {
  const tr = ev.target.closest("tr");
  if (tr) select(tr.dataset.ticker);
});
$("#filter").addEventListener("input", render);
setInterval(() => {
  document.querySelectorAll("td.age").forEach((td) => { td.textContent = age(Number(td.dataset.at)); });
  $("#clock").textContent = "server time " + new Date(now() * 1000).toLocaleTimeString("en-US", { hour12: false });
}, 1000);

// ---- the stream ------------------------------------------------------------------------------------------
function connect() {
  const es = new EventSource(withToken("/api/stream"));
  es.onopen = () => { $("#live").textContent = "live"; $("#live").className = "badge on"; };
  es.addEventListener("forecast", (ev) => {
    const f = JSON.parse(ev.data);
    if (accept(f)) {
      flashing.add(f.ticker);
      render();
      if (f.ticker === selected) chartSoon();
    }
  });
  es.addEventListener("dropped", () => { es.close(); setTimeout(start, 1000); });
  es.onerror = () => { $("#live").textContent = "reconnecting…"; $("#live").className = "badge off"; };
}

async function start() {
  const data = await api("/api/forecasts");
  clockOffset = data.now - Date.now() / 1000;
  data.forecasts.forEach(accept);
  render();
  if (!selected && rows.size) select([...rows.keys()].sort()[0]);
}

// ---- the chart -------------------------------------------------------------------------------------------
let chartTimer = null;
function chartSoon() { if (!chartTimer) chartTimer = setTimeout(() => { chartTimer = null; drawChart(); }, 700); }
function select(ticker) {
  selected = ticker;
  document.querySelectorAll("#forecasts tr.selected").forEach((tr) => tr.classList.remove("selected"));
  const tr = document.getElementById("row-" + ticker);
  if (tr) tr.classList.add("selected");
  drawChart();
}

async function drawChart() {
  if (!selected) return;
  const ticker = selected;
  const d = await api(`/api/forecasts/${encodeURIComponent(ticker)}?history=${HISTORY}`);
  if (ticker !== selected) return;
  // The last two market hours only: older history (another session, a catch-up) would flatten the scale.
  const newest = d.latest.as_of;
  const pts = [...d.chart.points, ...d.chart.pending].filter((p) => p.t >= newest - 2 * 3600);
  const col = (k, f = (p) => p[k]) => pts.map((p) => (f(p) ?? null));
  // Ordinal x (one step per minute with data), labelled with the market time: overnight gaps collapse as on
  // a trading chart instead of stretching the axis.
  const times = col("t");
  const label = (i) => { const t = times[Math.round(i)]; return t == null ? "" : nyTime(t, false); };
  const data = [
    times.map((_, i) => i), col("actual"), col("forecast"), col("q05"), col("q10"), col("q90"), col("q95"),
    col("hit", (p) => (p.hit === true ? p.actual : null)), col("miss", (p) => (p.hit === false ? p.actual : null)),
  ];
  const hasBands = data[4].some((x) => x != null);
  const el = $("#chart");
  const width = Math.max(320, el.clientWidth || 600);
  const marker = (color) => ({ stroke: color, fill: color, paths: () => null, points: { show: true, size: 8, fill: color } });
  const band = (label) => ({ label, stroke: "rgba(252,163,17,0.0)", points: { show: false }, spanGaps: true });
  const opts = {
    width, height: 320,
    scales: { x: { time: false } },
    series: [
      { label: "ET", value: (u, v) => (v == null ? "--" : label(v)) },
      { label: "actual close", stroke: "#14213d", width: 2, points: { show: false } },
      { label: "forecast (made 5 min earlier)", stroke: "#fca311", width: 1.5, dash: [6, 4], spanGaps: true,
        points: { show: true, size: 4 } },
      band("q05"), band("q10"), band("q90"), band("q95"),
      { label: "hit", ...marker("#0f7b3f") },
      { label: "miss", ...marker("#b42318") },
    ],
    bands: hasBands ? [{ series: [5, 4], fill: "rgba(252,163,17,0.25)" }, { series: [6, 3], fill: "rgba(252,163,17,0.12)" }] : [],
    axes: [{ space: 70, values: (u, vals) => vals.map(label) }, { size: 64, values: (u, vals) => vals.map((v) => price(v)) }],
    legend: { live: true },
  };
  if (chart) chart.destroy();
  el.innerHTML = "";
  chart = new uPlot(opts, data, el);
  el.dataset.points = String(pts.length);
  el.dataset.ticker = ticker;
  const l = d.latest, mv = (l.predicted_close / l.last_close - 1) * 1e4;
  $("#chart-title").innerHTML = `${esc(ticker)} <span class="muted">forecast ${price(l.predicted_close)} for ` +
    `${nyTime(l.as_of + 60 * l.horizon_min)} ET (${mv >= 0 ? "+" : ""}${mv.toFixed(1)} bp), model ${esc(modelLabel(l))}</span>`;
  const n = d.chart.hits + d.chart.misses;
  $("#chart-score").innerHTML = n ? `<span class="hit">${d.chart.hits} hit</span> · <span class="miss">${d.chart.misses} miss</span>` +
    ` (${(100 * d.chart.hits / n).toFixed(0)}%${hasBands ? ", 80% interval" : ", direction"})` : "";
}
window.addEventListener("resize", () => { if (chart) chart.setSize({ width: $("#chart").clientWidth, height: 320 }); });

// ---- the pipeline panel ----------------------------------------------------------------------------------
async function status() {
  try {
    const s = await api("/api/status");
    const waiting = s.waiting || {};  // {service: {dependency: since}}: an outage the services ride out
    const svcs = Object.entries(s.services || {}).map(([n, v]) => `<span class="svc ${waiting[n] ? "waiting" : v.up ? "up" : "down"}"` +
      ` title="${esc(v.detail || "")}">${esc(n)}</span>`).join("");
    const away = {};
    for (const deps of Object.values(waiting)) for (const [d, t] of Object.entries(deps)) away[d] = Math.min(t, away[d] ?? t);
    const names = { redis: "Redis", kafka: "Kafka" };
    const waitRow = Object.keys(away).length ? `<dt>waiting</dt><dd id="waiting" class="waiting">` + Object.entries(away).map(([d, t]) =>
      `waiting for ${esc(names[d] || d)} since ${nyTime(t, false)} ET`).join("; ") + `: the services resume by themselves (${Object.keys(waiting).map(esc).join(", ")})</dd>` : "";
    const lag = Object.entries(s.consumer_lag || {}).map(([g, v]) => `${esc(g)}: ${v.toLocaleString()}`).join("<br>") || "–";
    const dl = s.dead_letters || { total: 0, by_reason: {} };
    const reasons = Object.entries(dl.by_reason || {}).map(([r, v]) => `${esc(r)} ${v}`).join(", ");
    const rep = s.report;
    const model = esc(s.model_version || "?") + (rep ? ` · <a href="${withToken(rep.report)}" target="_blank">report</a>` +
      rep.files.filter((f) => f.endsWith(".png")).map((f) => ` <a href="${withToken(f)}" target="_blank">${esc(f.split("/").pop())}</a>`).join("") : "");
    const r = s.replay || {};
    const replay = r.phase === "live" ? `as if live, loop ${esc(r.copy)}, market time ${nyTime(Number(r.market_minute), true)} ET, ${esc(r.speed)}x`
      : r.phase ? "history (warm-up)" : "–";
    $("#pipeline-body").innerHTML = `<dl class="kv">
      <dt>services</dt><dd>${svcs}</dd>${waitRow}
      <dt>bars</dt><dd>${(s.bars_total ?? 0).toLocaleString()} in the topic, ${s.bars_per_s ?? "?"} bars/s now</dd>
      <dt>consumer lag</dt><dd>${lag}</dd>
      <dt>dead letters</dt><dd>${(dl.total ?? 0).toLocaleString()}${reasons ? " (" + reasons + ")" : ""}</dd>
      <dt>forecasts</dt><dd>${s.tickers_with_forecast ?? 0} tickers, newest ${s.last_forecast_age_s ?? "?"} s old</dd>
      <dt>model</dt><dd>${model}</dd>
      <dt>replay</dt><dd>${replay}</dd>
      <dt>namespace</dt><dd>${esc(s.namespace)} · ${s.web ? s.web.sse_clients : 0} stream clients</dd></dl>`;
    $("#pipeline-body").classList.remove("muted");
    const latest = s.latest_report;
    if (latest) {
      const a = $("#latest-report");
      a.href = withToken(latest.report); a.title = "evaluation report " + latest.version; a.hidden = false;
    }
    $("#status-age").textContent = "updated " + new Date().toLocaleTimeString("en-US", { hour12: false });
  } catch (e) {
    $("#status-age").textContent = "status unavailable";
  }
}

// ---- live coverage of the served 80% intervals (GET /api/coverage) ----------------------------------------
async function coverage() {
  try {
    const c = await api("/api/coverage");
    const el = $("#coverage");
    const pct = (x) => (100 * x).toFixed(1) + "%";
    el.textContent = c.coverage == null ? `live coverage – (nominal ${pct(c.nominal)})`
      : `live coverage ${pct(c.coverage)} · nominal ${pct(c.nominal)}`;
    el.dataset.coverage = c.coverage ?? "";
    el.title = c.known ? `${c.held.toLocaleString()} of ${c.known.toLocaleString()} served 80% intervals held on ` +
      `${c.day} (forecasts whose outcome is known, all tickers)` : "no outcome known yet today";
  } catch (e) {
    $("#coverage").textContent = "live coverage unavailable";
  }
}

start().then(connect).catch(() => setTimeout(() => start().then(connect), 2000));
status();
coverage();
setInterval(status, STATUS_EVERY_MS);
setInterval(coverage, STATUS_EVERY_MS);
