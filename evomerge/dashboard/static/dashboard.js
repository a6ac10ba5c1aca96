// evomerge dashboard: the page script. Every stored string reaches the page through textContent
// (el() below) or, inside Plotly, escaped by plain(); nothing is ever parsed as markup.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const POLL_MS = 2000;
const SAMPLE_MAX = 4000; // points drawn per scatter (and a large run's first-paint sample); lines use every point

function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  return e;
}

// Plotly reads a few HTML-like tags in titles, labels and hover text: escape stored strings.
const plain = (s) => String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
const fmt = (x, d = 4) => (x === null || x === undefined ? "-" : Number(x).toFixed(d));
const localTime = (t) => (t ? new Date(t * 1000).toLocaleString() : "-");
function duration(s) {
  if (s === null || s === undefined) return "-";
  s = Math.round(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  return h ? `${h}:${String(m).padStart(2, "0")}:${String(r).padStart(2, "0")}` : `${m}:${String(r).padStart(2, "0")}`;
}
const runUrl = (run) => `/runs/${encodeURIComponent(run)}`;
const apiUrl = (run, rest = "") => `/api/runs/${encodeURIComponent(run)}${rest}`;
const candUrl = (run, i) => `${runUrl(run)}/candidates/${Number(i)}`;

async function getJSON(url) {
  const r = await fetch(url, { headers: { accept: "application/json" }, credentials: "same-origin" });
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || `${r.status}`);
  return body;
}

function showError(where, err) {
  where.replaceChildren(el("p", { class: "err", text: String(err.message || err) }));
}

function crumbs(...parts) {
  const c = $("#crumbs");
  c.replaceChildren();
  for (const [text, href] of parts) {
    c.append(" / ");
    c.append(href ? el("a", { href, text }) : el("span", { text }));
  }
}

function table(headers, rows, attrs = {}) {
  const head = headers.some((h) => h.label) ? el("thead", {}, el("tr", {}, ...headers.map((h) => el("th", { class: h.num ? "num" : null, text: h.label })))) : null;
  return el("table", attrs, head, el("tbody", {}, ...rows));
}

const plotConfig = { displaylogo: false, responsive: true };

// plotly.js (4.6 MB of script) is fetched only when the first plot is drawn, after the stats and
// the table are on screen: its parsing would otherwise hold the page's only thread before they paint
let plotlyLoading = null;
function plotlyReady() {
  if (!plotlyLoading) {
    plotlyLoading = new Promise((resolve, reject) => {
      const s = document.createElement("script");
      s.src = document.body.dataset.plotly;
      s.onload = resolve;
      s.onerror = () => reject(new Error("plotly.js did not load"));
      document.head.append(s);
    });
  }
  return plotlyLoading;
}

async function draw(div, traces, layout, onClick) {
  await plotlyReady();
  await Plotly.react(div, traces, layout, plotConfig);
  if (onClick && !div.dataset.click) {
    div.dataset.click = "1";
    div.on("plotly_click", (ev) => {
      const pt = ev.points && ev.points[0];
      if (pt && pt.customdata !== undefined && pt.customdata !== null) onClick(pt.customdata);
    });
  }
}
const layoutBase = (extra) => Object.assign({ margin: { l: 50, r: 10, t: 10, b: 40 }, hovermode: "closest" }, extra);

// ---------------------------------------------------------------- runs page
async function runsPage() {
  const main = $("#main");
  crumbs(["runs", null]);
  async function refresh() {
    try {
      const d = await getJSON("/api/runs");
      const rows = d.runs.map((r) => el("tr", { "data-run": r.id },
        el("td", {}, el("a", { href: runUrl(r.id), text: r.name })),
        el("td", { class: `status-${r.status}`, text: r.status }),
        el("td", { text: r.kind || "-" }), el("td", { text: r.strategy || "-" }), el("td", { text: r.engine || "-" }),
        el("td", {}, el("span", { class: "bar" }, el("i", { style: `width:${Math.min(100, 100 * r.done / Math.max(r.budget, 1))}%` })),
          ` ${r.done} / ${r.budget}`),
        el("td", { class: "num", text: r.failed }), el("td", { class: "num", text: r.cached }),
        el("td", { class: "num", text: fmt(r.best) }),
        el("td", { text: localTime(r.created_at) }), el("td", { text: localTime(r.updated_at) })));
      const headers = ["run", "status", "kind", "strategy", "engine", "progress", "failed", "cached", "best", "started", "updated"]
        .map((label) => ({ label, num: ["failed", "cached", "best"].includes(label) }));
      main.replaceChildren(el("h1", { text: "Runs" }), el("p", { class: "muted", text: `archive ${d.archive}` }),
        d.runs.length ? table(headers, rows, { id: "runs" }) : el("p", { text: "no runs yet" }));
      document.body.dataset.ready = "1";
    } catch (err) {
      showError(main, err);
    }
  }
  await refresh();
  setInterval(refresh, 5000);
}

// ---------------------------------------------------------------- run page
function sample(idx, keep) {
  // at most SAMPLE_MAX positions of idx, evenly spread, always including `keep` (a Set)
  if (idx.length <= SAMPLE_MAX) return idx;
  const stride = idx.length / SAMPLE_MAX, out = [];
  for (let i = 0; i < SAMPLE_MAX; i++) out.push(idx[Math.floor(i * stride)]);
  for (const k of keep) out.push(k);
  return Array.from(new Set(out)).sort((a, b) => a - b);
}

function bestSoFar(xs, ys, better) {
  // the running best as a step line, only where it changes
  const bx = [], by = [];
  let cur = null;
  for (let i = 0; i < xs.length; i++) {
    if (ys[i] === null) continue;
    if (cur === null || better(ys[i], cur)) {
      if (cur !== null) { bx.push(xs[i]); by.push(cur); }
      cur = ys[i]; bx.push(xs[i]); by.push(cur);
    }
  }
  if (xs.length && cur !== null) { bx.push(xs[xs.length - 1]); by.push(cur); }
  return [bx, by];
}

function paretoFront(ids, cols, signs) {
  // the non-dominated ids over the columns (each oriented by its sign so that larger is better)
  const v = ids.map((i) => cols.map((c, j) => signs[j] * c.get(i)));
  const order = ids.map((_, k) => k).sort((a, b) => {
    for (let j = 0; j < cols.length; j++) if (v[b][j] !== v[a][j]) return v[b][j] - v[a][j];
    return 0;
  });
  const front = [];
  for (const k of order) {
    const dominated = front.some((f) => v[f].every((x, j) => x >= v[k][j]) && v[f].some((x, j) => x > v[k][j]));
    if (!dominated && !front.some((f) => v[f].every((x, j) => x === v[k][j]))) front.push(k);
  }
  return front.map((k) => ids[k]);
}

class RunPage {
  constructor(run) {
    this.run = run;
    this.pts = new Map(); // index -> point
    this.cursor = 0;
    this.compare = new Set();
    this.tableState = { sort: "index", desc: false, status: "", fidelity: "", objective: "", low: "", high: "", offset: 0, limit: 50 };
  }

  async start() {
    const main = $("#main");
    try {
      this.info = await getJSON(apiUrl(this.run));
    } catch (err) {
      showError(main, err);
      return;
    }
    crumbs(["runs", "/"], [this.info.name, null]);
    document.title = `evomerge · ${this.info.name}`;
    this.objectives = this.info.objectives.map((o) => o.name);
    this.signs = this.info.objectives.map((o) => ((o.direction || "maximize") === "minimize" ? -1 : 1));
    this.layout(main);
    this.renderInfo();
    await this.renderTable();
    await new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0))); // painted
    document.body.dataset.paintMs = String(Math.round(performance.now())); // stats and table on screen
    // the plots start from a sample spread over the run (a large run's chunks follow in the background)
    try { this.merge(await getJSON(apiUrl(this.run, `/points?sample=${SAMPLE_MAX}`))); } catch (err) { /* the chunks bring them */ }
    await Promise.all([this.renderPlots(), this.renderPicture(), this.renderLineage(), this.initItems()]);
    document.body.dataset.readyMs = String(Math.round(performance.now())); // navigation start -> every plot drawn
    document.body.dataset.ready = "1";
    await this.poll();
    document.body.dataset.loadedMs = String(Math.round(performance.now())); // every finished candidate loaded
    document.body.dataset.loaded = "1";
    setInterval(() => this.refreshInfo(), 5000);
  }

  merge(d) {
    // columns -> points keyed by index (a chunk may repeat rows a sample or an earlier chunk sent)
    let added = 0;
    for (let k = 0; k < d.index.length; k++) {
      const p = { index: d.index[k], status: d.status[k], fitness: d.fitness[k], fidelity: d.fidelity[k], obj: {} };
      for (const n of this.objectives) p.obj[n] = d.objectives[n][k];
      const old = this.pts.get(p.index);
      if (!old || old.status !== p.status) added++;
      this.pts.set(p.index, p);
    }
    document.body.dataset.points = String(this.pts.size);
    return added;
  }

  renderPlots() {
    return Promise.all([this.renderHistory(), this.renderFront(), this.renderObjectives(), this.renderSkills()]);
  }

  layout(main) {
    const objOptions = (sel, withNone) => {
      if (withNone) sel.append(el("option", { value: "", text: "(2-D)" }));
      this.objectives.forEach((n) => sel.append(el("option", { value: n, text: n })));
      return sel;
    };
    this.frontX = objOptions(el("select", { id: "front-x", onchange: () => this.renderFront() }));
    this.frontY = objOptions(el("select", { id: "front-y", onchange: () => this.renderFront() }));
    this.frontZ = objOptions(el("select", { id: "front-z", onchange: () => this.renderFront() }), true);
    if (this.objectives.length > 1) this.frontY.value = this.objectives[1];
    this.topK = el("input", { id: "top-k", type: "number", min: "1", max: "100", value: "10", style: "width:5em",
      onchange: () => this.renderPicture() });
    this.itemA = el("input", { id: "item-a", type: "number", min: "0", style: "width:7em" });
    this.itemB = el("input", { id: "item-b", type: "number", min: "0", style: "width:7em" });
    const card = (title, id, ...extra) => el("section", { class: "card" }, el("h2", { text: title }), ...extra,
      el("div", { id, class: "plot" }));
    main.replaceChildren(
      el("h1", { id: "run-name", text: this.info.name }),
      el("div", { id: "stats", class: "stats" }),
      el("div", { class: "grid" },
        card("Fitness over evaluations", "history"),
        card("Pareto front", "front", el("div", { class: "controls" }, "x ", this.frontX, " y ", this.frontY, " z ", this.frontZ)),
        card("Objectives over evaluations", "objectives"),
        card("Per-skill comparison", "skills", el("p", { class: "muted", id: "skills-note",
          text: "the best candidate, the best per objective and the rows ticked in the table" })),
        el("section", { class: "card" }, el("h2", { text: "Recipe" }),
          el("div", { class: "controls" }, "top k ", this.topK, el("span", { id: "picture-note", class: "muted" })),
          el("div", { id: "heatmap-best", class: "plot" }), el("div", { id: "heatmap-mean", class: "plot" })),
        card("Lineage", "lineage"),
        el("section", { class: "card" }, el("h2", { text: "Item-level comparison" }),
          el("div", { class: "controls" }, "A ", this.itemA, " B ", this.itemB,
            el("button", { id: "items-go", text: "compare", onclick: () => this.renderItems() })),
          el("div", { id: "items-summary" }), el("div", { id: "items", class: "plot" })),
        el("section", { class: "card" }, el("h2", { text: "Failures" }), el("div", { id: "errors" }))),
      el("section", { class: "card", style: "margin-top:12px" }, el("h2", { text: "Candidates" }),
        this.tableControls(), el("div", { id: "table" })));
  }

  tableControls() {
    const st = this.tableState;
    const sel = (id, values, key) => {
      const s = el("select", { id, onchange: () => { st[key] = s.value; st.offset = 0; this.renderTable(); } });
      values.forEach(([v, t]) => s.append(el("option", { value: v, text: t })));
      return s;
    };
    const sorts = [["index", "index"], ["fitness", "fitness"], ["generation", "generation"], ["seconds", "seconds"],
      ...this.objectives.map((n) => [`objective:${n}`, n])];
    const statuses = [["", "any status"], ...["COMPLETE", "FAILED", "INVALID", "TIMEOUT", "RUNNING", "PENDING"].map((s) => [s, s])];
    const fids = [["", "any fidelity"], ["exact", "exact"], ["raced", "raced"], ["subset", "subset"]];
    const objs = [["", "no range"], ...this.objectives.map((n) => [n, n])];
    const num = (id, key, ph) => {
      const i = el("input", { id, type: "number", step: "any", placeholder: ph, style: "width:6em",
        onchange: () => { st[key] = i.value; st.offset = 0; this.renderTable(); } });
      return i;
    };
    return el("div", { class: "controls" }, "sort ", sel("t-sort", sorts, "sort"),
      el("label", {}, el("input", { id: "t-desc", type: "checkbox", onchange: (e) => { st.desc = e.target.checked; this.renderTable(); } }), " descending"),
      sel("t-status", statuses, "status"), sel("t-fidelity", fids, "fidelity"),
      sel("t-objective", objs, "objective"), num("t-low", "low", "min"), num("t-high", "high", "max"),
      el("button", { id: "t-prev", text: "‹ prev", onclick: () => { st.offset = Math.max(0, st.offset - st.limit); this.renderTable(); } }),
      el("button", { id: "t-next", text: "next ›", onclick: () => { st.offset += st.limit; this.renderTable(); } }),
      el("span", { id: "t-range", class: "muted" }));
  }

  async refreshInfo() {
    try {
      this.info = await getJSON(apiUrl(this.run));
      this.renderInfo();
    } catch (err) { /* keep the last figures; the next refresh retries */ }
  }

  renderInfo() {
    const d = this.info, c = d.counts || {};
    const stat = (label, value, id) => el("span", { id }, `${label} `, el("b", { text: String(value) }));
    $("#stats").replaceChildren(
      stat("status", d.status, "s-status"), stat("strategy", d.strategy || "-"), stat("engine", d.engine || "-"),
      stat("done", `${d.done} / ${d.budget}`, "s-done"), stat("best", fmt(d.best), "s-best"),
      stat("complete", c.COMPLETE || 0), stat("failed", c.FAILED || 0, "s-failed"), stat("invalid", c.INVALID || 0),
      stat("timeout", c.TIMEOUT || 0), stat("cached", d.cached), stat("running", c.RUNNING || 0),
      stat("rate", d.rate ? `${d.rate.toFixed(2)}/s` : "-", "s-rate"), stat("ETA", d.status === "running" ? duration(d.eta_s) : "-", "s-eta"),
      stat("fidelity", Object.entries(d.fidelity || {}).map(([k, v]) => `${k} ${v}`).join(", ") || "-"),
      stat("started", localTime(d.created_at)), stat("updated", localTime(d.updated_at), "s-updated"));
    const errs = d.errors || [];
    $("#errors").replaceChildren(errs.length ? table([{ label: "status" }, { label: "count", num: true }, { label: "first" }, { label: "error" }],
      errs.map((e) => el("tr", {}, el("td", { class: `status-${e.status}`, text: e.status }), el("td", { class: "num", text: e.count }),
        el("td", {}, el("a", { href: candUrl(this.run, e.first), text: `#${e.first}` })), el("td", { class: "err", text: e.error }))),
      { id: "errors-table" }) : el("p", { class: "muted", text: "no failed, invalid or timed-out candidates" }));
  }

  async poll() {
    // the chunks after the cursor until caught up, then again every POLL_MS
    let added = 0;
    for (;;) {
      let d;
      try { d = await getJSON(apiUrl(this.run, `/points?after=${this.cursor}`)); } catch (err) { break; }
      added += this.merge(d);
      const full = d.next > this.cursor && d.index.length >= 20000;
      this.cursor = d.next;
      if (added && full) await this.renderPlots(); // a large run's plots fill in chunk by chunk
      if (!full) break;
    }
    if (added) {
      await this.renderPlots();
      if (this.polled) { this.renderTable(); this.maybeRefreshRecipes(); }
    }
    this.polled = true;
    setTimeout(() => this.poll(), POLL_MS);
  }

  maybeRefreshRecipes() {
    // at most every 10 s, and once more after the last change (so the final best is the one drawn)
    const wait = this.lastRecipes ? 10000 - (Date.now() - this.lastRecipes) : 0;
    if (wait > 0) {
      if (!this.recipeTimer) this.recipeTimer = setTimeout(() => { this.recipeTimer = null; this.maybeRefreshRecipes(); }, wait);
      return;
    }
    this.lastRecipes = Date.now();
    this.renderPicture(); this.renderLineage();
  }

  complete() {
    return Array.from(this.pts.values()).filter((p) => p.status === "COMPLETE" && p.fitness !== null).sort((a, b) => a.index - b.index);
  }

  open(index) {
    location.href = candUrl(this.run, index);
  }

  renderHistory() {
    const pts = this.complete();
    const bestIdx = pts.length ? pts.reduce((a, b) => (b.fitness > a.fitness ? b : a)).index : null;
    const shown = new Set(sample(pts.map((p) => p.index), bestIdx === null ? [] : [bestIdx]));
    const byFid = {};
    for (const p of pts) if (shown.has(p.index)) (byFid[p.fidelity] = byFid[p.fidelity] || []).push(p);
    const traces = Object.entries(byFid).map(([f, ps]) => ({
      type: "scatter", mode: "markers", name: f, x: ps.map((p) => p.index), y: ps.map((p) => p.fitness),
      customdata: ps.map((p) => p.index), marker: { size: 5, symbol: f === "exact" ? "circle" : "circle-open" },
      hovertemplate: "#%{customdata}<br>fitness %{y:.4f}<extra></extra>" }));
    const exact = pts.filter((p) => p.fidelity === "exact");
    const [bx, by] = bestSoFar(exact.map((p) => p.index), exact.map((p) => p.fitness), (a, b) => a > b);
    traces.push({ type: "scatter", mode: "lines", name: "best so far", x: bx, y: by, line: { shape: "hv", color: "#111" } });
    const div = $("#history");
    return draw(div, traces, layoutBase({ xaxis: { title: { text: "candidate" } }, yaxis: { title: { text: "fitness" } } }), (i) => this.open(i));
  }

  renderFront() {
    const div = $("#front");
    const names = [this.frontX.value, this.frontY.value, this.frontZ.value].filter((n) => n);
    const uniq = Array.from(new Set(names));
    const pts = this.complete().filter((p) => uniq.every((n) => p.obj[n] !== null && p.obj[n] !== undefined));
    const cols = uniq.map((n) => new Map(pts.map((p) => [p.index, p.obj[n]])));
    const signs = uniq.map((n) => this.signs[this.objectives.indexOf(n)]);
    const front = new Set(pts.length ? paretoFront(pts.map((p) => p.index), cols, signs) : []);
    const shown = new Set(sample(pts.map((p) => p.index), front));
    const rest = pts.filter((p) => shown.has(p.index) && !front.has(p.index));
    const top = pts.filter((p) => front.has(p.index));
    div.dataset.front = JSON.stringify(Array.from(front).sort((a, b) => a - b));
    const three = uniq.length === 3;
    const tr = (ps, name, marker) => {
      const t = { type: three ? "scatter3d" : "scatter", mode: "markers", name, customdata: ps.map((p) => p.index), marker,
        x: ps.map((p) => p.obj[uniq[0]]), y: ps.map((p) => p.obj[uniq[uniq.length > 1 ? 1 : 0]]),
        hovertemplate: "#%{customdata}<br>%{x:.4f}, %{y:.4f}<extra></extra>" };
      if (three) t.z = ps.map((p) => p.obj[uniq[2]]);
      return t;
    };
    const traces = [tr(rest, "candidates", { size: 4, color: "#9ca3af" }), tr(top, "front", { size: 8, color: "#dc2626" })];
    const ax = (n) => ({ title: { text: plain(n) } });
    const layout = three ? layoutBase({ scene: { xaxis: ax(uniq[0]), yaxis: ax(uniq[1]), zaxis: ax(uniq[2]) } })
      : layoutBase({ xaxis: ax(uniq[0]), yaxis: ax(uniq[uniq.length > 1 ? 1 : 0]) });
    return draw(div, traces, layout, (i) => this.open(i));
  }

  renderObjectives() {
    const pts = this.complete();
    const shown = new Set(sample(pts.map((p) => p.index), []));
    const traces = [];
    this.objectives.forEach((n, j) => {
      const ps = pts.filter((p) => p.obj[n] !== null && p.obj[n] !== undefined);
      const vis = ps.filter((p) => shown.has(p.index));
      traces.push({ type: "scatter", mode: "markers", name: plain(n), legendgroup: n, x: vis.map((p) => p.index),
        y: vis.map((p) => p.obj[n]), customdata: vis.map((p) => p.index), marker: { size: 4, opacity: 0.5 },
        hovertemplate: "#%{customdata}<br>%{y:.4f}<extra></extra>" });
      const exact = ps.filter((p) => p.fidelity === "exact");
      const sign = this.signs[j];
      const [bx, by] = bestSoFar(exact.map((p) => p.index), exact.map((p) => p.obj[n]), (a, b) => sign * a > sign * b);
      traces.push({ type: "scatter", mode: "lines", name: `${plain(n)} best`, legendgroup: n, x: bx, y: by, line: { shape: "hv" } });
    });
    const div = $("#objectives");
    return draw(div, traces, layoutBase({ xaxis: { title: { text: "candidate" } } }), (i) => this.open(i));
  }

  skillCandidates() {
    const pts = this.complete().filter((p) => p.fidelity === "exact");
    const chosen = new Map();
    if (pts.length) {
      const best = pts.reduce((a, b) => (b.fitness > a.fitness ? b : a));
      chosen.set(best.index, `#${best.index} best`);
      this.objectives.forEach((n, j) => {
        const ps = pts.filter((p) => p.obj[n] !== null);
        if (!ps.length) return;
        const b = ps.reduce((a, c) => (this.signs[j] * c.obj[n] > this.signs[j] * a.obj[n] ? c : a));
        if (!chosen.has(b.index)) chosen.set(b.index, `#${b.index} best ${n}`);
      });
    }
    for (const i of this.compare) if (this.pts.has(i) && !chosen.has(i)) chosen.set(i, `#${i}`);
    return chosen;
  }

  renderSkills() {
    const chosen = this.skillCandidates();
    const short = (name) => String(name).replace(/\/+$/, "").split("/").pop();
    // the sources as they are (scored once per run), then the chosen candidates
    const sources = (this.info.sources || []).filter((x) => x.objectives);
    const traces = sources.map((x) => ({
      type: "bar", name: plain(`${short(x.name)} (${x.role})`), x: this.objectives.map(plain),
      y: this.objectives.map((n) => x.objectives[n]), marker: { pattern: { shape: "/" } },
      hovertemplate: `${plain(short(x.name))}: %{y:.4f}<extra></extra>` }));
    traces.push(...Array.from(chosen.entries()).map(([i, label]) => ({
      type: "bar", name: plain(label), x: this.objectives.map(plain), y: this.objectives.map((n) => this.pts.get(i).obj[n]),
      customdata: this.objectives.map(() => i), hovertemplate: "#%{customdata}: %{y:.4f}<extra></extra>" })));
    const div = $("#skills");
    div.dataset.candidates = JSON.stringify(Array.from(chosen.keys()));
    div.dataset.sources = String(sources.length);
    $("#skills-note").textContent = (sources.length ? "the sources as they are (hatched), " : "no source scores in this run; ")
      + "the best candidate, the best per objective and the rows ticked in the table";
    return draw(div, traces, layoutBase({ barmode: "group", margin: { l: 50, r: 10, t: 10, b: 60 } }), (i) => this.open(i));
  }

  async renderPicture() {
    const k = Math.max(1, Math.min(100, Number(this.topK.value) || 10));
    let d;
    try { d = await getJSON(apiUrl(this.run, `/picture?k=${k}`)); } catch (err) { showError($("#heatmap-best"), err); return; }
    const best = $("#heatmap-best"), mean = $("#heatmap-mean");
    best.dataset.best = d.candidates.length ? String(d.candidates[0].index) : "";
    $("#picture-note").textContent = d.candidates.length ? ` best #${d.candidates[0].index}; mean over the top ${d.count}` : " no complete candidate yet";
    if (d.kind === "ps") {
      const labels = d.labels.map(plain);
      const hm = (z, title) => [{ type: "heatmap", z, x: d.columns, y: labels, colorscale: "RdBu", reversescale: true,
        hovertemplate: "%{y} layer %{x}: %{z:.4f}<extra></extra>", colorbar: { title: { text: title } } }];
      const lay = (t) => layoutBase({ margin: { l: 170, r: 10, t: 30, b: 40 }, title: { text: t, font: { size: 13 } },
        xaxis: { title: { text: "layer (or gradient anchor)" }, dtick: 1 } });
      await Promise.all([draw(best, hm(d.best, "best"), lay(d.candidates.length ? `best #${d.candidates[0].index}` : "best")),
        draw(mean, hm(d.mean, "mean"), lay(`mean of the top ${d.count}`))]);
    } else {
      const slots = d.best.filter((s) => !s.identity), ident = d.best.filter((s) => s.identity);
      const models = Array.from(new Set(slots.map((s) => s.model)));
      const traces = models.map((m) => {
        const ss = slots.filter((s) => s.model === m);
        return { type: "scatter", mode: "markers", name: plain(m), x: ss.map((s) => s.slot), y: ss.map((s) => s.layer),
          customdata: ss.map((s) => s.scale), marker: { size: 12, symbol: "square" },
          hovertemplate: "slot %{x}: layer %{y}, scale %{customdata:.3f}<extra></extra>" };
      });
      traces.push({ type: "scatter", mode: "markers", name: "identity", x: ident.map((s) => s.slot), y: ident.map(() => -1),
        marker: { size: 12, symbol: "x" } });
      await draw(best, traces, layoutBase({ xaxis: { title: { text: "slot" } }, yaxis: { title: { text: "source layer" } } }));
      const z = d.share.map((s) => Math.max(0, ...Object.values(s)));
      await draw(mean, [{ type: "bar", x: d.share.map((_, i) => i), y: z, hovertemplate: "slot %{x}: %{y:.2f}<extra></extra>" }],
        layoutBase({ xaxis: { title: { text: "slot" } }, yaxis: { title: { text: `agreement of the top ${d.count}` } } }));
    }
  }

  async renderLineage() {
    let d;
    const div = $("#lineage");
    try { d = await getJSON(apiUrl(this.run, "/lineage?k=20")); } catch (err) { showError(div, err); return; }
    div.dataset.kind = d.kind;
    if (d.kind === "graph") {
      const pos = new Map(d.nodes.map((n) => [n.index, n]));
      const ex = [], ey = [];
      for (const [p, c] of d.edges) {
        const a = pos.get(p), b = pos.get(c);
        if (!a || !b || a.fitness === null || b.fitness === null) continue;
        ex.push(a.index, b.index, null); ey.push(a.fitness, b.fitness, null);
      }
      const nodes = d.nodes.filter((n) => n.fitness !== null);
      await draw(div, [
        { type: "scatter", mode: "lines", name: "parent → child", x: ex, y: ey, line: { color: "#cbd5e1", width: 1 }, hoverinfo: "skip" },
        { type: "scatter", mode: "markers", name: "candidates", x: nodes.map((n) => n.index), y: nodes.map((n) => n.fitness),
          customdata: nodes.map((n) => n.index), marker: { size: nodes.map((n) => (n.top ? 10 : 6)), color: nodes.map((n) => (n.top ? "#dc2626" : "#2563eb")) },
          hovertemplate: "#%{customdata}<br>fitness %{y:.4f}<extra></extra>" }],
      layoutBase({ xaxis: { title: { text: "candidate" } }, yaxis: { title: { text: "fitness" } } }), (i) => this.open(i));
    } else {
      const g = d.bands.map((b) => b.generation);
      await draw(div, [
        { type: "scatter", mode: "lines", x: g, y: d.bands.map((b) => b.min), line: { width: 0 }, showlegend: false, hoverinfo: "skip" },
        { type: "scatter", mode: "lines", name: "min – max", x: g, y: d.bands.map((b) => b.max), fill: "tonexty", line: { width: 0 } },
        { type: "scatter", mode: "lines+markers", name: "median", x: g, y: d.bands.map((b) => b.median) }],
      layoutBase({ xaxis: { title: { text: "generation" } }, yaxis: { title: { text: "fitness" } } }));
    }
  }

  async initItems() {
    const exact = this.complete().filter((p) => p.fidelity === "exact").sort((a, b) => b.fitness - a.fitness);
    if (exact.length) this.itemA.value = exact[0].index;
    if (exact.length > 1) this.itemB.value = exact[exact.length - 1].index;
    if (exact.length) await this.renderItems();
  }

  async renderItems() {
    const a = Number(this.itemA.value), b = Number(this.itemB.value);
    let d;
    try { d = await getJSON(apiUrl(this.run, `/items?a=${a}&b=${b}`)); } catch (err) { showError($("#items-summary"), err); return; }
    const rows = d.tasks.map((t) => el("tr", {}, el("td", { text: t.task }), el("td", { class: "num", text: t.both }),
      el("td", { class: "num", text: t.only_a }), el("td", { class: "num", text: t.only_b }), el("td", { class: "num", text: t.neither })));
    $("#items-summary").replaceChildren(d.tasks.length ? table([{ label: "task" }, { label: "both right", num: true },
      { label: `only #${a}`, num: true }, { label: `only #${b}`, num: true }, { label: "neither", num: true }], rows, { id: "items-table" })
      : el("p", { class: "muted", text: "no item scores stored for these candidates" }));
    const z = [], y = [], x = [];
    let offset = 0;
    const tickvals = [], ticktext = [];
    const ra = [], rb = [];
    for (const t of d.tasks) {
      tickvals.push(offset); ticktext.push(plain(t.task));
      for (let j = 0; j < t.a.length; j++) { x.push(offset + j); ra.push(t.a[j]); rb.push(t.b[j]); }
      offset += t.a.length + 5;
    }
    z.push(ra, rb); y.push(`#${a}`, `#${b}`);
    await draw($("#items"), [{ type: "heatmap", x, y, z, colorscale: [[0, "#fee2e2"], [1, "#16a34a"]], zmin: 0, zmax: 1,
      hovertemplate: "%{y} item %{x}: %{z}<extra></extra>", showscale: false }],
    layoutBase({ xaxis: { tickvals, ticktext }, yaxis: { type: "category" }, margin: { l: 60, r: 10, t: 10, b: 40 } }));
  }

  async renderTable() {
    const st = this.tableState;
    const q = new URLSearchParams({ sort: st.sort, desc: st.desc ? "1" : "0", offset: String(st.offset), limit: String(st.limit) });
    for (const k of ["status", "fidelity", "objective", "low", "high"]) if (st[k] !== "") q.set(k, st[k]);
    let d;
    const where = $("#table");
    try { d = await getJSON(apiUrl(this.run, `/candidates?${q}`)); } catch (err) { showError(where, err); return; }
    const headers = [{ label: "" }, { label: "#", num: true }, { label: "gen", num: true }, { label: "status" },
      { label: "fitness", num: true }, ...d.objectives.map((n) => ({ label: n, num: true })), { label: "fidelity" },
      { label: "items", num: true }, { label: "s", num: true }, { label: "worker" }, { label: "error" }];
    const rows = d.rows.map((r) => {
      const box = el("input", { type: "checkbox", title: "compare", onchange: (e) => {
        if (e.target.checked) this.compare.add(r.index); else this.compare.delete(r.index);
        this.renderSkills();
      } });
      box.checked = this.compare.has(r.index);
      return el("tr", { "data-index": r.index, class: this.compare.has(r.index) ? "sel" : null },
        el("td", {}, box), el("td", { class: "num" }, el("a", { href: candUrl(this.run, r.index), text: `#${r.index}` })),
        el("td", { class: "num", text: r.generation }), el("td", { class: `status-${r.status}`, text: r.status }),
        el("td", { class: "num", text: fmt(r.fitness) }),
        ...d.objectives.map((n) => el("td", { class: "num", text: fmt(r.objectives[n]) })),
        el("td", { text: r.fidelity }), el("td", { class: "num", text: r.items_scored ?? "-" }),
        el("td", { class: "num", text: fmt(r.seconds, 2) }), el("td", { text: r.worker || "-" }),
        el("td", { class: "err", text: r.error || "" }));
    });
    where.replaceChildren(table(headers, rows, { id: "cand-table", "data-total": d.total }));
    $("#t-range").textContent = d.total ? `${d.offset + 1}–${Math.min(d.offset + d.limit, d.total)} of ${d.total}` : "none";
  }
}

// ---------------------------------------------------------------- candidate page
async function candidatePage(run, index) {
  const main = $("#main");
  let d;
  try { d = await getJSON(apiUrl(run, `/candidates/${index}`)); } catch (err) { showError(main, err); return; }
  crumbs(["runs", "/"], [d.run, runUrl(d.run_id)], [`#${d.index}`, null]);
  document.title = `evomerge · ${d.run}:${d.index}`;
  const copy = (text, id) => el("button", { id, text: "copy", onclick: async (e) => {
    try { await navigator.clipboard.writeText(text); e.target.textContent = "copied"; } catch (err) { e.target.textContent = "select and copy"; }
  } });
  const link = (i) => el("a", { href: candUrl(d.run_id, i), text: `#${i}` });
  const links = (xs) => (xs.length ? xs.flatMap((i, k) => (k ? [", ", link(i)] : [link(i)])) : ["-"]);
  const kv = [["status", d.status], ["fitness", fmt(d.fitness)], ["fidelity", d.fidelity], ["items scored", d.items_scored ?? "-"],
    ["stop reason", d.stop_reason || "-"], ["generation", d.generation], ["attempts", d.attempts], ["worker", d.worker || "-"],
    ["started", localTime(d.started_at)], ["finished", localTime(d.finished_at)], ["seconds", fmt(d.seconds, 2)],
    ["recipe id", d.recipe_id]];
  const info = table([{ label: "" }, { label: "" }], [
    ...kv.map(([k, v]) => el("tr", {}, el("th", { text: k }), el("td", { text: String(v), id: `c-${k.replace(/ /g, "-")}` }))),
    el("tr", {}, el("th", { text: "copy of" }), el("td", {}, ...(d.cached_from === null ? ["-"] : [link(d.cached_from)]))),
    el("tr", {}, el("th", { text: "raced against" }), el("td", {}, ...(d.race_ref === null ? ["-"] : [link(d.race_ref)]))),
    el("tr", {}, el("th", { text: "parents" }), el("td", { id: "c-parents" }, ...links(d.parents))),
    el("tr", {}, el("th", { text: "children" }), el("td", { id: "c-children" }, ...links(d.children)))], { id: "cand-info" });
  const objRows = d.objective_order.filter((n) => d.objectives[n]).map((n) => {
    const o = d.objectives[n];
    return el("tr", {}, el("td", { text: n }), el("td", { class: "num", text: fmt(o.value) }),
      el("td", { class: "num", text: o.low === null ? "-" : `${fmt(o.low)} – ${fmt(o.high)}` }));
  });
  main.replaceChildren(
    el("h1", { text: `${d.run} #${d.index}` }),
    el("div", { class: "grid" },
      el("section", { class: "card" }, el("h2", { text: "Candidate" }), info),
      el("section", { class: "card" }, el("h2", { text: "Objectives" }),
        objRows.length ? table([{ label: "objective" }, { label: "value", num: true }, { label: "interval", num: true }], objRows, { id: "cand-objectives" })
          : el("p", { class: "muted", text: "no objective values (not complete)" }),
        d.error ? el("div", {}, el("h2", { text: "Error" }), el("pre", { class: "err", id: "c-error", text: d.error })) : null),
      el("section", { class: "card" }, el("h2", { text: "Export" }),
        el("pre", { id: "export-cmd", text: d.export }), copy(d.export, "copy-export")),
      el("section", { class: "card" }, el("h2", { text: "Recipe (mergekit YAML)" }),
        el("pre", { id: "recipe-yaml", text: d.mergekit_yaml }), copy(d.mergekit_yaml, "copy-yaml"))));
  document.body.dataset.ready = "1";
}

document.addEventListener("DOMContentLoaded", () => {
  const b = document.body.dataset;
  if (b.page === "runs") runsPage();
  else if (b.page === "run") new RunPage(b.run).start();
  else if (b.page === "candidate") candidatePage(b.run, b.index);
});
