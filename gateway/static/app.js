// meshelect dashboard: one EventSource (/api/events) keeps every mesh live.
// The first event is a snapshot, with the recent readings and the metrics' units, so the
// charts draw at once; later events (batch, mesh, election, alert, alert_cleared, fenced,
// refused, fence_reset, health, operator) are applied as they come. Charts are plotly.js
// (served by the gateway from the installed plotly package); the member graph is a small
// hand-drawn SVG. The connection opens as this script runs; plotly.js (preloaded by the page)
// runs only after the first snapshot is drawn, since reading it blocks the browser for a
// second or more.
"use strict";

const MAX_POINTS = 600;        // per chart trace kept in the browser
const CHART_REFRESH_MS = 250;  // charts redraw at most this often
const LOW_BATTERY = 200;       // per mille, like the gateway's default alert
// The gateway's --silent-after (sent in the snapshot); its default until the snapshot comes.
let silentMs = 15000;
const MARGIN = 150;            // the agents' default election margin (election.margin)
const HEARD_LATELY_MS = 5000;  // a member the leader reported this recently can challenge it

const state = { meshes: new Map(), alerts: new Map(), clockSkew: 0, units: null };
const plotlyReady = () => typeof window.Plotly !== "undefined";
const layoutBase = {
  paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)",
  font: { color: "#c9d1e3", size: 11 }, margin: { l: 48, r: 12, t: 8, b: 34 },
  xaxis: { type: "date", gridcolor: "#222c44", zeroline: false },
  yaxis: { gridcolor: "#222c44", zeroline: false },
  legend: { orientation: "h", y: -0.22 }, showlegend: true,
};
const plotConfig = { displayModeBar: false, responsive: true };

function el(tag, attrs, text) {
  const node = document.createElementNS(
    tag === "svg" || ["circle", "line", "text", "g"].includes(tag)
      ? "http://www.w3.org/2000/svg" : "http://www.w3.org/1999/xhtml", tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}
const now = () => Date.now() + state.clockSkew;
function ago(ms) {
  const s = Math.max(0, Math.round((now() - ms) / 1000));
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  return Math.round(s / 3600) + " h ago";
}
const clock = (ms) => new Date(ms).toLocaleTimeString();
// Plotly reads a subset of HTML in every text it draws (legend, axis titles, ticks, hover):
// names come from the mesh, so each is given to it as text, with &, < and > as entities.
const plotText = (s) => String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

// What a metric's integers mean (gateway/units.py, sent in the snapshot): the first word of
// its name (split at _ and -) that the table knows; else a plain number in milli-units.
function unitOf(metric) {
  const units = state.units || { kinds: {}, plain: { label: "", unit: "", scale: 0.001 } };
  for (const word of metric.toLowerCase().split(/[_-]+/)) {
    if (Object.prototype.hasOwnProperty.call(units.kinds, word)) return units.kinds[word];
  }
  return units.plain;
}
const axisTitle = (metric) => { const u = unitOf(metric).unit; return metric + (u ? " (" + u + ")" : ""); };
// Alerts raised while the gateway's storage fails have no id until they are stored: key them
// by what identifies them either way.
const alertKey = (a) => [a.mesh, a.kind, a.node, a.raised_ms].join("\u0000");
const fenceResetText = (r) =>
  "fence reset by operator (" + r.source + ") at term " + r.to_term + " \u00b7 was " + r.from_term + " \u00b7 " + clock(r.at_ms);

// ---- per-mesh view ----------------------------------------------------------------------

function meshView(name) {
  let view = state.meshes.get(name);
  if (view) return view;
  const section = document.getElementById("mesh-template").content.firstElementChild.cloneNode(true);
  section.dataset.mesh = name;
  section.querySelector(".mesh-name").textContent = name;
  document.getElementById("empty").hidden = true;
  const all = [...document.querySelectorAll("section.mesh")];
  const after = all.find((s) => s.dataset.mesh > name);
  document.getElementById("meshes").insertBefore(section, after || null);
  view = {
    name, section, mesh: null, elections: [], resets: [], actions: [], readings: new Map(), agg: new Map(),
    seen: new Set(), dirty: true, count: 0,
  };
  state.meshes.set(name, view);
  return view;
}

// A node's energy report is a reading too (gateway/energy.py), and leaders aggregate its
// metrics as any others: the energy column shows what it says, the charts leave out its
// counters (a row each for the capacity and every role's nAh and ms).
const ENERGY_METRICS = new Set(["mAh_cap", ...["leader", "member", "sleepy"].flatMap((r) => ["nAh_" + r, "ms_" + r])]);

function addReading(view, node, boot, seq, tMs, receivedMs, metrics) {
  const key = node + "/" + boot + "/" + seq;
  if (view.seen.has(key)) return;
  const shown = Object.entries(metrics).filter(([metric]) => !ENERGY_METRICS.has(metric));
  if (!shown.length) return;
  view.seen.add(key);
  if (view.seen.size > 20000) view.seen = new Set([...view.seen].slice(-10000));
  // Node clocks that look like wall-clock ms are used as they are; others (uptime) are not.
  const x = tMs > 1e12 ? tMs : receivedMs;
  for (const [metric, value] of shown) {
    const trace = metric + " \u00b7 " + node;
    let series = view.readings.get(trace);
    if (!series) view.readings.set(trace, (series = { metric, node, x: [], y: [] }));
    // In time order, or plotly's line would jump back: a reading resent after a leader change
    // (or sent late) arrives after newer ones.
    let at = series.x.length;
    while (at > 0 && series.x[at - 1] > x) at--;
    series.x.splice(at, 0, x); series.y.splice(at, 0, value * unitOf(metric).scale);
    if (series.x.length > MAX_POINTS) { series.x.shift(); series.y.shift(); }
  }
  view.count++;
}

function addAggregate(view, leader, node, metric, count, min, max, mean, at) {
  if (ENERGY_METRICS.has(metric)) return;
  const trace = metric + " \u00b7 " + node;
  let series = view.agg.get(trace);
  if (!series) view.agg.set(trace, (series = { metric, node, x: [], y: [], lo: [], hi: [], leader: [] }));
  if (series.x.length && at <= series.x[series.x.length - 1]) return; // had it (a reconnect's snapshot)
  const scale = unitOf(metric).scale;
  series.x.push(at); series.y.push(mean * scale);
  series.lo.push((mean - min) * scale); series.hi.push((max - mean) * scale); series.leader.push(leader);
  if (series.x.length > MAX_POINTS) for (const k of ["x", "y", "lo", "hi", "leader"]) series[k].shift();
}

function renderMesh(view) {
  const mesh = view.mesh;
  if (!mesh) return;
  const s = view.section;
  s.querySelector(".term-value").textContent = mesh.term;
  s.querySelector(".leader-name").textContent = mesh.leader || "none";
  s.querySelector(".since").textContent = mesh.leader_since_ms ? "since " + clock(mesh.leader_since_ms) : "";
  const open = [...state.alerts.values()].filter((a) => a.mesh === view.name && a.cleared_ms == null);
  s.querySelector(".mesh-alert-count").innerHTML = open.length
    ? '<span class="badge-alert">' + open.length + " open alert" + (open.length > 1 ? "s" : "") + "</span>" : "";
  const reset = s.querySelector(".fence-reset");
  reset.hidden = !mesh.fence_reset;
  reset.textContent = mesh.fence_reset ? fenceResetText(mesh.fence_reset) : "";
  renderGraph(view);
  renderTable(view);
  s.querySelector(".leader-why").textContent = leaderWhy(mesh);
}

// Why this node leads: the best score leads, but an incumbent keeps leading until another
// node scores more than MARGIN above it, or its battery runs low, or it leaves.
function leaderWhy(mesh) {
  const leader = mesh.members.find((m) => m.leader);
  if (!leader) return "No leader right now: an election is under way, or no batch has come lately.";
  const live = mesh.members.filter((m) => !m.leader && now() - m.last_seen_ms <= HEARD_LATELY_MS);
  const best = live.reduce((a, m) => (!a || m.score > a.score ? m : a), null);
  if (leader.battery < LOW_BATTERY || leader.flags & 8) {
    return leader.node + "'s battery is low (" + Math.round(leader.battery / 10) + "%): it hands over to the best node.";
  }
  if (best && best.score > leader.score) {
    return best.node + " scores " + best.score + ", " + (best.score - leader.score) + " more than " + leader.node +
      " (" + leader.score + "), but not more than " + MARGIN + " more: the incumbent keeps leading.";
  }
  return leader.node + " leads with the best score (" + leader.score + ").";
}

function nodeColor(member) {
  if (isSilent(member)) return "var(--silent)";
  if (member.leader) return "var(--leader)";
  if (member.battery < LOW_BATTERY || member.flags & 8) return "var(--warn)";
  return "var(--ok)";
}

function renderGraph(view) {
  // Leader in the middle, members on a circle, an edge from each member to the leader.
  const svg = view.section.querySelector("svg.graph");
  svg.replaceChildren();
  const members = view.mesh.members;
  const leader = members.find((m) => m.leader);
  const others = members.filter((m) => !m.leader);
  const cx = 160, cy = 128, radius = others.length > 1 ? 92 : 70;
  const pos = new Map();
  if (leader) pos.set(leader.node, [cx, cy]);
  others.forEach((m, i) => {
    // Half a step off the vertical, so edges do not run through the leader's crown.
    const step = (2 * Math.PI) / Math.max(1, others.length);
    const a = -Math.PI / 2 + step / 2 + step * i;
    pos.set(m.node, [cx + radius * Math.cos(a), cy + radius * Math.sin(a)]);
  });
  if (!leader && others.length === 0) return;
  for (const m of others) {
    const [x, y] = pos.get(m.node);
    if (leader) svg.appendChild(el("line", { class: "edge leader-edge", x1: cx, y1: cy, x2: x, y2: y }));
  }
  for (let i = 0; i < others.length && others.length > 2; i++) {
    const [x1, y1] = pos.get(others[i].node);
    const [x2, y2] = pos.get(others[(i + 1) % others.length].node);
    svg.appendChild(el("line", { class: "edge", x1, y1, x2, y2, opacity: 0.35 }));
  }
  for (const m of members) {
    const [x, y] = pos.get(m.node);
    const g = el("g", { class: "node" + (m.leader ? " node-leader" : ""), "data-node": m.node });
    const r = m.leader ? 20 : 15;
    if (m.leader) {
      g.appendChild(el("circle", { class: "ring", cx: x, cy: y, r: r + 5 }));
      g.appendChild(el("text", { class: "crown", x, y: y - r - 9 }, "\u265B"));
    }
    g.appendChild(el("circle", { cx: x, cy: y, r, fill: nodeColor(m) }));
    g.appendChild(el("text", { x, y: y + r + 14 }, m.node));
    g.appendChild(el("text", { class: "sub", x, y: y + r + 25 }, "\u26A1" + Math.round(m.battery / 10) + "%  s" + m.score));
    svg.appendChild(g);
  }
}

function bar(value, max, color) {
  const pct = Math.max(0, Math.min(100, (100 * value) / max));
  return '<span class="bar"><i style="width:' + pct + "%;background:" + color + '"></i></span>';
}

// A sleepy member may go unheard for two wake intervals before it is silent (the gateway's
// rule); while it sleeps, the table says when it wakes next.
function isSilent(m) {
  return now() - m.last_seen_ms > (m.sleep_ms ? 2 * m.sleep_ms + silentMs : silentMs);
}

function roleText(m) {
  if (m.leader) return "leader";
  if (m.flags & 16) return "leaving";
  if (m.sleep_ms) {
    if (now() - m.last_seen_ms < HEARD_LATELY_MS) return "sleepy, awake";
    const wake = m.next_wake_ms - now();
    return wake >= 0 ? "sleeping, wakes in " + Math.ceil(wake / 1000) + " s" : "sleeping, wake overdue";
  }
  return "member";
}

// Energy: mean current (mA: mAh spent per hour) overall and per role, projected battery life.
// Two decimals: with the radio listening anyway, leading costs about 0.07 mA more than
// following at 95 mA (docs/design.md, "What leading costs"); one decimal would show both as
// the same figure.
// Two lines (overall and life, then per role), so that the column stays narrow enough for
// the card.
function energyCell(td, e) {
  if (!e) return;
  const roles = Object.entries(e.roles).map(([role, r]) => role + " " + r.mA.toFixed(2)).join(", ");
  const life = e.life_h === null ? "mains" : e.life_h < 48 ? e.life_h.toFixed(1) + " h" : (e.life_h / 24).toFixed(1) + " d";
  td.appendChild(el("div", { class: "energy-total" }, e.mA.toFixed(2) + " mA, " + life));
  td.appendChild(el("div", { class: "energy-roles" }, roles));
}

function renderTable(view) {
  const body = view.section.querySelector("table.nodes tbody");
  body.replaceChildren();
  for (const m of view.mesh.members) {
    const silent = isSilent(m);
    const tr = el("tr", { class: (m.leader ? "is-leader " : "") + (silent ? "is-silent" : "") });
    const batteryColor = m.battery < LOW_BATTERY ? "var(--bad)" : m.battery < 500 ? "var(--warn)" : "var(--ok)";
    tr.innerHTML =
      "<td></td>" +
      '<td><span class="role ' + (m.leader ? "role-leader" : "") + '"></span></td>' +
      "<td>" + m.score + "</td>" +
      "<td>" + bar(m.battery, 1000, batteryColor) + '<span class="num">' + (m.battery / 10).toFixed(1) + "%</span></td>" +
      "<td>" + bar(m.link, 1000, "var(--accent)") + '<span class="num">' + (m.link / 10).toFixed(0) + "%</span></td>" +
      '<td class="num">' + ago(m.last_seen_ms) + "</td>" +
      '<td class="num"></td>';
    tr.firstChild.textContent = m.node;
    tr.children[1].firstChild.textContent = roleText(m);
    energyCell(tr.lastChild, m.energy);
    body.appendChild(tr);
  }
}

function renderAlerts() {
  for (const view of state.meshes.values()) {
    const list = view.section.querySelector("ul.alerts");
    const items = [...state.alerts.values()].filter((a) => a.mesh === view.name)
      .sort((a, b) => (a.cleared_ms == null ? 0 : 1) - (b.cleared_ms == null ? 0 : 1) || b.raised_ms - a.raised_ms)
      .slice(0, 40);
    list.replaceChildren();
    if (!items.length) list.appendChild(el("li", {}, "No alerts."));
    for (const a of items) {
      const li = el("li", { class: a.cleared_ms == null ? "active" : "cleared", "data-kind": a.kind });
      li.appendChild(el("span", { class: "kind" }, a.kind.replace("_", " ")));
      li.appendChild(el("span", {}, a.message));
      li.appendChild(el("span", { class: "when" }, a.cleared_ms == null ? clock(a.raised_ms) : "cleared " + clock(a.cleared_ms)));
      list.appendChild(li);
    }
  }
  const open = [...state.alerts.values()].filter((a) => a.cleared_ms == null).length;
  document.getElementById("stat-alerts").textContent = open;
}

function renderTimeline(view) {
  // Elections, operators' fence resets and, in demo mode, the operator's actions that caused
  // elections, newest first.
  const list = view.section.querySelector("ol.timeline");
  list.replaceChildren();
  const entries = [
    ...view.elections,
    ...view.resets.map((r) => ({ ...r, reset: true })),
    ...view.actions.map((a) => ({ ...a, operator: true })),
  ].sort((a, b) => a.at_ms - b.at_ms);
  for (const e of entries.reverse().slice(0, 50)) {
    if (e.reset) {
      list.appendChild(el("li", { class: "fence-reset-entry", "data-term": e.to_term }, fenceResetText(e)));
      continue;
    }
    if (e.operator) {
      const li = el("li", { class: "operator-entry", "data-action": e.action });
      li.appendChild(el("span", { class: "reason reason-operator" }, "operator"));
      li.appendChild(document.createTextNode(" " + e.text + " "));
      li.appendChild(el("span", { class: "muted" }, "\u00b7 " + clock(e.at_ms)));
      list.appendChild(li);
      continue;
    }
    const li = el("li", { "data-term": e.term });
    li.innerHTML = "<b></b> leads term " + e.term + ' <span class="reason"></span> <span class="muted"></span>';
    li.querySelector("b").textContent = e.leader;
    const reason = li.querySelector(".reason");
    reason.textContent = e.reason;
    reason.classList.add("reason-" + e.reason.replace(/[^a-z]+/g, "-"));
    li.querySelector(".muted").textContent = "\u00b7 " + clock(e.at_ms);
    list.appendChild(li);
  }
}

// ---- charts -----------------------------------------------------------------------------

const PALETTE = ["#4cc2ff", "#3ddc97", "#ffb347", "#ff5d6c", "#c49bff", "#f78fb3", "#7bed9f", "#ffd166", "#70a1ff", "#a4b0be"];

function nodeColors(view) {
  // A stable colour per node (sorted ids), shared by every chart of the mesh.
  const nodes = new Set();
  for (const s of view.readings.values()) nodes.add(s.node);
  for (const s of view.agg.values()) nodes.add(s.node);
  if (view.mesh) for (const m of view.mesh.members) nodes.add(m.node);
  const colors = new Map();
  [...nodes].sort().forEach((n, i) => colors.set(n, PALETTE[i % PALETTE.length]));
  return colors;
}

function stackedLayout(metrics, extra) {
  // One row per metric, sharing the time axis; the metric name and unit label each row.
  const layout = { ...layoutBase, ...extra, grid: { rows: metrics.length, columns: 1, pattern: "coupled", roworder: "top to bottom", ygap: 0.18 } };
  metrics.forEach((metric, k) => {
    layout["yaxis" + (k ? k + 1 : "")] = { ...layoutBase.yaxis, title: { text: plotText(axisTitle(metric)), font: { size: 11 } } };
  });
  return layout;
}

function seriesTraces(series, colors, metrics, make) {
  const traces = [];
  const shown = new Set();
  for (const s of [...series.values()].sort((a, b) => (a.metric + a.node).localeCompare(b.metric + b.node))) {
    const k = metrics.indexOf(s.metric);
    const trace = make(s);
    trace.name = plotText(s.node);
    trace.legendgroup = s.node;
    trace.showlegend = !shown.has(s.node);
    shown.add(s.node);
    trace.yaxis = "y" + (k ? k + 1 : "");
    trace.xaxis = "x";
    trace.line = { width: 1.6, color: colors.get(s.node) };
    trace.marker = { size: 4, color: colors.get(s.node) };
    traces.push(trace);
  }
  return traces;
}

function chartNote(div, text) {
  // A word in a panel that has nothing drawn yet: "loading...", "no readings yet".
  if (div.querySelector(".main-svg")) return;
  let note = div.querySelector(".note");
  if (!note) note = div.appendChild(el("div", { class: "note" }));
  note.textContent = text;
}

function renderCharts(view) {
  if (!plotlyReady()) return;
  const colors = nodeColors(view);
  const metrics = [...new Set([...view.readings.values()].map((s) => s.metric))].sort();
  for (const div of view.section.querySelectorAll(".chart")) div.querySelector(".note")?.remove();
  if (!metrics.length) chartNote(view.section.querySelector(".readings-chart"), "No readings yet.");
  if (metrics.length) {
    const div = view.section.querySelector(".readings-chart");
    div.style.height = 60 + 150 * metrics.length + "px";
    const traces = seriesTraces(view.readings, colors, metrics, (s) => ({
      x: s.x.map((t) => new Date(t)), y: s.y, type: "scatter", mode: "lines+markers",
    }));
    Plotly.react(div, traces, stackedLayout(metrics, { legend: { orientation: "h", y: 1.12, x: 0 }, margin: { l: 56, r: 12, t: 28, b: 30 } }), plotConfig);
  }
  const aggMetrics = [...new Set([...view.agg.values()].map((s) => s.metric))].sort();
  if (aggMetrics.length) {
    const div = view.section.querySelector(".agg-chart");
    div.style.height = 40 + 130 * aggMetrics.length + "px";
    const traces = seriesTraces(view.agg, colors, aggMetrics, (s) => ({
      x: s.x.map((t) => new Date(t)), y: s.y, type: "scatter", mode: "lines+markers",
      error_y: { type: "data", symmetric: false, array: s.hi, arrayminus: s.lo, thickness: 1, width: 3 },
      text: s.leader.map((l) => plotText("leader " + l)),
    }));
    Plotly.react(div, traces, stackedLayout(aggMetrics, { showlegend: false, margin: { l: 56, r: 12, t: 8, b: 30 } }), plotConfig);
  } else {
    chartNote(view.section.querySelector(".agg-chart"), "No aggregates yet.");
  }

  // Who led when: one step line over time, its y the leader; each election marked.
  const leaderDiv = view.section.querySelector(".leader-chart");
  const els = view.elections;
  const xs = els.map((e) => new Date(e.at_ms));
  const ys = els.map((e) => plotText(e.leader));
  if (els.length) { xs.push(new Date(now())); ys.push(ys[ys.length - 1]); }
  const steps = {
    x: xs, y: ys, type: "scatter", mode: "lines", line: { shape: "hv", color: "#ffc940", width: 2 },
    name: "leader", hoverinfo: "skip",
  };
  const marks = {
    x: els.map((e) => new Date(e.at_ms)), y: els.map((e) => plotText(e.leader)), type: "scatter", mode: "markers+text",
    text: els.map((e) => plotText("t" + e.term + " " + e.reason)),
    textposition: els.map((e, i) => (i === els.length - 1 && els.length > 1 ? "top left" : "top right")),
    textfont: { size: 10, color: "#8a94ab" }, marker: { size: 9, color: els.map((e) => colors.get(e.leader) || "#4cc2ff") }, name: "election",
  };
  Plotly.react(leaderDiv, [steps, marks], {
    ...layoutBase, showlegend: false, margin: { l: 56, r: 24, t: 16, b: 30 }, yaxis: { ...layoutBase.yaxis, type: "category" },
  }, plotConfig);
}

function noteIfNoPlotly() {
  if (plotlyReady()) return;
  for (const div of document.querySelectorAll(".chart")) chartNote(div, "plotly.js not available (pip install plotly)");
}

let plotlyAsked = false;
function loadPlotly() {
  if (plotlyAsked) return;
  plotlyAsked = true;
  const script = document.createElement("script");
  script.src = "/vendor/plotly.min.js";
  script.onload = () => { for (const view of state.meshes.values()) renderCharts(view); };
  script.onerror = noteIfNoPlotly;
  document.head.appendChild(script);
}

setInterval(() => {
  let live = 0;
  for (const view of state.meshes.values()) {
    live += view.count;
    if (view.dirty) { view.dirty = false; renderCharts(view); }
  }
  document.getElementById("stat-readings").textContent = live;
}, CHART_REFRESH_MS);
// Ages ("3 s ago") and silence colours move with time even without events.
setInterval(() => { for (const view of state.meshes.values()) renderMesh(view); }, 2000);

function renderHealth(health) {
  // The gateway's own problems (storage failing, a wall-clock step) above every mesh.
  const banner = document.getElementById("health");
  const problems = (health && health.problems) || [];
  banner.hidden = problems.length === 0;
  banner.replaceChildren();
  for (const p of problems) {
    const since = p.since_ms ? " (since " + clock(p.since_ms) + ")" : "";
    banner.appendChild(el("span", { class: "problem problem-" + p.severity, "data-what": p.what }, p.message + since));
  }
}

// ---- the live feed ----------------------------------------------------------------------

const handlers = {
  snapshot(ev) {
    state.clockSkew = ev.now_ms - Date.now();
    if (ev.silent_ms) silentMs = ev.silent_ms;
    state.units = ev.units || state.units;
    state.alerts.clear();
    for (const a of ev.alerts) state.alerts.set(alertKey(a), a);
    for (const mesh of ev.meshes) { const v = meshView(mesh.name); v.mesh = mesh; v.elections = []; v.resets = []; }
    for (const e of ev.elections) meshView(e.mesh).elections.push(e);
    for (const r of ev.fence_resets || []) meshView(r.mesh).resets.push(r);
    renderHealth(ev.health);
    for (const [name, past] of Object.entries(ev.history || {})) {
      const view = meshView(name);
      for (const [node, boot, seq, tMs, receivedMs, metrics] of past.readings) addReading(view, node, boot, seq, tMs, receivedMs, metrics);
      for (const [leader, node, metric, count, min, max, mean, at] of past.aggregates) {
        addAggregate(view, leader, node, metric, count, min, max, mean, at);
      }
    }
    for (const view of state.meshes.values()) { renderMesh(view); renderTimeline(view); view.dirty = true; renderCharts(view); }
    renderAlerts();
    document.getElementById("stat-meshes").textContent = state.meshes.size;
    setTimeout(loadPlotly, 0); // after this paint
  },
  mesh(ev) {
    const view = meshView(ev.mesh.name);
    view.mesh = ev.mesh;
    renderMesh(view);
    document.getElementById("stat-meshes").textContent = state.meshes.size;
  },
  batch(ev) {
    const view = meshView(ev.mesh);
    for (const [node, boot, seq, tMs, metrics] of ev.readings) addReading(view, node, boot, seq, tMs, ev.at_ms, metrics);
    for (const [node, metric, count, min, max, mean] of ev.agg) addAggregate(view, ev.leader, node, metric, count, min, max, mean, ev.at_ms);
    view.dirty = true;
  },
  election(ev) {
    const view = meshView(ev.mesh);
    if (!view.elections.some((e) => e.term === ev.term && e.leader === ev.leader)) view.elections.push(ev);
    renderTimeline(view);
    view.dirty = true;
  },
  alert(ev) { state.alerts.set(alertKey(ev), ev); renderAlerts(); const v = state.meshes.get(ev.mesh); if (v) renderMesh(v); },
  alert_cleared(ev) {
    state.alerts.set(alertKey(ev), ev);
    renderAlerts();
    const v = state.meshes.get(ev.mesh); if (v) renderMesh(v);
  },
  fence_reset(ev) {
    const view = meshView(ev.mesh);
    if (!view.resets.some((r) => r.id === ev.id)) view.resets.push(ev);
    renderTimeline(view);
  },
  health(ev) { renderHealth(ev.health); },
  operator(ev) {
    // Demo mode: an action that broke the mesh on purpose (gateway/democontrol.py).
    const view = meshView(ev.mesh);
    if (!view.actions.some((a) => a.at_ms === ev.at_ms && a.action === ev.action)) view.actions.push(ev);
    renderTimeline(view);
    document.dispatchEvent(new CustomEvent("meshelect-operator", { detail: ev }));
  },
  fenced() {},
  refused() {},
};

function connect() {
  const feed = document.getElementById("feed");
  const source = new EventSource("/api/events");
  for (const type of Object.keys(handlers)) {
    source.addEventListener(type, (message) => {
      try { handlers[type](JSON.parse(message.data)); } catch (err) { console.error(type, err); }
    });
  }
  source.onopen = () => { feed.textContent = "live"; feed.className = "feed feed-live"; };
  source.onerror = () => { feed.textContent = "reconnecting\u2026"; feed.className = "feed feed-connecting"; };
}

// Over-the-air updates (gateway --ota-dir): each board's app version and where its update
// stands, from the reports boards send (gateway/ota.py). No such route: no card, no polling.
function otaText(r) {
  if (r.state === "downloading") return "downloading " + r.pct + "% of " + r.new;
  if (r.state === "pending") return "pending reboot into " + r.new;
  if (r.state === "trial") return "trial of " + r.new;
  if (r.state === "rolled-back") return "rolled back from " + r.new + (r.reason ? ": " + r.reason : "");
  if (r.state === "failed") return "failed: " + (r.reason || "?");
  return r.state;
}

async function pollOta() {
  let reports;
  try {
    const answer = await fetch("/api/ota");
    if (answer.status === 404) return;
    reports = await answer.json();
  } catch (err) {
    reports = null;
  }
  if (reports) {
    const card = document.getElementById("ota");
    card.hidden = reports.length === 0;
    const body = card.querySelector("tbody");
    body.replaceChildren();
    for (const r of reports) {
      const tr = el("tr", { "data-node": r.node });
      for (const text of [r.node, r.version || "-", otaText(r)]) tr.appendChild(el("td", {}, text));
      body.appendChild(tr);
    }
  }
  setTimeout(pollOta, 2000);
}
pollOta();

// Deferred scripts run once the page is parsed: connect now. plotly.js follows the first
// snapshot, or comes anyway after a while if the feed is slow to answer.
connect();
setTimeout(loadPlotly, 1500);
