// The live sale board: asks Prometheus's HTTP API (same origin) for the sale's figures every few seconds and shows
// them in tables (each number in an element with data-figure, data-sku, data-campaign) and uPlot charts.
// Every inventory replica exports the same sale figures (inventory_svc/sale_figures.py): see NEWEST below.
// Query parameters: ?refresh=<seconds> (default 5), ?minutes=<chart range> (default 15).
"use strict";

const params = new URLSearchParams(location.search);
const REFRESH_SECONDS = Math.max(1, Number(params.get("refresh")) || 5);
const MINUTES = Math.max(1, Number(params.get("minutes")) || 15);
// Prometheus serves this page at <prefix>/user/board.html, its API at <prefix>/api/v1/.
const API = location.pathname.replace(/\/user\/.*$/, "") + "/api/v1/";
const RATE = "[1m]";
const ADD_METHODS = {
  cart: "/shop.cart.v1.CartService/AddItem",
  inventory: "/shop.inventory.v1.InventoryService/CreateHolds",
};

const ITEM_FIGURES = ["quota", "remaining", "held", "sold", "returned", "buyers"];
const STOCK_FIGURES = {on_hand: "shop_sale_stock_on_hand", available: "shop_sale_stock_available",
                       held: "shop_sale_stock_held", set_aside: "shop_sale_stock_set_aside",
                       window: "shop_sale_window_units",
                       // Units paid in the last 5 minutes (each replica counts from its own start: increase() agrees).
                       sold: "increase(shop_sale_sold_units_total[5m])"};

async function query(expr) {
  const resp = await fetch(API + "query?" + new URLSearchParams({query: expr}));
  const body = await resp.json();
  if (body.status !== "success") throw new Error(`${expr}: ${body.error || resp.status}`);
  return body.data.result;
}

async function queryRange(expr, start, end, step) {
  const resp = await fetch(API + "query_range?" + new URLSearchParams({query: expr, start, end, step}));
  const body = await resp.json();
  if (body.status !== "success") throw new Error(`${expr}: ${body.error || resp.status}`);
  return body.data.result;
}

// A number as the board shows it: integers as they are, rates with two decimals, NaN (no data) as "-".
function shown(value, digits = 0) {
  const n = Number(value);
  if (!Number.isFinite(n)) return "-";
  return digits ? n.toFixed(digits) : String(Math.round(n));
}

function cell(figure, value, attrs = {}, digits = 0) {
  const td = document.createElement("td");
  td.dataset.figure = figure;
  for (const [k, v] of Object.entries(attrs)) td.dataset[k] = v;
  td.textContent = shown(value, digits);
  return td;
}

function byLabels(result, ...labels) {
  const map = new Map();
  for (const r of result) map.set(labels.map(l => r.metric[l] || "").join("\u0000"), Number(r.value[1]));
  return map;
}

// Every inventory replica exports the same figures, each as of its own last pass: the figures of one SKU are taken
// from the replica whose pass is the newest (so held, sold and remaining are of one instant and add up to the
// quota), max by sku across replicas that tie.
const NEWEST = "on (instance) (shop_sale_figures_updated_seconds == scalar(max(shop_sale_figures_updated_seconds)))";

async function instant() {
  const max = (name, by) => query(`max by (${by}) (${name} and ${NEWEST})`);
  const [campaigns, refused, watched, addsRate, replicasUp, replicasAll, p99, ...items] = await Promise.all([
    max("shop_sale_campaign", "campaign, name, status"),
    max("shop_sale_refused_total", "campaign, sku, reason"),
    max("shop_sale_watched", "sku, why"),
    query(`max by (sku) (rate(shop_sale_adds_total${RATE}))`),
    query("sum by (job) (up)"),
    query("count by (job) (up)"),
    Promise.all(Object.entries(ADD_METHODS).map(([service, method]) => query(
      `histogram_quantile(0.99, sum by (le) (rate(shop_rpc_seconds_bucket{service="${service}",method="${method}"}${RATE})))`))),
    ...ITEM_FIGURES.map(f => max(`shop_sale_${f}`, "campaign, sku")),
    ...Object.values(STOCK_FIGURES).map(name => max(name, "sku")),
  ]);
  const itemFigures = Object.fromEntries(ITEM_FIGURES.map((f, i) => [f, byLabels(items[i], "campaign", "sku")]));
  const stockFigures = Object.fromEntries(Object.keys(STOCK_FIGURES).map(
    (f, i) => [f, byLabels(items[ITEM_FIGURES.length + i], "sku")]));
  return {campaigns, refused, watched, adds: byLabels(addsRate, "sku"), replicasUp, replicasAll, p99,
          itemFigures, stockFigures};
}

function renderCampaigns(f) {
  const root = document.getElementById("campaigns");
  root.replaceChildren();
  if (!f.campaigns.length) {
    root.innerHTML = '<p class="empty">No campaign live or opening soon.</p>';
    return;
  }
  const skusOf = new Map();
  for (const key of f.itemFigures.quota.keys()) {
    const [campaign, sku] = key.split("\u0000");
    if (!skusOf.has(campaign)) skusOf.set(campaign, []);
    skusOf.get(campaign).push(sku);
  }
  const refusals = new Map();
  for (const r of f.refused) {
    const key = r.metric.campaign + "\u0000" + r.metric.sku;
    if (!refusals.has(key)) refusals.set(key, {});
    refusals.get(key)[r.metric.reason] = Number(r.value[1]);
  }
  const sorted = [...f.campaigns].sort((a, b) => a.metric.name.localeCompare(b.metric.name));
  for (const c of sorted) {
    const id = c.metric.campaign;
    const block = document.createElement("div");
    block.className = "campaign";
    block.dataset.campaign = id;
    const title = document.createElement("h3");
    title.textContent = `${c.metric.name} (${c.metric.status})`;
    block.append(title);
    const table = document.createElement("table");
    table.innerHTML = "<thead><tr><th>SKU</th><th>quota</th><th>remaining</th><th>held</th><th>sold</th>" +
      "<th>returned</th><th>buyers</th><th>adds/s</th><th>refused</th><th>by reason</th>" +
      "<th>on hand</th><th>reserved</th><th>set aside</th><th>available</th></tr></thead>";
    const body = document.createElement("tbody");
    for (const sku of (skusOf.get(id) || []).sort()) {
      const key = id + "\u0000" + sku;
      const attrs = {sku, campaign: id};
      const tr = document.createElement("tr");
      tr.dataset.sku = sku;
      const name = document.createElement("th");
      name.textContent = sku;
      tr.append(name);
      for (const figure of ITEM_FIGURES) tr.append(cell(figure, f.itemFigures[figure].get(key), attrs));
      const quota = f.itemFigures.quota.get(key), remaining = f.itemFigures.remaining.get(key);
      if (quota && remaining / quota < 0.1) tr.querySelector('[data-figure="remaining"]').classList.add("low");
      tr.append(cell("adds-per-second", f.adds.get(sku), attrs, 2));
      const reasons = refusals.get(key) || {};
      tr.append(cell("refused", Object.values(reasons).reduce((a, b) => a + b, 0), attrs));
      const by = document.createElement("td");
      by.className = "refusals";
      for (const reason of Object.keys(reasons).sort()) {
        const span = document.createElement("span");
        Object.assign(span.dataset, {figure: "refused-by-reason", reason, sku, campaign: id});
        span.textContent = `${reason} ${shown(reasons[reason])}`;
        by.append(span);
      }
      tr.append(by);
      // The SKU's whole stock (GET /admin/stock/{sku}): reserved counts every hold, the quota's and regular ones.
      for (const [figure, from] of [["on-hand", "on_hand"], ["reserved", "held"], ["set-aside", "set_aside"],
                                    ["available", "available"]]) {
        tr.append(cell(figure, f.stockFigures[from].get(sku), {sku}));
      }
      body.append(tr);
    }
    table.append(body);
    block.append(table);
    root.append(block);
  }
}

function renderHot(f) {
  const body = document.querySelector("#hot tbody");
  body.replaceChildren();
  const hot = f.watched.filter(r => r.metric.why === "hot").map(r => r.metric.sku).sort(
    (a, b) => (f.stockFigures.window.get(b) || 0) - (f.stockFigures.window.get(a) || 0) || a.localeCompare(b));
  for (const sku of hot) {
    const tr = document.createElement("tr");
    tr.dataset.sku = sku;
    const name = document.createElement("th");
    name.textContent = sku;
    tr.append(name);
    for (const figure of ["on_hand", "available", "held", "set_aside", "window", "sold"]) {
      tr.append(cell(figure.replace("_", "-"), f.stockFigures[figure].get(sku), {sku}));
    }
    tr.append(cell("adds-per-second", f.adds.get(sku), {sku}, 2));
    body.append(tr);
  }
  if (!hot.length) body.innerHTML = '<tr><td colspan="8" class="empty">No SKU held or sold in the last minutes.</td></tr>';
}

function renderReplicas(f) {
  const root = document.getElementById("replicas");
  root.replaceChildren();
  const all = byLabels(f.replicasAll, "job");
  for (const r of [...f.replicasUp].sort((a, b) => a.metric.job.localeCompare(b.metric.job))) {
    const job = r.metric.job, up = Number(r.value[1]), total = all.get(job) || 0;
    const div = document.createElement("div");
    div.className = "replica" + (up < total ? " down" : "");
    div.dataset.job = job;
    div.innerHTML = `${job}: <b data-figure="replicas-up" data-job="${job}">${shown(up)}</b> of ` +
      `<span data-figure="replicas" data-job="${job}">${shown(total)}</span> up`;
    root.append(div);
  }
  const services = Object.keys(ADD_METHODS);
  f.p99.forEach((result, i) => {
    const div = document.createElement("div");
    div.className = "replica";
    const ms = result.length ? Number(result[0].value[1]) * 1000 : NaN;
    div.innerHTML = `p99 of an add at ${services[i]}: <b data-figure="p99-ms" data-service="${services[i]}">` +
      `${shown(ms, 1)}</b> ms`;
    root.append(div);
  });
}

// --- charts (uPlot) -------------------------------------------------------------------------------------------

const charts = {};
const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
                 "#7f7f7f", "#bcbd22"];

// query_range's matrix as uPlot's columns: the shared timestamps, then one column per series.
function columns(result, label, start, end, step) {
  const times = [];
  for (let t = start; t <= end; t += step) times.push(t);
  const names = result.map(r => (typeof label === "function" ? label(r.metric) : r.metric[label]) || "all");
  const data = [times];
  for (const r of result) {
    const byTime = new Map(r.values.map(([t, v]) => [Math.round(t), Number(v)]));
    data.push(times.map(t => (byTime.has(t) && Number.isFinite(byTime.get(t)) ? byTime.get(t) : null)));
  }
  return {names, data};
}

function draw(id, {names, data}) {
  const el = document.getElementById(id);
  const key = names.join("|");
  if (charts[id] && charts[id].key === key) {
    charts[id].plot.setData(data);
    return;
  }
  if (charts[id]) charts[id].plot.destroy();
  el.replaceChildren();
  const opts = {
    width: 400, height: 220,
    scales: {x: {time: true}},
    series: [{}, ...names.map((name, i) => ({label: name, stroke: PALETTE[i % PALETTE.length], width: 2,
                                              spanGaps: false}))],
    axes: [{}, {size: 60}],
  };
  charts[id] = {key, plot: new uPlot(opts, data, el)};
  el.dataset.series = String(names.length);
}

async function renderCharts() {
  const step = Math.max(REFRESH_SECONDS, Math.ceil((MINUTES * 60) / 240));
  const end = Math.floor(Date.now() / 1000 / step) * step, start = end - MINUTES * 60;
  const range = expr => queryRange(expr, start, end, step);
  const [adds, p99, refusals] = await Promise.all([
    range(`max by (sku) (rate(shop_sale_adds_total${RATE}))`),
    Promise.all(Object.entries(ADD_METHODS).map(([service, method]) => range(
      `1000 * histogram_quantile(0.99, sum by (le) (rate(shop_rpc_seconds_bucket{service="${service}",method="${method}"}${RATE})))`
    ).then(result => result.map(r => ({...r, metric: {service}}))))),
    range(`sum by (outcome) (rate(shop_inventory_calls_total{operation="create_holds",outcome!="OK"}${RATE}))`),
  ]);
  draw("chart-adds", columns(adds, "sku", start, end, step));
  draw("chart-p99", columns(p99.flat(), "service", start, end, step));
  draw("chart-refusals", columns(refusals, "outcome", start, end, step));
}

// --- the loop -----------------------------------------------------------------------------------------------------

async function refresh() {
  const state = document.getElementById("state");
  try {
    const figures = await instant();
    renderReplicas(figures);
    renderCampaigns(figures);
    renderHot(figures);
    await renderCharts();
    document.getElementById("updated").textContent = new Date().toLocaleTimeString();
    document.body.dataset.state = "ok";
    state.textContent = "live";
    state.title = "";
  } catch (err) {
    // The last figures stay on screen; the state says they are stale and why.
    document.body.dataset.state = "error";
    state.textContent = "stale";
    state.title = String(err);
    console.error(err);
  } finally {
    document.body.dataset.renders = String(Number(document.body.dataset.renders) + 1);
    setTimeout(refresh, REFRESH_SECONDS * 1000);
  }
}

document.getElementById("refresh").textContent = String(REFRESH_SECONDS);
refresh();
