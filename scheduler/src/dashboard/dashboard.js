// The dashboard: polls /api/status and redraws. Every value goes in as text (textContent),
// never as markup: node and image names come from agents and preheat requests.
"use strict";

const POLL_MS = 2000;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) e.append(c instanceof Node ? c : String(c));
  return e;
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
}

function ago(ms) {
  if (ms < 1500) return "now";
  if (ms < 120000) return Math.round(ms / 1000) + " s ago";
  return Math.round(ms / 60000) + " min ago";
}

function bar(fraction, failed) {
  const pct = Math.max(0, Math.min(1, fraction)) * 100;
  return el("div", { class: failed ? "bar failed" : "bar" },
    el("span", { class: "fill", style: "width:" + pct.toFixed(1) + "%" }));
}

function row(name, fraction, text, failed) {
  return el("div", { class: "row" },
    el("span", { class: "name" }, name), bar(fraction, failed), el("span", { class: "num" }, text));
}

function fill(id, rows) {
  const body = document.querySelector("#" + id + " tbody");
  body.replaceChildren(...rows);
}

function list(id, items) {
  const box = document.getElementById(id);
  box.replaceChildren(...(items.length ? items : [el("p", { class: "muted empty" }, "none")]));
}

// A pool's bytes from origin: what its mirrors fetched, "unknown" (with why, on hover) when one
// could not be read, "–" when no node named its mirror.
function originCell(p, mirrors) {
  const why = p.mirrors.map((url) => {
    const m = mirrors.get(url);
    return url + ": " + (m && m.upstreamBytes !== null ? bytes(m.upstreamBytes) : "unknown (" + ((m && m.error) || "not read yet") + ")");
  }).join("\n");
  const text = p.originBytes !== null ? bytes(p.originBytes) : (p.mirrors.length ? "unknown" : "–");
  return el("td", { class: "origin" + (text === "unknown" ? " unknown" : ""), title: why || "no node named its mirror" }, text);
}

function drawPools(s) {
  const mirrors = new Map(s.mirrors.map((m) => [m.url, m]));
  fill("pools", s.pools.map((p) => el("tr", { "data-pool": p.id },
    el("td", {}, p.id), el("td", {}, p.name), el("td", {}, p.p2p ? "yes" : "no (mirror only)"),
    el("td", {}, p.connectedPools.join(", ") || "–"), el("td", {}, p.up + " / " + p.nodes),
    originCell(p, mirrors))));
}

function drawNodes(s) {
  fill("nodes", s.nodes.map((n) => el("tr", { "data-node": n.id },
    el("td", {}, n.id), el("td", {}, n.pool), el("td", {}, n.addr),
    el("td", { class: "state " + (n.up ? "up" : "down"), title: "last heard " + ago(n.seenAgoMs) },
      n.up ? "up" : "down"),
    el("td", { class: "cache" }, n.cacheBytes === null ? "–" : bytes(n.cacheBytes) + " (" + n.blobs + " blobs)"),
    el("td", {}, bytes(n.bytesFromPeers)), el("td", {}, bytes(n.bytesFromMirror)))));
}

function drawTransfers(s) {
  list("transfers", s.transfers.map((t) => {
    const more = t.nodeCount > t.nodes.length ? " (" + t.nodes.length + " of " + t.nodeCount + " shown)" : "";
    return el("div", { class: "transfer", "data-digest": t.digest },
      el("div", { class: "title" }, el("span", { class: "digest" }, t.digest),
        el("span", { class: "muted" }, bytes(t.size) + ", " + t.pieces + " pieces, " + t.nodeCount + " nodes" + more)),
      ...t.nodes.map((n) => {
        const r = row(n.id, t.pieces ? n.held / t.pieces : 1, n.held + " / " + t.pieces, false);
        r.setAttribute("data-node", n.id);
        return r;
      }));
  }));
}

function drawJobs(s) {
  list("jobs", s.jobs.map((j) => {
    const done = j.nodes.reduce((a, n) => a + n.bytesDone, 0);
    const total = j.nodes.reduce((a, n) => a + n.bytesTotal, 0);
    return el("div", { class: "job", "data-job": j.id, "data-state": j.state },
      el("div", { class: "title" },
        el("span", {}, "pool ", el("b", {}, j.pool), ": " + j.images.map((i) => i.image).join(", ")),
        el("span", { class: "state state-" + j.state }, j.state)),
      row("all nodes", total ? done / total : (j.state === "done" ? 1 : 0), bytes(done) + " / " + bytes(total), j.state === "failed"),
      ...j.nodes.map((n) => {
        const r = row(n.id, n.bytesTotal ? n.bytesDone / n.bytesTotal : 0,
          n.state === "failed" ? "failed" : bytes(n.bytesDone), n.state === "failed");
        r.setAttribute("data-node", n.id);
        return r;
      }),
      ...(j.error ? [el("p", { class: "error" }, j.error)] : []));
  }));
}

function drawSummary(s) {
  const up = s.nodes.filter((n) => n.up).length;
  document.getElementById("sum-pools").textContent = s.pools.length;
  document.getElementById("sum-nodes").textContent = up + " / " + s.nodes.length;
  document.getElementById("sum-transfers").textContent = s.transfers.length;
  const ratio = s.bytes.offloadRatio;
  document.getElementById("offload").textContent = ratio === null ? "–" : (ratio * 100).toFixed(1) + "%";
  document.getElementById("bytes-peers").textContent = bytes(s.bytes.peers);
  document.getElementById("bytes-mirror").textContent = bytes(s.bytes.mirror);
  const origin = document.getElementById("bytes-origin");
  const unknown = s.mirrors.filter((m) => m.upstreamBytes === null);
  if (!s.mirrors.length) origin.textContent = "–";
  else if (s.bytes.origin === null) origin.textContent = "unknown";
  else origin.textContent = bytes(s.bytes.origin) + (unknown.length ? " + " + unknown.length + " unknown" : "");
  origin.className = unknown.length ? "unknown" : "";
  origin.title = s.mirrors.length
    ? s.mirrors.length + " mirror(s), each counted once" + unknown.map((m) => "\n" + m.url + ": " + m.error).join("")
    : "no node named its mirror";
  const moved = s.bytes.peers + s.bytes.mirror;
  const [p, m] = document.querySelectorAll("#bytes-bar span");
  p.style.width = (moved ? (100 * s.bytes.peers) / moved : 0) + "%";
  m.style.width = (moved ? (100 * s.bytes.mirror) / moved : 0) + "%";
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    const resp = await fetch("api/status", { cache: "no-store" });
    if (!resp.ok) throw new Error("status " + resp.status);
    const s = await resp.json();
    drawSummary(s);
    drawPools(s);
    drawNodes(s);
    drawTransfers(s);
    drawJobs(s);
    status.textContent = "updated " + new Date(s.generatedUnixMs).toLocaleTimeString();
    status.className = "muted";
    document.body.setAttribute("data-loaded", "1");
  } catch (e) {
    status.textContent = "scheduler unreachable: " + e.message;
    status.className = "error";
  }
}

refresh();
setInterval(refresh, POLL_MS);
