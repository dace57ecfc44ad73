// The operator view: this node's counters from GET /metrics and the
// cluster's nodes from GET /v1/discovery, polled every second and drawn as
// small charts. The operator's admin token (`hanmadi admin-token`) is
// checked with GET /v1/admin/token before anything is shown, stays in
// memory (this tab only) and goes with every request as a bearer token.

const POLL_MS = 1000;
/** Points kept per chart: one minute at one a second. */
const HISTORY = 60;
const TRANSPORTS = ["tcp", "tls", "ws", "wss"];
const COLOURS = {
  tcp: "#1d4ed8", tls: "#7c3aed", ws: "#067647", wss: "#b45309",
  rate: "#1d4ed8", latency: "#b42318", memory: "#7c3aed", cpu: "#067647",
};

const $ = (id) => document.getElementById(id);

let token = null;
let timer = null;
let previous = null;
const series = { tcp: [], tls: [], ws: [], wss: [], rate: [], latency: [], memory: [], cpu: [] };

/** Samples of a Prometheus / OpenMetrics text: name{labels} -> value. */
export function parseMetrics(text) {
  const samples = new Map();
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][\w:]*(?:\{[^}]*\})?)\s+(\S+)/.exec(line);
    if (m) samples.set(m[1], Number(m[2]));
  }
  return samples;
}

async function get(path) {
  const response = await fetch(path, {
    headers: { authorization: `Bearer ${token}` },
    cache: "no-store",
  });
  if (response.status === 401 || response.status === 403) {
    throw Object.assign(new Error("The node refused this admin token."), { refused: true });
  }
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  return response;
}

function push(name, value) {
  const s = series[name];
  s.push(value);
  if (s.length > HISTORY) s.shift();
}

async function poll() {
  try {
    const [metricsText, discovery] = await Promise.all([
      get("/metrics").then((r) => r.text()),
      get("/v1/discovery").then((r) => r.json()),
    ]);
    const now = performance.now();
    const m = parseMetrics(metricsText);
    let total = 0;
    for (const t of TRANSPORTS) {
      const v = m.get(`hanmadi_connections{transport="${t}"}`) || 0;
      total += v;
      push(t, v);
    }
    const sample = {
      at: now,
      messages: m.get("hanmadi_commit_batch_messages_sum") || 0,
      commitSeconds: m.get("hanmadi_commit_seconds_sum") || 0,
      commits: m.get("hanmadi_commit_seconds_count") || 0,
      cpuSeconds: m.get("hanmadi_process_cpu_seconds"),
    };
    const rss = m.get("hanmadi_process_resident_memory_bytes");
    if (rss !== undefined) {
      push("memory", rss / (1024 * 1024));
      $("memory-now").textContent = `${(rss / (1024 * 1024)).toFixed(1)} MiB`;
    }
    if (previous) {
      const seconds = Math.max((sample.at - previous.at) / 1000, 0.001);
      const rate = Math.max(sample.messages - previous.messages, 0) / seconds;
      const commits = sample.commits - previous.commits;
      const latencyMs = commits > 0 ? ((sample.commitSeconds - previous.commitSeconds) / commits) * 1000 : 0;
      push("rate", rate);
      push("latency", latencyMs);
      $("rate-now").textContent = `${rate.toFixed(rate < 10 ? 1 : 0)} /s`;
      $("latency-now").textContent = commits > 0 ? `${latencyMs.toFixed(2)} ms` : "idle";
      if (sample.cpuSeconds !== undefined && previous.cpuSeconds !== undefined) {
        const cpu = (Math.max(sample.cpuSeconds - previous.cpuSeconds, 0) / seconds) * 100;
        push("cpu", cpu);
        $("cpu-now").textContent = `${cpu.toFixed(0)} % CPU`;
      }
    }
    previous = sample;
    $("connections-total").textContent = String(total);
    drawNodes(discovery.nodes || []);
    drawCharts();
    setStatus("live", "Live");
  } catch (error) {
    if (error.refused) {
      forget(error.message);
      return;
    }
    setStatus("reconnecting", "Node unreachable, retrying…");
  }
  timer = setTimeout(poll, POLL_MS);
}

function setStatus(state, text) {
  const el = $("admin-status");
  el.dataset.state = state;
  el.textContent = text;
}

const SVG = "http://www.w3.org/2000/svg";

function line(values, max, colour) {
  const path = document.createElementNS(SVG, "polyline");
  // Fills from the left, then scrolls once HISTORY points are drawn.
  const step = 300 / (HISTORY - 1);
  const points = values.map((v, i) => `${(i * step).toFixed(1)},${(86 - (v / max) * 80).toFixed(1)}`);
  path.setAttribute("points", points.join(" "));
  path.setAttribute("fill", "none");
  path.setAttribute("stroke", colour);
  path.setAttribute("stroke-width", "2");
  path.setAttribute("vector-effect", "non-scaling-stroke");
  return path;
}

function chart(svg, names) {
  const max = Math.max(1, ...names.flatMap((n) => series[n]));
  const grid = [10, 48, 86].map((y) => {
    const g = document.createElementNS(SVG, "line");
    g.setAttribute("x1", "0");
    g.setAttribute("x2", "300");
    g.setAttribute("y1", String(y));
    g.setAttribute("y2", String(y));
    g.setAttribute("class", "grid");
    g.setAttribute("vector-effect", "non-scaling-stroke");
    return g;
  });
  svg.replaceChildren(...grid, ...names.map((n) => line(series[n], max, COLOURS[n])));
}

function drawCharts() {
  chart($("connections-chart"), TRANSPORTS);
  chart($("rate-chart"), ["rate"]);
  chart($("latency-chart"), ["latency"]);
  chart($("process-chart"), ["memory"]);
  const legend = TRANSPORTS.map((t) => {
    const span = document.createElement("span");
    span.style.setProperty("--swatch", COLOURS[t]);
    span.dataset.transport = t;
    span.textContent = `${t} ${series[t].at(-1) ?? 0}`;
    return span;
  });
  $("connections-legend").replaceChildren(...legend);
  $("dashboard").dataset.samples = String(series.rate.length);
}

/** Whether a discovery entry is the node serving this page. */
function isThisNode(node) {
  const port = location.port || (location.protocol === "https:" ? "443" : "80");
  const endpoint = location.protocol === "https:" ? node.endpoints.wss : node.endpoints.ws;
  return Boolean(endpoint) && new URL(endpoint).port === port;
}

function drawNodes(nodes) {
  const rows = nodes.map((n) => {
    const tr = document.createElement("tr");
    if (isThisNode(n)) tr.className = "this-node";
    const endpoints = Object.entries(n.endpoints || {}).map(([k, v]) => `${k} ${v}`).join(" · ");
    const cells = [
      `${n.node_id}${isThisNode(n) ? " (this node)" : ""}`,
      n.hostname,
      n.region,
      `${n.connections} / ${n.max_connections}`,
      endpoints,
    ];
    for (const text of cells) {
      const td = document.createElement("td");
      td.textContent = String(text);
      tr.append(td);
    }
    return tr;
  });
  $("nodes").replaceChildren(...rows);
}

async function start(event) {
  event.preventDefault();
  const value = $("admin-token").value.trim();
  if (!value) {
    $("admin-error").textContent = "Paste the admin token.";
    return;
  }
  token = value;
  try {
    await get("/v1/admin/token");
  } catch (error) {
    token = null;
    $("admin-error").textContent = error.refused
      ? "This is not the node's admin token (see `hanmadi admin-token`)."
      : "The node cannot be reached.";
    return;
  }
  $("admin-token").value = "";
  $("admin-error").textContent = "";
  $("admin-form").hidden = true;
  $("dashboard").hidden = false;
  $("admin-close").focus();
  poll();
}

function forget(message = "") {
  clearTimeout(timer);
  token = null;
  previous = null;
  for (const s of Object.values(series)) s.length = 0;
  $("dashboard").hidden = true;
  $("admin-form").hidden = false;
  $("admin-error").textContent = message;
  $("admin-token").focus();
}

$("admin-form").addEventListener("submit", start);
$("admin-close").addEventListener("click", () => forget());
$("admin-token").focus();
