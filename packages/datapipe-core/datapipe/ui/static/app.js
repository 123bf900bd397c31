// Datapipe web view: a single page with hash routes, drawing only from the JSON API under /api/.
//   #/              graph of tables and steps, steps coloured by state
//   #/step/NAME     counts, last run, last errors with tracebacks, actions
//   #/table/NAME    rows with metadata, paginated and filtered on the server
//   #/tables, #/runs
// Every value from the server is put in the page as text (never as HTML).
"use strict";

const state = { readOnly: true, graph: null, runSource: null };

// ------------------------------------------------------------------ helpers

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

async function api(path, options) {
  const response = await fetch(path, options);
  let body = null;
  try { body = await response.json(); } catch (e) { body = { error: response.statusText }; }
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function post(path, body) {
  return api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body || {}) });
}

function showMessage(text) {
  const box = document.getElementById("message");
  box.textContent = text;
  box.hidden = !text;
}

function fmtTime(ts) {
  if (ts === null || ts === undefined) return "–";
  return new Date(ts * 1000).toLocaleString();
}

function fmtCount(value) {
  return value === null || value === undefined ? "–" : Number(value).toLocaleString();
}

function stateBadge(s) {
  return el("span", { class: `badge state-${s}`, "data-state": s }, s.replace(/_/g, " "));
}

function action(label, onclick, cls = "action", id = null) {
  return state.readOnly ? null : el("button", { class: cls, onclick, id }, label);
}

// ------------------------------------------------------------------ graph

function layout(graph) {
  const incoming = new Map(graph.nodes.map((n) => [n.id, []]));
  for (const e of graph.edges) incoming.get(e.to).push(e.from);
  const layer = new Map();
  const depth = (id, seen = new Set()) => {
    if (layer.has(id)) return layer.get(id);
    if (seen.has(id)) return 0;
    seen.add(id);
    const d = Math.max(-1, ...incoming.get(id).map((p) => depth(p, seen))) + 1;
    layer.set(id, d);
    return d;
  };
  graph.nodes.forEach((n) => depth(n.id));
  const columns = [];
  for (const n of graph.nodes) (columns[layer.get(n.id)] ||= []).push(n);
  const pos = new Map();
  const W = 220, H = 40, GAPX = 70, GAPY = 26;
  columns.forEach((col, i) => col.forEach((n, j) => pos.set(n.id, { x: 20 + i * (W + GAPX), y: 20 + j * (H + GAPY), w: W, h: H })));
  const width = 40 + columns.length * (W + GAPX) - GAPX;
  const height = 40 + Math.max(...columns.map((c) => c.length)) * (H + GAPY) - GAPY;
  return { pos, width, height };
}

function drawGraph(graph, statuses) {
  const { pos, width, height } = layout(graph);
  const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "pipeline graph" });
  for (const e of graph.edges) {
    const a = pos.get(e.from), b = pos.get(e.to);
    const x1 = a.x + a.w, y1 = a.y + a.h / 2, x2 = b.x, y2 = b.y + b.h / 2, mx = (x1 + x2) / 2;
    root.append(svg("path", { class: "edge", d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`, "marker-end": "url(#arrow)" }));
  }
  const defs = svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto" },
    svg("path", { d: "M0,0 L10,5 L0,10 z", fill: "#78909c" })));
  root.prepend(defs);
  for (const n of graph.nodes) {
    const p = pos.get(n.id);
    const st = n.kind === "step" ? (statuses[n.name] ? statuses[n.name].state : "unknown") : null;
    const cls = n.kind === "step" ? `node step state-${st}` : "node table";
    const label = n.name.length > 30 ? n.name.slice(0, 29) + "…" : n.name;
    const sub = n.kind === "step" ? `${n.step_kind} · ${st.replace(/_/g, " ")}` : "table";
    const g = svg("g", { class: cls, "data-node": n.id, "data-state": st || "", transform: `translate(${p.x},${p.y})`, tabindex: 0 },
      svg("title", {}, n.name),
      svg("rect", { width: p.w, height: p.h, rx: n.kind === "table" ? 14 : 3 }),
      svg("text", { x: 10, y: 16 }, label),
      svg("text", { x: 10, y: 31, fill: "#546e7a" }, sub));
    g.addEventListener("click", () => { location.hash = `#/${n.kind}/${encodeURIComponent(n.name)}`; });
    root.append(g);
  }
  return root;
}

async function showGraph(main) {
  // The graph needs no query: draw it at once, then colour it when the counts arrive.
  const stepsRequest = api("/api/steps");
  const pipeline = await api("/api/pipeline");
  const legend = el("div", { class: "legend" }, ["up_to_date", "pending", "failed", "running"].map(stateBadge),
    el("span", { class: "muted" }, "(grey: a step without per-key state, e.g. a generator)"));
  const graphBox = el("div", { id: "graph" }, drawGraph(pipeline.graph, {}));
  const stepsBox = el("div", {}, el("p", { class: "muted" }, "Counting keys…"));
  main.replaceChildren(el("h1", {}, "Pipeline"), legend, graphBox, el("h2", {}, "Steps"), stepsBox);
  const steps = await stepsRequest;
  graphBox.replaceChildren(drawGraph(pipeline.graph, Object.fromEntries(steps.steps.map((s) => [s.name, s]))));
  stepsBox.replaceChildren(stepsTable(steps.steps));
}

function stepsTable(steps) {
  return el("table", { class: "grid", id: "steps-table" },
    el("tr", {}, ["step", "kind", "state", "processed", "pending", "failed", "last run"].map((h) => el("th", {}, h))),
    steps.map((s) => el("tr", { "data-step": s.name },
      el("td", {}, el("a", { href: `#/step/${encodeURIComponent(s.name)}` }, s.name)),
      el("td", {}, s.kind), el("td", {}, stateBadge(s.state)),
      el("td", { class: "num" }, fmtCount(s.processed)), el("td", { class: "num" }, fmtCount(s.pending)),
      el("td", { class: "num" }, fmtCount(s.failed)),
      el("td", {}, s.last_run ? `${fmtTime(s.last_run.finished)} (${s.last_run.seconds}s)` : "–"))));
}

// ------------------------------------------------------------------ step page

async function showStep(main, name) {
  const s = await api(`/api/steps/${encodeURIComponent(name)}`);
  const counts = el("dl", { class: "counts" },
    [["processed", s.processed], ["pending", s.pending], ["failed", s.failed]].map(([k, v]) =>
      el("div", { "data-count": k }, el("dt", {}, k), el("dd", {}, fmtCount(v)))),
    el("div", {}, el("dt", {}, "state"), el("dd", {}, stateBadge(s.state))));
  const last = s.last_run;
  const lastRun = last
    ? el("p", { id: "last-run" }, `Last run (from this server): ${fmtTime(last.finished)}, ${last.seconds}s, `
        + `${last.rows} keys processed, ${last.changed} rows changed, ${last.deleted} deleted, ${last.failed} failed batch(es).`)
    : el("p", { id: "last-run", class: "muted" }, "No run of this step started from this server yet.");
  const actions = el("div", { class: "actions" },
    action("Run step", () => startRun(`/api/steps/${encodeURIComponent(name)}/run`), "action", "run-step"),
    s.has_key_state && s.failed ? action("Run failed keys", () => startRun(`/api/steps/${encodeURIComponent(name)}/run-failed`), "action", "run-failed") : null,
    s.has_key_state ? action("Reset…", () => resetStep(name), "danger", "reset-step") : null);
  const errors = s.errors.length
    ? s.errors.map((e, i) => el("div", { class: "error-item" },
        el("div", { class: "error-text" }, el("strong", {}, e.error)),
        el("div", {}, `${e.keys.length} key(s), last at ${fmtTime(e.at)}: `,
          e.keys.map((k) => el("code", { class: "failed-key" }, JSON.stringify(k))).flatMap((c, j) => (j ? [" ", c] : [c]))),
        e.traceback ? el("details", { open: i === 0 }, el("summary", {}, "traceback"), el("pre", { class: "traceback" }, e.traceback)) : null))
    : [el("p", { class: "muted" }, "No failed keys.")];
  main.replaceChildren(
    el("h1", {}, `Step ${s.name} `, el("span", { class: "muted" }, `(${s.kind})`)),
    el("p", {}, "inputs: ", tableLinks(s.inputs), " → outputs: ", tableLinks(s.outputs)),
    counts, lastRun, actions,
    el("h2", {}, s.failed > s.errors.reduce((n, e) => n + e.keys.length, 0) ? "Last errors (latest failed keys)" : "Errors"), el("div", { id: "errors" }, errors));
}

function tableLinks(names) {
  if (!names.length) return "–";
  return names.flatMap((n, i) => [i ? ", " : "", el("a", { href: `#/table/${encodeURIComponent(n)}` }, n)]);
}

async function resetStep(name) {
  if (!confirm(`Reset step ${name}? Its next run processes every key again.`)) return;
  try {
    await post(`/api/steps/${encodeURIComponent(name)}/reset`, { confirm: name });
    showMessage("");
    route();
  } catch (e) { showMessage(e.message); }
}

// ------------------------------------------------------------------ tables

async function showTables(main) {
  const data = await api("/api/tables");
  main.replaceChildren(el("h1", {}, "Tables"), el("table", { class: "grid" },
    el("tr", {}, ["table", "store", "live rows"].map((h) => el("th", {}, h))),
    data.tables.map((t) => el("tr", {},
      el("td", {}, el("a", { href: `#/table/${encodeURIComponent(t.name)}` }, t.name)),
      el("td", {}, t.store), el("td", { class: "num" }, fmtRows(t.rows))))));
}

function fmtRows(rows) {
  return rows ? `${rows.exact ? "" : "≥ "}${fmtCount(rows.count)}` : "–";
}

function tableParams() {
  const q = location.hash.split("?")[1] || "";
  return new URLSearchParams(q);
}

async function showTable(main, name) {
  const params = tableParams();
  const page = Number(params.get("page") || 1);
  const query = new URLSearchParams({ page, page_size: params.get("page_size") || 50,
    sort: params.get("sort") || "key", order: params.get("order") || "asc", deleted: params.get("deleted") || "false" });
  for (const f of params.getAll("filter")) query.append("filter", f);
  const [info, rows] = await Promise.all([
    api(`/api/tables/${encodeURIComponent(name)}`),
    api(`/api/tables/${encodeURIComponent(name)}/rows?${query}`).catch((e) => ({ error: e.message })),
  ]);
  const go = (changes) => {
    const next = new URLSearchParams(params);
    for (const [k, v] of Object.entries(changes)) {
      next.delete(k);
      for (const item of [].concat(v)) if (item !== "" && item !== null) next.append(k, item);
    }
    location.hash = `#/table/${encodeURIComponent(name)}?${next}`;
  };
  const filterInput = el("input", { type: "text", id: "filter", placeholder: `e.g. ${info.filterable[0]}=value`, value: params.getAll("filter").join(", ") });
  const apply = () => go({ filter: filterInput.value.split(",").map((x) => x.trim()).filter(Boolean), page: 1 });
  filterInput.addEventListener("keydown", (e) => { if (e.key === "Enter") apply(); });
  const sort = el("select", { id: "sort", onchange: (e) => go({ sort: e.target.value.split(":")[0], order: e.target.value.split(":")[1], page: 1 }) },
    [["key:asc", "key ↑"], ["key:desc", "key ↓"], ["update_ts:desc", "last changed first"], ["update_ts:asc", "last changed last"]]
      .map(([v, label]) => el("option", { value: v, selected: v === `${query.get("sort")}:${query.get("order")}` }, label)));
  const deleted = el("input", { type: "checkbox", id: "deleted", checked: query.get("deleted") === "true", onchange: (e) => go({ deleted: e.target.checked ? "true" : "", page: 1 }) });
  const filters = el("div", { class: "filters" },
    el("label", {}, "filter ", filterInput), el("button", { id: "apply-filter", onclick: apply }, "Apply"),
    el("label", {}, "sort ", sort), el("label", {}, deleted, " show deleted"),
    el("span", { class: "muted" }, `filterable: ${info.filterable.join(", ")}`));
  let body;
  if (rows.error) {
    body = el("p", { id: "rows-error", class: "error-item" }, rows.error);
  } else {
    const total = rows.total ? `of ${fmtRows(rows.total)} ` : "";
    const first = (rows.page - 1) * rows.page_size + 1;
    const pager = el("div", { class: "pager" },
      el("button", { id: "prev", disabled: page <= 1, onclick: () => go({ page: page - 1 }) }, "← Previous"),
      el("span", { id: "page-info" }, rows.rows.length ? `rows ${fmtCount(first)}–${fmtCount(first + rows.rows.length - 1)} ${total}(page ${rows.page})` : "no rows"),
      el("button", { id: "next", disabled: !rows.has_next, onclick: () => go({ page: page + 1 }) }, "Next →"));
    body = [pager, el("table", { class: "grid", id: "rows" },
      el("tr", {}, rows.columns.map((c) => el("th", {}, c))),
      rows.rows.map((r) => el("tr", { class: r.deleted ? "deleted" : "" }, rows.columns.map((c) => el("td", {}, cell(c, r[c]))))))];
  }
  main.replaceChildren(
    el("h1", {}, `Table ${info.name}`),
    el("p", { class: "muted" }, info.store, ` · keys: ${info.primary_keys.join(", ")} · live rows: ${fmtRows(info.rows)}`),
    el("p", {}, "written by: ", stepLinks(info.producers), " · read by: ", stepLinks(info.consumers)),
    filters, ...[].concat(body));
}

function stepLinks(names) {
  if (!names.length) return "–";
  return names.flatMap((n, i) => [i ? ", " : "", el("a", { href: `#/step/${encodeURIComponent(n)}` }, n)]);
}

function cell(column, value) {
  if (value === null || value === undefined) return "";
  if (column === "update_ts" || column === "process_ts") return fmtTime(value);
  if (typeof value === "object" && value.image) return el("img", { class: "thumb", src: value.image, alt: column });
  if (typeof value === "object" && "bytes" in value) return `<${value.bytes} bytes>`;
  return String(value);
}

// ------------------------------------------------------------------ runs

async function showRuns(main) {
  const data = await api("/api/runs");
  main.replaceChildren(el("h1", {}, "Runs started from this server"),
    data.runs.length ? el("table", { class: "grid", id: "runs" },
      el("tr", {}, ["run", "kind", "steps", "started", "finished", "status"].map((h) => el("th", {}, h))),
      data.runs.map((r) => el("tr", {}, el("td", {}, r.id), el("td", {}, r.kind), el("td", {}, r.steps.join(", ")),
        el("td", {}, fmtTime(r.started)), el("td", {}, fmtTime(r.finished)), el("td", {}, r.status, r.error ? ` – ${r.error}` : ""))))
      : el("p", { class: "muted" }, "None yet."));
}

async function startRun(path, body) {
  try {
    const { run } = await post(path, body);
    showMessage("");
    followRun(run);
  } catch (e) { showMessage(e.message); }
}

function followRun(run) {
  if (state.runSource) state.runSource.close();
  const panel = document.getElementById("run-panel");
  panel.hidden = false;
  document.getElementById("run-title").textContent = `Run ${run.id}: running`;
  document.getElementById("run-summary").replaceChildren();
  const rowsBox = document.getElementById("run-steps");
  rowsBox.replaceChildren();
  const rows = {};
  const row = (step) => rows[step] ||= rowsBox.appendChild(el("div", { class: "progress", "data-run-step": step },
    el("span", {}, step), el("div", { class: "bar" }, el("div", {})), el("span", { class: "progress-text" }, "waiting")));
  run.steps.forEach(row);
  document.querySelectorAll("button.action, button.danger").forEach((b) => { b.disabled = true; });
  const source = new EventSource(`/api/runs/${run.id}/events`);
  state.runSource = source;
  const update = (e) => {
    const r = row(e.step);
    const total = e.total_batches || e.total || 0;
    const done = e.batches ?? e.completed ?? 0;
    r.querySelector(".bar > div").style.width = total ? `${Math.round((100 * done) / total)}%` : (e.type === "step_end" ? "100%" : "0");
    r.querySelector(".progress-text").textContent = `${done}/${total} batches · ${e.rows ?? 0} keys · ${e.failed ?? 0} failed`;
    if (e.type === "step_end") r.classList.add(e.failed ? "failed" : "done");
  };
  source.addEventListener("step_start", (m) => {
    const e = JSON.parse(m.data);
    row(e.step).querySelector(".progress-text").textContent = `0/${e.total} batches`;
    route().then(() => document.querySelectorAll("button.action, button.danger").forEach((b) => { b.disabled = true; }));
  });
  source.addEventListener("step_progress", (m) => update(JSON.parse(m.data)));
  source.addEventListener("step_end", (m) => update(JSON.parse(m.data)));
  source.addEventListener("run_end", (m) => {
    const e = JSON.parse(m.data);
    source.close();
    state.runSource = null;
    document.getElementById("run-title").textContent = `Run ${run.id}: ${e.status}${e.error ? " – " + e.error : ""}`;
    document.getElementById("run-summary").replaceChildren(el("table", { class: "grid", id: "run-summary-table" },
      el("tr", {}, ["step", "processed", "changed", "deleted", "failed", "seconds"].map((h) => el("th", {}, h))),
      e.summary.map((s) => el("tr", { "data-step": s.step }, el("td", {}, s.step), el("td", { class: "num" }, s.rows),
        el("td", { class: "num" }, s.changed), el("td", { class: "num" }, s.deleted), el("td", { class: "num" }, s.failed),
        el("td", { class: "num" }, s.seconds)))));
    document.querySelectorAll("button.action, button.danger").forEach((b) => { b.disabled = false; });
    route();
  });
}

// ------------------------------------------------------------------ routing

async function route() {
  const main = document.getElementById("main");
  const [path] = location.hash.replace(/^#/, "").split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  try {
    if (parts[0] === "step" && parts[1]) await showStep(main, parts[1]);
    else if (parts[0] === "table" && parts[1]) await showTable(main, parts[1]);
    else if (parts[0] === "tables") await showTables(main);
    else if (parts[0] === "runs") await showRuns(main);
    else await showGraph(main);
  } catch (e) {
    main.replaceChildren(el("p", { class: "error-item", id: "page-error" }, e.message));
  }
  main.dataset.loaded = location.hash || "#/";
  main.dataset.renders = String(Number(main.dataset.renders || 0) + 1);
}

async function start() {
  const pipeline = await api("/api/pipeline");
  state.readOnly = pipeline.read_only;
  document.getElementById("read-only-badge").hidden = !state.readOnly;
  const runAll = document.getElementById("run-all");
  runAll.hidden = state.readOnly;
  runAll.addEventListener("click", () => startRun("/api/runs", {}));
  if (pipeline.active_run) followRun(pipeline.active_run);
  window.addEventListener("hashchange", route);
  await route();
}

start().catch((e) => showMessage(e.message));
