// The live view of a PDMv2 lab: plain JavaScript and SVG, no library, nothing loaded from elsewhere.
// It listens to /api/events (server-sent events, one snapshot a second) and redraws in place.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const ROLES = {
  pc: "primary client", sc: "secondary client", ps: "primary server", ss: "secondary server",
  router: "router", observer: "observer",
};
let graphKey = "";
let lastData = 0;

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

function sv(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

function ms(v, digits) {
  return v === null || v === undefined ? "–" : `${v.toFixed(digits === undefined ? 3 : digits)} ms`;
}

function ns(v) {
  if (v === null || v === undefined) return "–";
  if (v >= 1e6) return `${(v / 1e6).toFixed(3)} ms`;
  if (v >= 1e3) return `${(v / 1e3).toFixed(1)} µs`;
  return `${Math.round(v)} ns`;
}

// -- topology -------------------------------------------------------------------------------------

function drawTopology(g) {
  const svg = document.getElementById("topology");
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${g.width} ${g.height}`);
  svg.style.maxWidth = `${g.width * 1.25}px`;
  const seg = Object.fromEntries(g.segments.map((s) => [s.name, s]));
  const host = Object.fromEntries(g.hosts.map((h) => [h.name, h]));
  const links = sv("g", { class: "links" });
  for (const l of g.links) {
    const h = host[l.host];
    if (!h || h.hidden) continue;
    if (l.segment) {
      const s = seg[l.segment];
      const sx = h.y === s.y ? (h.x < s.x ? s.x - 55 : s.x + 55) : s.x;
      links.append(sv("line", { x1: sx, y1: s.y, x2: h.x, y2: h.y, class: s.captured ? "link tapped" : "link" }));
    } else if (host[l.peer]) {
      links.append(sv("line", { x1: h.x, y1: h.y, x2: host[l.peer].x, y2: host[l.peer].y, class: "link" }));
    }
  }
  svg.append(links);
  for (const s of g.segments) {
    const grp = sv("g", { class: `segment${s.observed ? " observed" : ""}${s.captured ? " captured" : ""}`, "data-segment": s.name });
    grp.append(sv("rect", { x: s.x - 55, y: s.y - 13, width: 110, height: 26, rx: 6 }));
    grp.append(sv("text", { x: s.x, y: s.y + 4, "text-anchor": "middle", class: "seg-name" }, s.name));
    grp.append(sv("text", { x: s.x, y: s.y - 20, "text-anchor": "middle", class: "seg-prefix" }, s.prefixes.join(" ")));
    if (s.observed) grp.append(sv("text", { x: s.x, y: s.y - 36, "text-anchor": "middle", class: "seg-watch" }, "observer watches"));
    else if (s.captured) grp.append(sv("text", { x: s.x, y: s.y - 36, "text-anchor": "middle", class: "seg-watch" }, "captured here"));
    if (s.more) grp.append(sv("text", { x: s.x + 22, y: 70 + 58 * 13 + 4, class: "more" }, `+${s.more} more`));
    svg.append(grp);
  }
  for (const h of g.hosts) {
    if (h.hidden) continue;
    const grp = sv("g", { class: `host role-${h.role}`, "data-host": h.name });
    grp.append(sv("title", {}, `${h.name}: ${ROLES[h.role] || h.role}\n${h.addresses.join("\n")}`));
    grp.append(sv("circle", { cx: h.x, cy: h.y, r: 19 }));
    grp.append(sv("text", { x: h.x, y: h.y + 4, "text-anchor": "middle", class: "host-name" }, h.name));
    // a host on the row of segments (a router) is labelled above itself, the others to their right
    const onLine = h.role === "router";
    const tx = onLine ? h.x : h.x + 26;
    const ty = onLine ? h.y - 25 - 13 * h.addresses.length : h.y - 3;
    const anchor = onLine ? "middle" : "start";
    grp.append(sv("text", { x: tx, y: ty, "text-anchor": anchor, class: "host-role" }, ROLES[h.role] || h.role));
    h.addresses.forEach((a, i) => {
      grp.append(sv("text", { x: tx, y: ty + 13 * (i + 1), "text-anchor": anchor, class: "host-addr" }, a));
    });
    svg.append(grp);
  }
  const legend = document.getElementById("legend");
  legend.replaceChildren();
  for (const role of ["pc", "sc", "ps", "ss", "router", "observer"]) {
    if (!g.hosts.some((h) => h.role === role)) continue;
    const item = el("span", { class: `key role-${role}` });
    item.append(el("i"), document.createTextNode(role === ROLES[role] ? role : `${role} – ${ROLES[role]}`));
    legend.append(item);
  }
}

// -- agents ---------------------------------------------------------------------------------------

function drawAgents(agents, age) {
  const body = document.querySelector("#agents tbody");
  body.replaceChildren();
  for (const a of agents) {
    const tr = el("tr", { id: `agent-${a.host}`, "data-host": a.host });
    tr.append(el("td", { class: "mono" }, a.host), el("td", {}, a.role));
    const st = el("td");
    st.append(el("span", { class: `pill ${a.status === "up" ? "ok" : a.status === "no keys" ? "warn" : "bad"}`, title: a.detail || "" }, a.status));
    tr.append(st);
    for (const c of ["inserted", "read", "auth_failures", "downgrades", "replays"]) {
      const v = a.counters ? a.counters[c] : undefined;
      tr.append(el("td", { class: `num c-${c}${v ? " nz" : ""}${v === undefined ? " absent" : ""}` }, v === undefined ? "–" : v));
    }
    tr.append(el("td", { class: "num" }, a.flows_tracked === undefined || a.flows_tracked === null ? "–" : a.flows_tracked));
    body.append(tr);
  }
  document.getElementById("agents-age").textContent =
    age === null || age === undefined ? "Not polled yet." : `Polled ${age.toFixed(1)} s ago.`;
}

// -- flows ----------------------------------------------------------------------------------------

function chart(flow) {
  const W = 240, H = 54, P = 3;
  const svg = sv("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: "spark" });
  const series = [["server_delay", "sd"], ["rtt", "rtt"]];
  let max = 0;
  for (const [name] of series) for (const p of flow[name].points) max = Math.max(max, p[1]);
  max = max > 0 ? max * 1.15 : 1;
  svg.append(sv("rect", { x: 0, y: 0, width: W, height: H, class: "spark-bg" }));
  svg.append(sv("text", { x: W - 2, y: 10, "text-anchor": "end", class: "spark-axis" }, `${max.toFixed(1)} ms`));
  svg.append(sv("text", { x: 2, y: H - 2, class: "spark-axis" }, "-60 s"));
  for (const [name, cls] of series) {
    const pts = flow[name].points.map(([t, v]) => `${(P + (W - 2 * P) * (1 + t / 60)).toFixed(1)},${(H - P - (H - 2 * P) * (v / max)).toFixed(1)}`);
    if (pts.length === 1) pts.push(pts[0]);
    if (pts.length) svg.append(sv("polyline", { points: pts.join(" "), class: `spark-${cls}` }));
  }
  return svg;
}

function drawFlows(flows) {
  const body = document.querySelector("#flows tbody");
  body.replaceChildren();
  flows.forEach((f, i) => {
    const tr = el("tr", { class: "flow", "data-flow": f.flow, id: `flow-${i}` });
    tr.append(el("td", { class: "mono flow-name" }, f.flow));
    tr.append(el("td", { class: "num big", "data-metric": "server_delay-p50" }, ms(f.server_delay.p50_ms)));
    tr.append(el("td", { class: "num", "data-metric": "server_delay-last" }, ms(f.server_delay.last_ms)));
    tr.append(el("td", { class: "num big", "data-metric": "rtt-p50" }, ms(f.rtt.p50_ms)));
    tr.append(el("td", { class: "num" }, `${f.server_delay.count} / ${f.rtt.count}`));
    const td = el("td");
    td.append(chart(f));
    tr.append(td);
    body.append(tr);
  });
  document.getElementById("flows-empty").hidden = flows.length > 0;
}

// -- packets --------------------------------------------------------------------------------------

function drawPackets(packets, cap) {
  const wire = document.querySelector("#wire tbody");
  const opened = document.querySelector("#opened tbody");
  wire.replaceChildren();
  opened.replaceChildren();
  for (const p of packets.slice(0, 16)) {
    const w = p.wire, o = p.opened;
    const tr = el("tr", { "data-n": p.n });
    tr.append(el("td", { class: "num" }, p.n));
    tr.append(el("td", {}, `${p.src} → ${p.dst}`));
    tr.append(el("td", {}, p.proto === "ICMPv6" ? p.proto : `${p.proto} ${p.dport}`));
    tr.append(el("td", { class: "num" }, p.bytes));
    tr.append(el("td", { class: "num" }, w.random_number === undefined ? "–" : w.random_number));
    tr.append(el("td", { class: "num" }, w.f === undefined ? "–" : w.f));
    const ct = el("td", { class: "hex" });
    if (w.ciphertext) {
      ct.title = `ciphertext ${w.ciphertext}\ntag ${w.tag}`;
      ct.append(el("span", { class: "ct" }, w.ciphertext), document.createTextNode(" "), el("span", { class: "tag" }, `${w.tag.slice(0, 8)}…`));
    } else {
      ct.textContent = `${w.format || "?"} (${w.type}, len ${w.length})`;
    }
    tr.append(ct);
    wire.append(tr);
    const tr2 = el("tr", { "data-n": p.n });
    tr2.append(el("td", { class: "num" }, p.n));
    const s = el("td");
    s.append(el("span", { class: `pill ${o.status === "opened" || o.status === "clear" ? "ok" : "bad"}` }, o.status));
    tr2.append(s);
    for (const k of ["psntp", "psnlr", "global_pointer"]) tr2.append(el("td", { class: "num" }, o[k] === undefined ? "–" : o[k]));
    tr2.append(el("td", { class: "num" }, ns(o.delta_tlr_ns)), el("td", { class: "num" }, ns(o.delta_tls_ns)));
    const metric = o.server_delay_ns !== undefined ? `server delay ${ns(o.server_delay_ns)}` : o.rtt_ns !== undefined ? `RTT ${ns(o.rtt_ns)}` : "";
    tr2.append(el("td", {}, metric));
    opened.append(tr2);
  }
  const where = cap.host ? `Captured on ${cap.host}:${cap.ifname}${cap.segment ? ` (segment ${cap.segment})` : ""}` : "No capture point";
  const stand = cap.stand_in ? " — this topology has no observer, so a router's interface stands in for one" : "";
  const keys = cap.keys_from && cap.keys_from.length ? `keys read from ${cap.keys_from.join(", ")}` : "no keys read yet";
  document.getElementById("packets-note").textContent =
    `${where}${stand}. ${cap.frames} frames, ${cap.options} with a PDM option, ${cap.opened} opened; ${keys}.${cap.error ? ` ${cap.error}` : ""}`;
  document.getElementById("capture-note").textContent = `${where}${stand}.`;
}

// -- the feed -------------------------------------------------------------------------------------

function render(d) {
  lastData = Date.now();
  document.getElementById("topo-name").textContent = `· ${d.lab.topology}`;
  document.getElementById("clock").textContent = new Date(d.now * 1000).toISOString().slice(11, 19) + " UTC";
  const key = JSON.stringify(d.graph);
  if (key !== graphKey) {
    drawTopology(d.graph);
    graphKey = key;
  }
  drawAgents(d.agents, d.agents_polled_s_ago);
  drawFlows(d.flows);
  drawPackets(d.packets, d.capture);
  const live = document.getElementById("live");
  const banner = document.getElementById("banner");
  if (d.lab.up) {
    live.className = "pill ok";
    live.textContent = "live";
    banner.hidden = true;
  } else {
    live.className = "pill bad";
    live.textContent = "lab down";
    banner.textContent = "The lab is not running any more (make lab-down, or it stopped). Start one and restart the view.";
    banner.hidden = false;
  }
}

function connect() {
  const src = new EventSource("/api/events");
  src.onmessage = (ev) => render(JSON.parse(ev.data));
  src.onerror = () => {
    const live = document.getElementById("live");
    live.className = "pill bad";
    live.textContent = "disconnected, retrying…";
  };
}

setInterval(() => {
  if (lastData && Date.now() - lastData > 3000) {
    const live = document.getElementById("live");
    live.className = "pill warn";
    live.textContent = "stale";
  }
}, 1000);

connect();
