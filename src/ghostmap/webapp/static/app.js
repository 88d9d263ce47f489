// ghostmap label: the page. Plain JavaScript, no build step.
// The server holds all state (labels, skips, queue); the page shows it and sends actions.
"use strict";

const $ = (id) => document.getElementById(id);
let state = null;          // the last /api/state
let pending = Promise.resolve();  // actions run one after another, in the order they were asked for
let queued = 0;            // actions asked for and not finished (body.busy while any)
let generation = 0;        // bumped by a failed action: the actions queued behind it are dropped
let overviewImage = null;  // virtual bright field, one pixel per position
let previewImages = {};    // {domain, confidence} for the current preview version
let previewVersion = -1;
let cellSize = 4;
let trainingTimer = null;

const DISPLAY_KEYS = ["view", "scale", "gamma", "lo", "hi", "cmap", "zoom", "overlay", "opacity"];

// ------------------------------------------------------------------ server
async function api(method, path, body) {
  const options = { method, headers: {} };
  if (method !== "GET") {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body || {});
  }
  const response = await fetch(path, options);
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (!response.ok) {
    const message = (data && data.error) || `${response.status} ${response.statusText}`;
    throw new Error(message);
  }
  return data;
}

function showMessage(text) {
  const box = $("message");
  box.textContent = text;
  box.hidden = !text;
  if (text) {
    clearTimeout(showMessage.timer);
    showMessage.timer = setTimeout(() => { box.hidden = true; }, 6000);
  }
}

// Queue an action. Keys pressed while a request is pending are not lost: each action waits for the
// one before it, and ``body`` (a function) is evaluated only then, so a label applies to the position
// shown after the previous action, as if the person had waited. ``body`` returning null drops the
// action (e.g. nothing left to label). After a failure the actions queued behind it are dropped.
function act(method, path, body) {
  const mine = generation;
  queued += 1;
  document.body.classList.add("busy");
  pending = pending.then(async () => {
    if (mine !== generation) return;
    const payload = typeof body === "function" ? body() : body;
    if (payload === null) return;
    try {
      setState(await api(method, path, payload));
      showMessage("");
    } catch (e) {
      generation += 1;
      showMessage(e.message);
    }
  }).finally(() => {
    queued -= 1;
    if (queued === 0) document.body.classList.remove("busy");
  });
  return pending;
}

const atCurrent = (extra) => () => (state && state.current ? { x: state.current.x, y: state.current.y, ...extra } : null);
const label = (name) => act("POST", "/api/label", atCurrent({ label: name }));
const skip = () => act("POST", "/api/skip", atCurrent({}));
const undo = () => act("POST", "/api/undo", {});
const goTo = (x, y) => act("POST", "/api/goto", { x, y });

// ------------------------------------------------------------------ rendering
function setState(next) {
  state = next;
  document.body.dataset.labels = String(state.n_labels);
  document.body.classList.toggle("wide", state.scan.cols > 2.5 * state.scan.rows);
  renderHeader();
  renderClasses();
  renderPattern();
  renderTraining(state.training);
  loadPreview();
  drawOverview();
}

function swatch(colour) {
  const s = document.createElement("span");
  s.className = "swatch";
  s.style.background = colour;
  return s;
}

function renderHeader() {
  const s = state.scan;
  $("scan-info").textContent = `${s.source} - ${s.rows} x ${s.cols} positions, detector ${s.detector[0]} x ${s.detector[1]} - labels: ${state.labels_file}`;
  $("progress-text").textContent = `${state.n_labels} of ${state.budget} labelled`;
  $("progress-bar").max = state.budget;
  $("progress-bar").value = Math.min(state.n_labels, state.budget);
  const counts = $("counts");
  counts.replaceChildren();
  for (const c of state.classes) {
    const chip = document.createElement("span");
    chip.className = "chip";
    chip.dataset.class = c.name;
    chip.append(swatch(c.colour), `${c.name}: ${state.counts[c.name] || 0}`);
    counts.append(chip);
  }
  const queued = document.createElement("span");
  queued.className = "chip muted";
  queued.id = "queue-length";
  queued.textContent = `queue: ${state.queue.length}` + (state.skipped.length ? ` (${state.skipped.length} skipped)` : "");
  counts.append(queued);
}

function renderClasses() {
  const box = $("class-buttons");
  if (box.dataset.classes !== JSON.stringify(state.classes)) {
    box.dataset.classes = JSON.stringify(state.classes);
    box.replaceChildren();
    const keys = [];
    for (const c of state.classes) {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "class-button";
      b.dataset.class = c.name;
      b.style.setProperty("--swatch", c.colour);
      b.append(c.name);
      for (const k of [c.letter, c.digit]) {
        if (k) { const kbd = document.createElement("kbd"); kbd.textContent = k; b.append(kbd); }
      }
      b.addEventListener("click", () => label(c.name));
      box.append(b);
      keys.push(`${[c.letter, c.digit].filter(Boolean).join(" or ")}: ${c.name}`);
    }
    keys.push("U: undo", "S: skip", "+ / -: zoom");
    $("keys-help").textContent = keys.join(" \u00b7 ");
    const legend = $("legend");
    legend.replaceChildren();
    for (const c of state.classes) {
      const item = document.createElement("span");
      item.className = "chip";
      item.append(swatch(c.colour), c.name);
      legend.append(item);
    }
    for (const [colour, text] of [["#ffffff", "queue"], ["#ffd23f", "current"], ["#777777", "skipped"]]) {
      const item = document.createElement("span");
      item.className = "chip";
      const s = swatch("transparent");
      s.style.borderColor = colour;
      s.style.borderWidth = "2px";
      item.append(s, text);
      legend.append(item);
    }
  }
  const cur = state.current;
  for (const b of box.querySelectorAll("button")) {
    b.disabled = !cur;
    b.classList.toggle("given", Boolean(cur && cur.label === b.dataset.class));
  }
  $("skip").disabled = !cur;
  $("undo").disabled = !state.can_undo;
}

function patternUrl() {
  const cur = state.current;
  const p = new URLSearchParams({
    x: cur.x, y: cur.y, view: $("view").value, scale: $("scale").value, gamma: $("gamma").value,
    lo: $("lo").value, hi: $("hi").value, cmap: $("cmap").value,
  });
  return `/api/pattern.png?${p}`;
}

function renderPattern() {
  const cur = state.current;
  const img = $("pattern");
  const empty = $("empty-queue");
  if (!cur) {
    $("position").textContent = "-";
    $("position-status").textContent = "";
    img.removeAttribute("src");
    img.hidden = true;
    $("pattern-wrap").hidden = true;  // a message, not a broken image in an empty black box
    empty.hidden = false;
    empty.textContent = state.n_labels >= state.budget
      ? `Budget of ${state.budget} labels reached. Click the overview to label any position, or train and preview.`
      : "The sampler has nothing left to propose (no domain wall left to refine). Click the overview to label any position, or train and preview.";
    return;
  }
  empty.hidden = true;
  img.hidden = false;
  $("pattern-wrap").hidden = false;
  $("position").textContent = `x=${cur.x}, y=${cur.y}`;
  $("position").dataset.x = cur.x;
  $("position").dataset.y = cur.y;
  let status;
  if (cur.label) status = `labelled ${cur.label}`;
  else if (cur.in_queue) status = `queue ${state.queue.findIndex((p) => p[0] === cur.x && p[1] === cur.y) + 1} of ${state.queue.length}`;
  else status = "outside the queue";
  if (cur.skipped) status += " (skipped before)";
  $("position-status").textContent = status;
  const url = patternUrl();
  if (img.getAttribute("src") !== url) img.src = url;
  img.style.width = `${100 * Number($("zoom").value)}%`;
  $("gamma-out").textContent = $("gamma").value;
  $("zoom-out").textContent = `${$("zoom").value}\u00d7`;
  $("gamma").disabled = $("scale").value !== "gamma" || $("view").value === "network";
  $("scale").disabled = $("view").value === "network";
}

function renderTraining(t) {
  const button = $("train");
  const running = t.state === "running";
  button.disabled = running || !state.can_train;
  button.title = state.can_train ? "Train a model on the labels so far and classify the whole scan"
    : `needs at least ${state.min_train_labels} labels in two classes`;
  const bar = $("training-bar");
  bar.hidden = !running;
  if (running && t.total) { bar.max = t.total; bar.value = t.done; } else if (running) bar.removeAttribute("value");
  let text = "";
  if (running) text = `${t.phase === "predicting" ? "Classifying" : "Training"}: ${t.message || ""}`;
  else if (t.state === "done") text = t.message;
  else if (t.state === "failed") text = `Training failed: ${t.message}`;
  else if (!state.can_train) text = `Train and preview becomes available at ${state.min_train_labels} labels in two classes.`;
  $("training").textContent = text;
  const hasPreview = Boolean(state.preview);
  for (const v of ["domain", "confidence"]) $("overlay").querySelector(`option[value=${v}]`).disabled = !hasPreview;
  $("mode").querySelector("option[value=uncertainty]").disabled = !hasPreview;
  $("mode").value = state.mode;
  if (running && !trainingTimer) trainingTimer = setTimeout(pollTraining, 700);
}

async function pollTraining() {
  trainingTimer = null;
  try {
    const t = await api("GET", "/api/train");
    if (t.state === "running") { state.training = t; renderTraining(t); return; }
    setState(await api("GET", "/api/state"));
    if (t.state === "done" && $("overlay").value === "none") { $("overlay").value = "domain"; saveDisplay(); drawOverview(); }
  } catch (e) {
    showMessage(e.message);
    trainingTimer = setTimeout(pollTraining, 2000);
  }
}

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error(`could not load ${url}`));
    img.src = url;
  });
}

async function loadPreview() {
  if (!state.preview || state.preview.version === previewVersion) return;
  const v = state.preview.version;
  previewVersion = v;
  try {
    const [domain, confidence] = await Promise.all([
      loadImage(`/api/preview/domain.png?v=${v}`), loadImage(`/api/preview/confidence.png?v=${v}`)]);
    previewImages = { domain, confidence };
    drawOverview();
  } catch (e) { showMessage(e.message); }
}

function drawOverview() {
  if (!state || !overviewImage) return;
  const { rows, cols } = state.scan;
  const wrap = $("overview-wrap");
  // Shown size: the panel's whole width (or 60% of the window's height for tall scans), whatever the
  // scan size; drawn at a whole number of canvas pixels per position, then scaled to that size.
  const fit = Math.max(3, Math.min(wrap.clientWidth / cols, (0.6 * window.innerHeight) / rows));
  cellSize = Math.max(3, Math.min(24, Math.ceil(fit)));
  const s = cellSize;
  const canvas = $("overview");
  if (canvas.width !== cols * s || canvas.height !== rows * s) { canvas.width = cols * s; canvas.height = rows * s; }
  canvas.style.width = `${cols * fit}px`;
  canvas.style.height = `${rows * fit}px`;
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.globalAlpha = 1;
  ctx.drawImage(overviewImage, 0, 0, cols * s, rows * s);
  const overlay = previewImages[$("overlay").value];
  if (overlay) {
    ctx.globalAlpha = Number($("opacity").value);
    ctx.drawImage(overlay, 0, 0, cols * s, rows * s);
    ctx.globalAlpha = 1;
  }
  const colour = Object.fromEntries(state.classes.map((c) => [c.name, c.colour]));
  const r = Math.max(s * 0.45, 2.2);
  const centre = (x, y) => [x * s + s / 2, y * s + s / 2];
  ctx.lineWidth = Math.max(1, s / 6);
  for (const p of state.skipped) {
    const [cx, cy] = centre(p[0], p[1]);
    ctx.strokeStyle = "#777777";
    ctx.strokeRect(cx - r, cy - r, 2 * r, 2 * r);
  }
  if ($("show-queue").checked) {
    ctx.strokeStyle = "#ffffff";
    for (const p of state.queue) {
      const [cx, cy] = centre(p[0], p[1]);
      ctx.beginPath(); ctx.arc(cx, cy, r, 0, 2 * Math.PI); ctx.stroke();
    }
  }
  for (const l of state.labels) {
    const [cx, cy] = centre(l.x, l.y);
    ctx.fillStyle = colour[l.label] || "#cccccc";
    ctx.beginPath(); ctx.arc(cx, cy, r, 0, 2 * Math.PI); ctx.fill();
    ctx.strokeStyle = "#000000"; ctx.lineWidth = 1; ctx.stroke();
  }
  if (state.current) {
    const [cx, cy] = centre(state.current.x, state.current.y);
    ctx.strokeStyle = "#ffd23f";
    ctx.lineWidth = Math.max(2, s / 4);
    ctx.beginPath(); ctx.arc(cx, cy, r + Math.max(3, s / 3), 0, 2 * Math.PI); ctx.stroke();
  }
}

function positionAt(event) {
  const canvas = $("overview");
  const rect = canvas.getBoundingClientRect();
  const x = Math.floor(((event.clientX - rect.left) * canvas.width) / rect.width / cellSize);
  const y = Math.floor(((event.clientY - rect.top) * canvas.height) / rect.height / cellSize);
  if (!state || x < 0 || y < 0 || x >= state.scan.cols || y >= state.scan.rows) return null;
  return [x, y];
}

// ------------------------------------------------------------------ display settings
function saveDisplay() {
  try {
    localStorage.setItem("ghostmap-label-display", JSON.stringify(Object.fromEntries(DISPLAY_KEYS.map((k) => [k, $(k).value]))));
  } catch (e) { /* private mode: settings just don't persist */ }
}

function loadDisplay() {
  try {
    const saved = JSON.parse(localStorage.getItem("ghostmap-label-display") || "{}");
    for (const k of DISPLAY_KEYS) if (k in saved && k !== "overlay") $(k).value = saved[k];
  } catch (e) { /* ignore */ }
}

function setZoom(delta) {
  const z = $("zoom");
  z.value = Math.min(Number(z.max), Math.max(Number(z.min), Number(z.value) + delta));
  saveDisplay();
  renderPattern();
}

// ------------------------------------------------------------------ events
function onKey(event) {
  if (!state || event.ctrlKey || event.metaKey || event.altKey) return;
  const tag = (event.target && event.target.tagName) || "";
  if (["INPUT", "SELECT", "TEXTAREA"].includes(tag)) return;
  const key = event.key.length === 1 ? event.key.toUpperCase() : event.key;
  if (key === "+" || key === "=") { setZoom(0.5); event.preventDefault(); return; }
  if (key === "-") { setZoom(-0.5); event.preventDefault(); return; }
  if (event.repeat) { event.preventDefault(); return; }  // a held key labels once, not once per repeat
  if (key === "U") { undo(); event.preventDefault(); return; }
  if (key === "S") { skip(); event.preventDefault(); return; }
  const c = state.classes.find((c) => c.letter === key || c.digit === key);
  if (c) { label(c.name); event.preventDefault(); }
}

async function start() {
  loadDisplay();
  document.addEventListener("keydown", onKey);
  $("undo").addEventListener("click", undo);
  $("skip").addEventListener("click", skip);
  $("train").addEventListener("click", async () => {
    try {
      state.training = await api("POST", "/api/train", {});
      renderTraining(state.training);
    } catch (e) { showMessage(e.message); }
  });
  $("mode").addEventListener("change", () => act("POST", "/api/mode", { mode: $("mode").value }));
  for (const id of ["view", "scale", "gamma", "lo", "hi", "cmap", "zoom"]) {
    $(id).addEventListener("input", () => { saveDisplay(); if (state) renderPattern(); });
  }
  for (const id of ["overlay", "opacity", "show-queue"]) {
    $(id).addEventListener("input", () => { saveDisplay(); drawOverview(); });
  }
  $("pattern").addEventListener("error", () => { if (state && state.current) showMessage("could not load the pattern (check the clipping values)"); });
  const canvas = $("overview");
  canvas.addEventListener("click", (e) => { const p = positionAt(e); if (p) goTo(p[0], p[1]); });
  canvas.addEventListener("mousemove", (e) => {
    const p = positionAt(e);
    if (!p) { $("hover").textContent = ""; return; }
    const l = state.labels.find((l) => l.x === p[0] && l.y === p[1]);
    $("hover").textContent = `x=${p[0]}, y=${p[1]}${l ? ` (${l.label})` : ""}`;
  });
  window.addEventListener("resize", drawOverview);
  try {
    overviewImage = await loadImage("/api/overview.png");
    setState(await api("GET", "/api/state"));
    document.body.dataset.ready = "1";
  } catch (e) {
    showMessage(`could not reach the label server: ${e.message}`);
  }
}

start();
