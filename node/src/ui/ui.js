// sluice web UI: the daemon's torrents, live from GET /api/v1/events;
// changes through the same API as the CLI, with the daemon's token (from
// the link `sluice ui` prints, kept for this tab only).
"use strict";

const HISTORY = 240; // points per torrent in the chart (2 min at 500 ms)
const state = { torrents: [], daemon: null, history: new Map(), peersTimer: null };

const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k.startsWith("data-")) e.setAttribute(k, v); else e[k] = v;
  }
  for (const k of kids) e.append(k);
  return e;
};

function size(b) {
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
  return (i ? b.toFixed(2) : b.toFixed(0)) + " " + u[i];
}
const rate = (b) => size(b) + "/s";
function eta(s) {
  if (s == null) return "";
  s = Math.round(s);
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m " + String(s % 60).padStart(2, "0") + "s";
  return Math.floor(s / 3600) + "h " + String(Math.floor(s / 60) % 60).padStart(2, "0") + "m";
}

function token() { return sessionStorage.getItem("sluice-token"); }

async function api(method, path, body, contentType) {
  const headers = {};
  if (token()) headers["Authorization"] = "Bearer " + token();
  if (contentType) headers["Content-Type"] = contentType;
  const r = await fetch(path, { method, headers, body });
  if (!r.ok) {
    let msg = r.status + " " + r.statusText;
    try { msg = (await r.json()).error || msg; } catch (_) { /* not JSON */ }
    throw new Error(msg);
  }
  return r.status === 204 || r.status === 202 ? null : r.json();
}

// One row per torrent: the daemon's list (paused and fetching ones too),
// with the running torrent's live numbers where there are some.
function rows() {
  const live = new Map(state.torrents.map((t) => [t.info_hash, t]));
  if (!state.daemon) {
    return state.torrents.map((t) => ({ ih: t.info_hash, name: t.name, state: t.complete ? "complete" : "running", t }));
  }
  return state.daemon.map((d) => {
    const t = live.get(d.info_hash);
    const s = d.state === "running" && t && t.complete ? "seeding" : d.state;
    return { ih: d.info_hash, name: d.name, state: s, t };
  });
}

function progressBar(p) {
  const pct = (100 * p).toFixed(1) + "%";
  const fill = el("span");
  fill.style.width = pct;
  return el("div", { class: "bar" }, fill, el("em", {}, pct));
}

function renderList() {
  const body = $("#torrents tbody");
  const list = rows();
  $("#empty").hidden = list.length > 0;
  body.replaceChildren(...list.map((r) => {
    const t = r.t;
    const disk = t ? size(t.disk.queued_bytes + t.disk.outstanding_bytes) + " / " + size(t.disk.capacity_bytes) : "";
    const actions = el("td", { class: "row-actions" });
    if (state.daemon) {
      const b = r.state === "paused"
        ? el("button", { class: "resume", textContent: "Resume" })
        : el("button", { class: "pause", textContent: "Pause" });
      b.addEventListener("click", (e) => { e.stopPropagation(); change(r.ih, r.state === "paused" ? "resume" : "pause"); });
      actions.append(b);
    }
    const tr = el("tr", { class: "torrent", "data-ih": r.ih },
      el("td", { class: "name" }, r.name),
      el("td", { class: "state state-" + r.state }, r.state),
      el("td", {}, progressBar(t ? t.progress : 0)),
      el("td", {}, t ? rate(t.down_rate) : ""),
      el("td", {}, t ? rate(t.up_rate) : ""),
      el("td", {}, t ? eta(t.eta_seconds) : ""),
      el("td", {}, t ? String(t.peers) : ""),
      el("td", {}, disk),
      actions);
    tr.addEventListener("click", () => { location.hash = "#/t/" + r.ih; });
    return tr;
  }));
}

function record() {
  for (const t of state.torrents) {
    let h = state.history.get(t.info_hash);
    if (!h) state.history.set(t.info_hash, (h = []));
    h.push({ down: t.down_rate, headroom: t.disk.headroom_bytes, capacity: t.disk.capacity_bytes });
    if (h.length > HISTORY) h.shift();
  }
}

function drawChart(ih) {
  const c = $("#chart");
  const g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  const h = state.history.get(ih) || [];
  if (!h.length) return;
  const maxDown = Math.max(1, ...h.map((p) => p.down));
  const line = (color, y) => {
    g.strokeStyle = color; g.lineWidth = 2; g.beginPath();
    h.forEach((p, i) => {
      const x = (i / (HISTORY - 1)) * c.width;
      const yy = c.height - 4 - y(p) * (c.height - 8);
      i ? g.lineTo(x, yy) : g.moveTo(x, yy);
    });
    g.stroke();
  };
  const css = getComputedStyle(document.documentElement);
  line(css.getPropertyValue("--accent"), (p) => p.down / maxDown);
  line(css.getPropertyValue("--ok"), (p) => (p.capacity ? p.headroom / p.capacity : 0));
  g.fillStyle = css.getPropertyValue("--muted");
  g.fillText("peak " + rate(maxDown), 6, 12);
}

// `/ip4/127.0.0.1/tcp/4001/p2p/…` → `127.0.0.1:4001` (QUIC: `…/quic`).
function shortAddr(a) {
  const m = a.match(/^\/ip([46])\/([^/]+)\/(tcp|udp)\/(\d+)(\/quic-v1)?/);
  if (!m) return a;
  const host = m[1] === "6" ? "[" + m[2] + "]" : m[2];
  return host + ":" + m[4] + (m[5] ? "/quic" : "");
}

function flags(p) {
  let f = "";
  if (!p.peer_choking && p.am_interested) f += "D";
  else if (p.am_interested) f += "d";
  if (!p.am_choking && p.peer_interested) f += "U";
  else if (p.peer_interested) f += "u";
  if (p.optimistic) f += "O";
  if (p.snubbed) f += "S";
  return f;
}

async function loadPeers(ih) {
  try {
    const peers = await api("GET", "/api/v1/torrents/" + ih + "/peers");
    $("#peers tbody").replaceChildren(...peers.map((p) => el("tr", { class: "peer" },
      el("td", { title: p.peer_id }, p.addr ? shortAddr(p.addr) : p.peer_id.slice(0, 16)),
      el("td", {}, p.client || (p.transport === "bt" ? "bt" : "sluice (libp2p)")),
      el("td", { class: "flags" }, flags(p)),
      el("td", { class: "why" }, p.choke_reason),
      el("td", {}, rate(p.down_rate)),
      el("td", {}, rate(p.up_rate)),
      el("td", {}, p.outstanding_requests + "/" + p.request_window),
      el("td", {}, String(p.upload_queue)),
      el("td", {}, String(p.pieces)))));
  } catch (e) {
    $("#peers tbody").replaceChildren(el("tr", {}, el("td", { colSpan: 9, class: "muted" }, String(e.message))));
  }
}

function renderTorrent(ih) {
  const r = rows().find((x) => x.ih === ih);
  if (!r) { $("#t-name").textContent = "No torrent " + ih; $("#t-summary").textContent = ""; return; }
  $("#t-name").textContent = r.name;
  const t = r.t;
  $("#t-summary").textContent = r.state + (t
    ? " · " + (100 * t.progress).toFixed(1) + "% of " + size(t.size) + " · down " + rate(t.down_rate) +
      " · up " + rate(t.up_rate) + (t.eta_seconds != null ? " · ETA " + eta(t.eta_seconds) : "") +
      " · disk queue headroom " + size(t.disk.headroom_bytes)
    : "");
  $("#t-pause").hidden = !state.daemon || r.state === "paused";
  $("#t-resume").hidden = !state.daemon || r.state !== "paused";
  $("#t-remove").hidden = !state.daemon;
  $("#t-recheck").hidden = !state.daemon || r.state === "fetching" || r.state === "checking";
  $("#t-limits").hidden = !state.daemon;
  drawChart(ih);
}

function route() {
  const m = location.hash.match(/^#\/t\/([0-9a-f]+)$/);
  clearInterval(state.peersTimer);
  $("#list-view").hidden = !!m;
  $("#torrent-view").hidden = !m;
  if (m) {
    const ih = m[1];
    renderTorrent(ih);
    loadLimits($("#t-limits"), "/api/v1/torrents/" + ih + "/limits");
    loadPeers(ih);
    state.peersTimer = setInterval(() => loadPeers(ih), 1000);
  } else {
    renderList();
    loadLimits($("#node-limits"), "/api/v1/limits");
  }
}

function render() {
  const m = location.hash.match(/^#\/t\/([0-9a-f]+)$/);
  if (m) renderTorrent(m[1]); else renderList();
}

// Limits forms: rates in KiB/s, empty is none (unlimited, or the node's
// for a torrent); slots empty is the default.
function fillLimits(form, l) {
  const kib = (r) => (r == null ? "" : String(+(r / 1024).toFixed(2)));
  form.elements.up.value = kib(l.up_rate);
  form.elements.down.value = kib(l.down_rate);
  form.elements.slots.value = l.slots == null ? "" : String(l.slots);
  // What was shown: only fields changed from it are sent.
  for (const f of ["up", "down", "slots"]) form.elements[f].dataset.shown = form.elements[f].value;
}

// The fields the user changed, as the API takes them; an entry the
// browser could not read as a number is refused, not sent as "none".
function readLimits(form) {
  const change = {};
  const keys = { up: "up_rate", down: "down_rate", slots: "slots" };
  for (const [f, key] of Object.entries(keys)) {
    const input = form.elements[f];
    if (input.validity.badInput) throw new Error(f + ": not a number");
    if (input.value === input.dataset.shown) continue;
    const v = input.value.trim() === "" ? null : Number(input.value);
    change[key] = v == null ? null : f === "slots" ? v : Math.max(1, Math.round(v * 1024));
  }
  return change;
}

async function setLimits(form, path, ev) {
  ev.preventDefault();
  const out = form.querySelector(".result");
  try {
    const l = await api("POST", path, JSON.stringify(readLimits(form)), "application/json");
    fillLimits(form, l);
    out.textContent = "set";
  } catch (e) { out.textContent = e.message; }
}

async function loadLimits(form, path) {
  form.querySelector(".result").textContent = "";
  try { fillLimits(form, await api("GET", path)); } catch (_) { /* not a daemon, or gone */ }
}

async function change(ih, action) {
  try {
    await api("POST", "/api/v1/torrents/" + ih + "/" + action);
  } catch (e) { alert(action + ": " + e.message); }
}

function connect() {
  const es = new EventSource("/api/v1/events");
  es.addEventListener("state", (e) => {
    const s = JSON.parse(e.data);
    state.torrents = s.torrents;
    state.daemon = s.daemon;
    $("#conn").textContent = "live";
    $("#conn").className = "conn live";
    $("#add").hidden = !state.daemon;
    $("#node-limits").hidden = !state.daemon;
    record();
    render();
  });
  es.onerror = () => { $("#conn").textContent = "reconnecting…"; $("#conn").className = "conn"; };
}

async function add(ev) {
  ev.preventDefault();
  const out = $("#add-output").value.trim();
  const q = new URLSearchParams({ paused: $("#add-paused").checked });
  if (out) q.set("output", out);
  const file = $("#add-file").files[0];
  try {
    const r = file
      ? await api("POST", "/api/v1/torrents?" + q, await file.arrayBuffer(), "application/x-bittorrent")
      : await api("POST", "/api/v1/torrents?" + q, JSON.stringify({ source: $("#add-source").value.trim() }), "application/json");
    $("#add-result").textContent = "added " + r.info_hash.slice(0, 16);
    $("#add-source").value = "";
    $("#add-file").value = "";
  } catch (e) {
    $("#add-result").textContent = e.message;
  }
}

function init() {
  const t = location.hash.match(/token=([0-9a-f]+)/);
  if (t) { sessionStorage.setItem("sluice-token", t[1]); history.replaceState(null, "", "#/"); }
  $("#readonly").hidden = !!token();
  $("#add").addEventListener("submit", add);
  $("#t-pause").addEventListener("click", () => change(location.hash.slice(4), "pause"));
  $("#t-resume").addEventListener("click", () => change(location.hash.slice(4), "resume"));
  $("#t-recheck").addEventListener("click", () => change(location.hash.slice(4), "recheck"));
  $("#node-limits").addEventListener("submit", (e) => setLimits($("#node-limits"), "/api/v1/limits", e));
  $("#t-limits").addEventListener("submit", (e) => setLimits($("#t-limits"), "/api/v1/torrents/" + location.hash.slice(4) + "/limits", e));
  $("#t-remove").addEventListener("click", async () => {
    const ih = location.hash.slice(4);
    try {
      await api("DELETE", "/api/v1/torrents/" + ih + "?delete_data=" + $("#t-delete").checked);
      location.hash = "#/";
    } catch (e) { alert("remove: " + e.message); }
  });
  window.addEventListener("hashchange", route);
  api("GET", "/api/v1/node").then((n) => {
    $("#node").textContent = n.peer_id.slice(0, 16) + "… · v" + n.version;
  }).catch(() => {});
  route();
  connect();
}

document.addEventListener("DOMContentLoaded", init);
