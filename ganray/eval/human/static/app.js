// The rater's loop: ask the server for a pair, show both faces, send the choice, repeat.
// The server issues every pair id; this page only echoes one back with "left" or "right".
"use strict";
const $ = (id) => document.getElementById(id);
const state = { pair: null, busy: false, count: 0, token: "" };

function headers(json) {
  const h = {};
  if (json) h["Content-Type"] = "application/json";
  if (state.token) h["X-Eval-Token"] = state.token;
  return h;
}

async function api(method, path, body) {
  const response = await fetch(path, { method, headers: headers(body !== undefined),
                                       body: body === undefined ? undefined : JSON.stringify(body) });
  if (response.status === 401) {
    $("token-row").classList.remove("hidden");
    $("setup").classList.remove("hidden");
    $("board").classList.add("hidden");
  }
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = JSON.stringify((await response.json()).detail); } catch (e) { /* not JSON */ }
    throw new Error(`${response.status}: ${detail}`);
  }
  return response;
}

function setBusy(busy) {
  // data-ready tells a watcher (and the tests) that a new pair is on screen and answers are taken.
  state.busy = busy;
  $("board").dataset.ready = String(!busy && state.pair !== null);
}

async function faceURL(path) {
  // Fetched with the token header (an <img src> could not send it), shown from a blob URL.
  return URL.createObjectURL(await (await api("GET", path)).blob());
}

async function nextPair() {
  const pair = await (await api("POST", "/api/pairs", { rater: $("rater").value })).json();
  const [left, right] = await Promise.all([faceURL(pair.left), faceURL(pair.right)]);
  for (const [img, url] of [[$("face-left"), left], [$("face-right"), right]]) {
    if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
    img.src = url;
  }
  state.pair = pair.pair_id;
  $("faces").dataset.pairId = pair.pair_id;
}

async function choose(side) {
  if (state.busy || !state.pair) return;  // one answer per pair: keys pressed while loading are ignored
  setBusy(true);
  try {
    await api("POST", "/api/choices", { pair_id: state.pair, choice: side });
    state.count += 1;
    $("count").textContent = String(state.count);
    state.pair = null;
    await nextPair();
    $("status").textContent = "";
  } catch (e) {
    $("status").textContent = e.message;
  } finally {
    setBusy(false);
  }
}

async function start(event) {
  event.preventDefault();
  $("status").textContent = "";  // a new attempt: the last error no longer applies
  state.token = $("token").value || state.token;
  try {
    const session = await (await api("GET", "/api/session")).json();
    $("question").textContent = session.question;
    $("setup").classList.add("hidden");
    $("board").classList.remove("hidden");
    $("status").textContent = "";
    await nextPair();
    setBusy(false);
  } catch (e) {
    $("status").textContent = e.message;
  }
}

document.addEventListener("keydown", (event) => {
  if (event.target instanceof HTMLInputElement || $("board").classList.contains("hidden")) return;
  if (event.key === "ArrowLeft" || event.key === "1") { event.preventDefault(); choose("left"); }
  if (event.key === "ArrowRight" || event.key === "2") { event.preventDefault(); choose("right"); }
});
$("choose-left").addEventListener("click", () => choose("left"));
$("choose-right").addEventListener("click", () => choose("right"));
$("setup").addEventListener("submit", start);
// A shared link can carry the token in its fragment (never sent to the server in the URL): #token=...
const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
if (fromHash) { state.token = fromHash; $("token").value = fromHash; }
