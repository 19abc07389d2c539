"""The status page served at ``GET /``: one self-contained HTML file, no build step, no CDN.

It reads ``/budgets``, ``/anomalies?status=firing`` and ``/status.json`` from the same
server every few seconds and draws budgets as burn-down bars (spent, a linear projection
to the period end, threshold ticks), firing anomalies with drivers and owners, silences
and delivery health per receiver. Every value is inserted as text (``textContent``),
never as markup: scope values and rule names are user-controlled.
"""

from __future__ import annotations

REFRESH_SECONDS = 5

_HTML = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>spendwatch status</title>
<style>
  :root { --fg:#1d2330; --muted:#667085; --line:#e4e7ec; --ok:#12b76a; --warn:#f79009;
          --bad:#d92d20; --bar:#2e90fa; --bg:#f9fafb; }
  * { box-sizing: border-box; }
  body { margin:0; font:14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
         color:var(--fg); background:var(--bg); }
  header { display:flex; gap:1.5rem; align-items:baseline; padding:.9rem 1.5rem;
           background:#101828; color:#fff; }
  header h1 { font-size:1.1rem; margin:0; }
  header span { color:#d0d5dd; font-size:.85rem; }
  main { display:grid; grid-template-columns: 1fr 1fr; gap:1rem; padding:1rem 1.5rem; }
  section { background:#fff; border:1px solid var(--line); border-radius:8px; padding:.8rem 1rem; }
  section.wide { grid-column: 1 / -1; }
  h2 { font-size:.95rem; margin:.1rem 0 .6rem; }
  h2 small { color:var(--muted); font-weight:normal; }
  table { width:100%; border-collapse:collapse; }
  th, td { text-align:left; padding:.3rem .4rem; border-top:1px solid var(--line);
           vertical-align:top; }
  th { color:var(--muted); font-weight:600; font-size:.8rem; border-top:0; }
  .num { text-align:right; font-variant-numeric: tabular-nums; white-space:nowrap; }
  .empty { color:var(--muted); font-style:italic; padding:.4rem; }
  .track { position:relative; height:16px; background:#eef2f6; border-radius:4px;
           overflow:hidden; min-width:220px; }
  .spent { position:absolute; left:0; top:0; bottom:0; background:var(--bar); }
  .spent.warn { background:var(--warn); } .spent.bad { background:var(--bad); }
  .forecast { position:absolute; top:0; bottom:0; border-right:2px dashed #101828; opacity:.6; }
  .tick { position:absolute; top:-2px; bottom:-2px; width:2px; background:#101828; opacity:.35; }
  .pill { display:inline-block; padding:0 .45rem; border-radius:999px; font-size:.75rem;
          font-weight:600; background:#eef2f6; }
  .pill.ok { background:#d1fadf; color:#05603a; } .pill.idle { color:var(--muted); }
  .pill.retrying { background:#fef0c7; color:#93370d; }
  .pill.failing, .pill.critical { background:#fee4e2; color:#912018; }
  .pill.warning { background:#fef0c7; color:#93370d; }
  .muted { color:var(--muted); }
  #error { display:none; color:var(--bad); padding:0 1.5rem; }
</style>
</head>
<body>
<header>
  <h1>spendwatch</h1>
  <span id="ready">loading…</span>
  <span id="watermark"></span>
  <span id="updated"></span>
</header>
<p id="error"></p>
<main>
  <section class="wide" id="budgets">
    <h2>Budgets
      <small>spent (bar), projected to period end (dashed), thresholds (ticks)</small></h2>
    <table><thead><tr><th>budget</th><th>scope</th><th>period</th>
      <th style="width:40%">burn-down</th>
      <th class="num">spent</th><th class="num">of</th><th class="num">%</th>
      <th class="num">projected</th></tr></thead><tbody></tbody></table>
  </section>
  <section class="wide" id="anomalies">
    <h2>Firing anomalies</h2>
    <table><thead><tr><th>rule</th><th>scope</th><th>since</th><th class="num">observed</th>
      <th class="num">expected</th><th>drivers</th><th>owner</th><th>severity</th></tr></thead>
      <tbody></tbody></table>
  </section>
  <section id="silences">
    <h2>Silences</h2>
    <table><thead><tr><th>match</th><th>from</th><th>to</th><th>reason</th><th></th></tr></thead>
      <tbody></tbody></table>
  </section>
  <section id="deliveries">
    <h2>Delivery health</h2>
    <table><thead><tr><th>receiver</th><th class="num">sent</th><th class="num">retry</th>
      <th class="num">failed</th><th class="num">expired</th><th class="num">pending</th>
      <th></th></tr></thead><tbody></tbody></table>
  </section>
</main>
<script>
"use strict";
const REFRESH = __REFRESH__ * 1000;
const MAX_BUDGETS = 60;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "style") node.setAttribute("style", v);
    else node.setAttribute(k, v);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}
const usd = (v) => v == null ? "–" : "$" + Number(v).toLocaleString("en-US",
  {minimumFractionDigits: 2, maximumFractionDigits: Math.abs(v) < 1 ? 4 : 2});
const amount = (metric, v) => v == null ? "–" : /_usd$/.test(metric || "") ? usd(v)
  : Number(v).toLocaleString("en-US", {maximumFractionDigits: Math.abs(v) < 100 ? 2 : 0});
const scopeText = (s) => Object.entries(s || {}).map(([k, v]) => k + "=" + v).join(", ") || "all";
const time = (t) => t ? t.replace("T", " ").replace(/(\.\d+)?Z$/, "Z") : "";

function fill(id, rows, columns, empty) {
  const body = document.querySelector("#" + id + " tbody");
  body.replaceChildren(...(rows.length ? rows : [el("tr", {},
    el("td", {class: "empty", colspan: String(columns)}, empty))]));
}

function burnDown(b, watermark) {
  const start = Date.parse(b.period_start), end = Date.parse(b.period_end);
  const now = watermark ? Math.min(Math.max(Date.parse(watermark), start), end) : end;
  const elapsed = (now - start) / (end - start);
  const projected = elapsed > 0.02 ? b.percent / elapsed : null;
  const scale = Math.max(100, b.percent, projected || 0, ...(b.thresholds || []));
  const pct = (v) => (100 * v / scale).toFixed(2) + "%";
  const level = b.percent >= 100 ? " bad" : (b.crossed || []).length ? " warn" : "";
  const track = el("div", {class: "track", title: b.percent.toFixed(1) + "% spent"},
    el("div", {class: "spent" + level, style: "width:" + pct(b.percent)}));
  if (projected != null) {
    track.append(el("div", {class: "forecast", style: "width:" + pct(Math.min(projected, scale)),
                            title: "projected " + projected.toFixed(0) + "%"}));
  }
  for (const t of b.thresholds || []) {
    track.append(el("div", {class: "tick", style: "left:" + pct(t), title: t + "%"}));
  }
  return [track, projected];
}

function renderBudgets(budgets, watermark) {
  const rows = budgets.slice().sort((a, b) => b.percent - a.percent).slice(0, MAX_BUDGETS)
    .map((b) => {
      const [track, projected] = burnDown(b, watermark);
      return el("tr", {"data-budget": b.budget, "data-scope": scopeText(b.scope)},
        el("td", {}, b.budget), el("td", {}, scopeText(b.scope)), el("td", {}, b.period),
        el("td", {}, track), el("td", {class: "num"}, usd(b.spend_usd)),
        el("td", {class: "num"}, usd(b.amount_usd) + (b.amount_set_at ? " *" : "")),
        el("td", {class: "num"}, b.percent.toFixed(1)),
        el("td", {class: "num"}, projected == null ? "–" : projected.toFixed(0) + "%"));
    });
  fill("budgets", rows, 8, "no open budget periods");
}

function renderAnomalies(anomalies) {
  const rows = anomalies.map((a) => el("tr", {"data-rule": a.rule},
    el("td", {}, a.rule), el("td", {}, scopeText(a.scope)), el("td", {}, time(a.since)),
    el("td", {class: "num"}, amount(a.metric, a.observed)),
    el("td", {class: "num"}, amount(a.metric, a.expected)),
    el("td", {}, (a.drivers || []).map((d) => d.dimension + "=" + d.value + " " +
                                           Math.round(100 * d.share) + "%").join(", ") || "–"),
    el("td", {}, a.owner || "–"),
    el("td", {}, el("span", {class: "pill " + (a.severity || "")}, a.severity || "firing"))));
  fill("anomalies", rows, 8, "nothing firing");
}

function renderStatus(status) {
  document.getElementById("ready").textContent = status.ready ? "running" : "not ready";
  document.getElementById("watermark").textContent =
    status.watermark ? "event time " + time(status.watermark) : "";
  fill("silences", status.silences.map((s) => el("tr", {},
    el("td", {}, JSON.stringify(s.match)), el("td", {}, time(s.start)), el("td", {}, time(s.end)),
    el("td", {}, s.reason + (s.created_by ? " (" + s.created_by + ")" : "")),
    el("td", {}, el("span", {class: "pill " + (s.active ? "warning" : "idle")},
                    s.active ? "active" : "inactive")))), 5, "no silences");
  fill("deliveries", status.deliveries.map((d) => el("tr", {"data-receiver": d.receiver},
    el("td", {}, d.receiver + (d.type && d.type !== d.receiver ? " (" + d.type + ")" : "")),
    ...["sent", "retry", "failed", "expired", "pending"].map((k) =>
      el("td", {class: "num"}, d[k] || 0)),
    el("td", {}, el("span", {class: "pill " + d.status}, d.status)))), 7, "no receivers");
}

async function getJSON(path) {
  const reply = await fetch(path, {cache: "no-store"});
  if (!reply.ok) throw new Error(path + ": HTTP " + reply.status);
  return reply.json();
}

async function refresh() {
  const error = document.getElementById("error");
  try {
    const [budgets, anomalies, status] = await Promise.all(
      [getJSON("budgets"), getJSON("anomalies?status=firing"), getJSON("status.json")]);
    renderStatus(status);
    renderBudgets(budgets.budgets, status.watermark);
    renderAnomalies(anomalies.anomalies);
    const partial = budgets.unreachable
      ? " (unreachable: " + budgets.unreachable.join(", ") + ")" : "";
    document.getElementById("updated").textContent =
      "updated " + new Date().toLocaleTimeString() + partial;
    error.style.display = "none";
    document.body.dataset.loaded = "1";
  } catch (e) {
    error.textContent = "refresh failed: " + e.message;
    error.style.display = "block";
  }
}
refresh();
setInterval(refresh, REFRESH);
</script>
</body>
</html>
"""

PAGE = _HTML.replace("__REFRESH__", str(REFRESH_SECONDS)).encode()
