// The live status page: polls the admin API (same credentials) and /metrics every second.
"use strict";

const POLL_MS = 1000;
const WINDOW_MS = 120000; // rates and p99 over the last two minutes
let token = sessionStorage.getItem("tailguard-admin-token") || "";
const history = []; // [{t, routes: {name: {count, errors, buckets: [[le, n]]}}}]

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function pill(text, kind) {
  return el("span", { class: "pill " + kind }, text);
}

async function get(path, json) {
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const r = await fetch(path, { headers, cache: "no-store" });
  if (r.status === 401 || r.status === 403) {
    document.getElementById("auth").hidden = false;
    throw new Error("the admin API wants credentials");
  }
  if (!r.ok) throw new Error(path + " answered " + r.status);
  return json ? r.json() : r.text();
}

// The per-route request counters and latency histogram of a Prometheus text exposition.
function parseMetrics(text) {
  const routes = {};
  const route = (name) => (routes[name] ||= { count: 0, errors: 0, buckets: {} });
  const labels = (s) => Object.fromEntries([...s.matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((m) => [m[1], m[2]]));
  for (const line of text.split("\n")) {
    const m = /^(\w+)\{([^}]*)\} ([^ ]+)/.exec(line);
    if (!m) continue;
    const [, name, raw, value] = m;
    const l = labels(raw);
    const v = Number(value);
    if (name === "tailguard_requests_total" && l.route) {
      route(l.route).count += v;
      if (l.code_class === "5xx") route(l.route).errors += v;
    } else if (name === "tailguard_request_duration_seconds_bucket" && l.route) {
      route(l.route).buckets[l.le] = v;
    }
  }
  return routes;
}

function p99(buckets) {
  const les = Object.keys(buckets).sort((a, b) => (a === "+Inf" ? 1 : b === "+Inf" ? -1 : Number(a) - Number(b)));
  const total = buckets["+Inf"] || 0;
  if (total <= 0) return null;
  for (const le of les) if (buckets[le] >= 0.99 * total) return le === "+Inf" ? Infinity : Number(le);
  return null;
}

function windowStats(name) {
  if (history.length < 2) return null;
  const last = history[history.length - 1];
  const first = history.find((h) => last.t - h.t <= WINDOW_MS) || history[0];
  const a = first.routes[name] || { count: 0, errors: 0, buckets: {} };
  const b = last.routes[name];
  if (!b || last.t === first.t) return null;
  const seconds = (last.t - first.t) / 1000;
  const n = b.count - a.count;
  const buckets = {};
  for (const le of Object.keys(b.buckets)) buckets[le] = b.buckets[le] - (a.buckets[le] || 0);
  return { rate: n / seconds, errors: n > 0 ? (b.errors - a.errors) / n : 0, p99: p99(buckets) };
}

function endpointState(e) {
  if (e.breaker === "open" || e.health === "unhealthy" || e.ejected || !e.usable) return ["down", "down"];
  if (e.draining) return ["draining", "warn"];
  if (e.suspect || e.breaker === "half_open") return ["degraded", "warn"];
  return ["up", "ok"];
}

function fill(id, rows) {
  const body = document.querySelector("#" + id + " tbody");
  body.replaceChildren(...rows);
}

function render(status, slo) {
  const ready = document.getElementById("ready");
  ready.textContent = status.ready ? "ready" : "not ready";
  ready.className = "pill " + (status.ready ? "ok" : "down");
  document.getElementById("policy").textContent =
    status.region + " · policy " + status.policy.sha256.slice(0, 12);
  document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();

  fill("routes", status.routes.map((r) => {
    const s = windowStats(r.name);
    const canary = r.canary
      ? `${r.canary.backend} ${r.canary.weight ?? "?"}% · ${r.canary.phase ?? ""}` +
        ` · step ${r.canary.step ?? "?"}`
      : "";
    const last = r.canary && r.canary.last_verdict;
    const verdict = last
      ? el("div", { class: "verdict", "data-verdict": last.verdict },
          pill(last.verdict, last.verdict === "pass" ? "ok" : last.verdict === "fail" ? "down" : "warn"),
          ` ${clock(last.time)} · ${last.reason}`)
      : "";
    return el("tr", { "data-route": r.name },
      el("td", {}, r.name),
      el("td", {}, r.split.map((x) => `${x.backend} ${x.weight}%`).join(", ")),
      el("td", { class: "canary" }, canary, verdict),
      el("td", {}, s ? s.rate.toFixed(2) : "–"),
      el("td", {}, s ? (100 * s.errors).toFixed(1) + "%" : "–"),
      el("td", {}, s && s.p99 !== null ? (s.p99 === Infinity ? "> 30 s" : "≤ " + s.p99 * 1000 + " ms") : "–"),
      el("td", {}, r.fallback.join(" → ")));
  }));

  const rows = [];
  for (const b of status.backends) {
    for (const e of b.endpoints) {
      const [state, kind] = endpointState(e);
      rows.push(el("tr", { "data-endpoint": e.url, "data-state": state },
        el("td", {}, b.name),
        el("td", {}, e.url),
        el("td", {}, e.region),
        el("td", {}, pill(state, kind)),
        el("td", {}, e.health),
        el("td", {}, e.breaker + (e.ejected ? " · ejected" : "")),
        el("td", {}, e.in_flight),
        el("td", {}, `${e.p50_ms ?? "–"} / ${e.p99_ms ?? "–"}`)));
    }
  }
  fill("endpoints", rows);

  const slos = slo && Array.isArray(slo.slos) ? slo.slos : [];
  document.getElementById("slo-section").hidden = slos.length === 0;
  const burn = (s, w) => fmt((s.windows || []).find((x) => x.window === w)?.burn_rate);
  fill("slos", slos.map((s) => el("tr", {},
    el("td", {}, s.name),
    el("td", {}, (100 * s.objective).toFixed(3) + "%"),
    el("td", {}, (100 * s.budget_remaining).toFixed(1) + "%"),
    el("td", {}, `${burn(s, "1h")} / ${burn(s, "5m")}`),
    el("td", {}, s.fast_burn ? pill("burning", "down") : pill("no", "ok")))));

  const changes = status.recent_changes || [];
  document.getElementById("changes").replaceChildren(...changes.slice().reverse().map((c) =>
    el("li", { "data-kind": c.kind || "", "data-endpoint": c.endpoint || "", "data-state": c.state || "" },
      `${clock(c.time)} · ${c.what}`)));
}

function clock(seconds) {
  return typeof seconds === "number" ? new Date(seconds * 1000).toLocaleTimeString() : "?";
}

function fmt(x) {
  return typeof x === "number" ? x.toFixed(2) : "–";
}

async function tick() {
  const error = document.getElementById("error");
  try {
    const [status, metrics, slo] = await Promise.all([
      get("/admin/status", true),
      get("/metrics", false),
      get("/admin/slo", true).catch(() => null),
    ]);
    history.push({ t: Date.now(), routes: parseMetrics(metrics) });
    while (history.length > 2 && history[history.length - 1].t - history[0].t > WINDOW_MS) history.shift();
    render(status, slo);
    error.hidden = true;
  } catch (e) {
    error.textContent = String(e.message || e);
    error.hidden = false;
  }
}

document.getElementById("save-token").addEventListener("click", () => {
  token = document.getElementById("token").value.trim();
  sessionStorage.setItem("tailguard-admin-token", token);
  document.getElementById("auth").hidden = true;
  tick();
});

tick();
setInterval(tick, POLL_MS);
