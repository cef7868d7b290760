// ganray studio: the page's script. Talks only to this server's /api/ (see ganray/studio/app.py).
"use strict";
const $ = (id) => document.getElementById(id);
const state = { info: null, page: 0, size: 100, total: null, matched: 0, query: "" };

function status(message) { $("status").textContent = message || ""; }

function keyHeaders() {
  const key = sessionStorage.getItem("ganray-studio-key");
  return key ? { "X-API-Key": key } : {};
}

async function api(path, asBlob) {
  const response = await fetch(path, { headers: keyHeaders() });
  if (response.status === 401) {
    $("key-form").hidden = false;
    throw new Error("this studio needs its API key: type it above");
  }
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail || detail; } catch (e) { /* not JSON */ }
    throw new Error(detail);
  }
  return asBlob ? response : response.json();
}

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

function showTab(name) {
  for (const section of ["faces", "charts", "card"]) {
    $(section).hidden = section !== name;
    $("tab-" + section).classList.toggle("active", section === name);
  }
}

// -- filters ------------------------------------------------------------------------------------

function buildFilters(info) {
  const facets = $("facet-filters"), ranges = $("range-filters");
  facets.replaceChildren(); ranges.replaceChildren();
  for (const name of info.columns.facets) {
    const label = el("label", name);
    const select = el("select", null, { "data-column": name, id: "filter-" + name });
    select.append(el("option", "any", { value: "" }));
    label.append(select);
    facets.append(label);
  }
  for (const name of info.columns.ranges) {
    for (const bound of ["min", "max"]) {
      const label = el("label", `${name} ${bound}`);
      label.append(el("input", null, { type: "number", step: "any", "data-column": name, "data-bound": bound,
                                       id: `filter-${bound}-${name}` }));
      ranges.append(label);
    }
  }
}

async function loadFacets() {
  const data = await api("/api/facets");
  for (const [name, counts] of Object.entries(data.facets)) {
    const select = $("filter-" + name);
    if (!select) continue;
    const chosen = select.value;
    select.replaceChildren(el("option", "any", { value: "" }));
    for (const [value, n] of Object.entries(counts)) {
      select.append(el("option", `${value} (${n}${data.complete ? "" : "+"})`, { value: value }));
    }
    select.value = chosen;
  }
  if (!data.complete) setTimeout(() => loadFacets().catch((e) => status(e.message)), 1500);
}

function filterQuery() {
  const params = new URLSearchParams();
  for (const select of document.querySelectorAll("#facet-filters select")) {
    if (select.value !== "") params.append("eq." + select.dataset.column, select.value);
  }
  for (const input of document.querySelectorAll("#range-filters input")) {
    if (input.value !== "") params.append(input.dataset.bound + "." + input.dataset.column, input.value);
  }
  return params.toString();
}

// -- the grid -----------------------------------------------------------------------------------

async function loadPage(page) {
  $("grid").dataset.ready = "false";
  const query = state.query ? "&" + state.query : "";
  const data = await api(`/api/faces?page=${page}&size=${state.size}${query}`);
  state.page = page; state.total = data.total; state.matched = data.matched_so_far;
  const grid = $("grid");
  grid.replaceChildren();
  for (const face of data.faces) {
    const figure = el("figure", null, { class: "face", "data-index": face.index });
    figure.append(el("img", null, { src: "data:image/png;base64," + face.image, alt: "face " + face.index }));
    const caption = state.info.columns.facets.filter((c) => c in face).map((c) => face[c]).join(" · ");
    figure.append(el("figcaption", caption || ("seed " + face.seed), { title: caption }));
    figure.addEventListener("click", () => showDetail(face.index).catch((e) => status(e.message)));
    grid.append(figure);
  }
  const known = data.total !== null;
  $("count").textContent = known ? String(data.total) : `${data.matched_so_far}+`;
  const pages = known ? Math.max(1, Math.ceil(data.total / state.size)) : null;
  $("page-label").textContent = `page ${page + 1}` + (pages ? ` of ${pages}` : "");
  $("prev").disabled = page === 0;
  $("next").disabled = known ? page + 1 >= pages : data.faces.length < state.size;
  grid.dataset.ready = "true";
  status("");
}

// -- a face -------------------------------------------------------------------------------------

async function showDetail(index) {
  const data = await api(`/api/faces/${index}`);
  const face = data.face;
  $("detail-index").textContent = `${index} (seed ${face.seed})`;
  $("detail-image").src = "data:image/png;base64," + face.image;
  const table = $("detail-row");
  table.replaceChildren();
  for (const [name, value] of Object.entries({ ...face, shard: data.shard })) {
    if (name === "image") continue;
    const row = el("tr", null, { "data-column": name });
    row.append(el("th", name), el("td", value));
    table.append(row);
  }
  $("render-box").hidden = !state.info.face_api;
  $("rendered").removeAttribute("src");
  $("render-version").textContent = "";
  $("detail").dataset.index = index;
  $("detail").hidden = false;
}

async function renderFace() {
  const index = $("detail").dataset.index, psi = $("psi").value;
  $("render-version").textContent = "rendering…";
  const response = await api(`/api/render/${index}?psi=${encodeURIComponent(psi)}`, true);
  $("rendered").src = URL.createObjectURL(await response.blob());
  $("render-version").textContent = "model " + (response.headers.get("X-Model-Version") || "?");
}

// -- charts and card ----------------------------------------------------------------------------

function numbersTable(title, object) {
  const rows = [];
  (function walk(prefix, value) {
    if (value !== null && typeof value === "object") {
      for (const [k, v] of Object.entries(value)) walk(prefix ? `${prefix}.${k}` : k, v);
    } else if (typeof value === "number") rows.push([prefix, value]);
  })("", object);
  if (!rows.length) return null;
  const box = el("div");
  box.append(el("h3", title));
  const table = el("table");
  const largest = Math.max(...rows.map(([, v]) => Math.abs(v))) || 1;
  for (const [name, value] of rows) {
    const tr = el("tr");
    const bar = el("td");
    bar.append(el("span", null, { class: "bar", style: `width:${Math.round(120 * Math.abs(value) / largest)}px` }));
    tr.append(el("th", name), el("td", Number.isInteger(value) ? value : value.toFixed(4)), bar);
    table.append(tr);
  }
  box.append(table);
  return box;
}

async function fileUrl(name) {
  const response = await api("/api/files/" + encodeURIComponent(name), true);
  return URL.createObjectURL(await response.blob());
}

async function loadCharts(files) {
  if (files.includes("balance_report.png")) {
    $("balance-chart").src = await fileUrl("balance_report.png");
    $("balance-chart").hidden = false;
  } else $("no-balance").hidden = false;
  if (files.includes("balance_report.json")) {
    const report = await api("/api/files/balance_report.json");
    const table = $("balance-table");
    table.append(Object.assign(el("tr"), { innerHTML: "<th>stratum</th><th>target</th><th>count</th><th>deviation</th>" }));
    for (const s of report.strata || []) {
      const tr = el("tr");
      tr.append(el("td", s.stratum), el("td", s.target), el("td", s.count), el("td", s.deviation));
      table.append(tr);
    }
  }
  const evalBox = $("eval");
  for (const name of files.filter((f) => f.startsWith("eval"))) {
    if (name.endsWith(".png")) {
      const img = el("img", null, { alt: name, src: await fileUrl(name) });
      evalBox.append(el("h3", name), img);
    } else {
      const table = numbersTable(name, await api("/api/files/" + encodeURIComponent(name)));
      if (table) evalBox.append(table);
    }
  }
  if (files.includes("card.json")) {
    const card = await api("/api/files/card.json");
    for (const key of Object.keys(card).filter((k) => /eval/i.test(k))) {
      const table = numbersTable("card.json: " + key, card[key]);
      if (table) evalBox.append(table);
    }
  }
  $("no-eval").hidden = evalBox.children.length > 0;
}

async function loadCard(files) {
  if (files.includes("README.md")) {
    const response = await api("/api/files/README.md", true);
    $("card-md").textContent = await response.text();
    $("card-md").hidden = false;
  }
  if (files.includes("card.json")) {
    $("card-json").textContent = JSON.stringify(await api("/api/files/card.json"), null, 2);
    $("card-json").hidden = $("card-json-title").hidden = false;
  }
  $("no-card").hidden = files.includes("README.md") || files.includes("card.json");
}

// -- start --------------------------------------------------------------------------------------

async function start() {
  const info = await api("/api/info");
  state.info = info; state.size = info.page_size;
  $("key-form").hidden = true;
  $("output-name").textContent = `${info.output} · ${info.faces} faces · ${info.shards} shards`;
  if (info.human_eval) { $("human-eval").href = info.human_eval; $("human-eval").hidden = false; }
  if (info.unreadable_shards.length) status(info.unreadable_shards.join("\n"));
  buildFilters(info);
  await loadPage(0);
  if (info.unreadable_shards.length) status(info.unreadable_shards.join("\n"));
  loadFacets().catch((e) => status(e.message));
  loadCharts(info.files).catch((e) => status(e.message));
  loadCard(info.files).catch((e) => status(e.message));
}

function report(promise) { promise.catch((e) => { status(e.message); $("grid").dataset.ready = "error"; }); }

document.querySelectorAll(".tab").forEach((b) => b.addEventListener("click", () => showTab(b.dataset.tab)));
$("filters").addEventListener("submit", (e) => { e.preventDefault(); state.query = filterQuery(); report(loadPage(0)); });
$("clear").addEventListener("click", () => { $("filters").reset(); state.query = ""; report(loadPage(0)); });
$("prev").addEventListener("click", () => report(loadPage(Math.max(0, state.page - 1))));
$("next").addEventListener("click", () => report(loadPage(state.page + 1)));
$("close-detail").addEventListener("click", () => { $("detail").hidden = true; });
$("render").addEventListener("click", () => renderFace().catch((e) => {
  $("render-version").textContent = ""; status(e.message);
}));
$("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem("ganray-studio-key", $("key").value);
  $("grid").dataset.ready = "false";
  status(""); report(start());
});
showTab("faces");
report(start());
