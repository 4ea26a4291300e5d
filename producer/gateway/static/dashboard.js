// The visionq dashboard: plain JavaScript served by the gateway itself, no build step.
// Everything goes through the same /v1 API as any client, with the key typed at sign-in
// (kept in sessionStorage: this tab only). Output pictures are FileRef urls, which carry
// their own signature, so <img> can show them without the key.
"use strict";

const KEY_STORAGE = "visionq-api-key";
const REFRESH_MS = 3000;
const state = { key: sessionStorage.getItem(KEY_STORAGE), inputs: new Map(), timer: null };

const $ = (selector) => document.querySelector(selector);

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "class") node.className = value;
    else if (name.startsWith("data-")) node.setAttribute(name, value);
    else node[name] = value;
  }
  for (const child of children) node.append(child);
  return node;
}

class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...(options.headers || {}), Authorization: `Bearer ${state.key}` } });
  if (!response.ok) {
    let body = {};
    try { body = await response.json(); } catch (_) { /* not JSON: keep the status */ }
    const error = body.error || { code: "internal", message: `HTTP ${response.status}` };
    if (response.status === 401) signOut(error.message);
    throw new ApiError(response.status, error.code, error.message);
  }
  return response;
}

// --- Sign in ---------------------------------------------------------------------

async function signIn(key) {
  state.key = key;
  await api("/v1/jobs?limit=1");  // 401 for a bad key
  sessionStorage.setItem(KEY_STORAGE, key);
  $("#sign-in").hidden = true;
  $("#app").hidden = false;
  $("#sign-out").hidden = false;
  $("#who").textContent = `key ${key.slice(0, 15)}…`;
  await refresh();
  state.timer = setInterval(refresh, REFRESH_MS);
}

function signOut(message = "") {
  sessionStorage.removeItem(KEY_STORAGE);
  state.key = null;
  clearInterval(state.timer);
  $("#app").hidden = true;
  $("#sign-out").hidden = true;
  $("#sign-in").hidden = false;
  $("#who").textContent = "";
  $("#sign-in-error").textContent = message;
}

// --- Fleet -----------------------------------------------------------------------

function renderQueues(queues) {
  const rows = Object.entries(queues).map(([kind, d]) =>
    el("tr", {}, el("td", {}, kind), el("td", {}, d.high), el("td", {}, d.normal), el("td", {}, d.low), el("td", {}, d.total)));
  $("#queues tbody").replaceChildren(...rows);
}

function renderWorkers(workers) {
  const rows = workers.map((w) => {
    const memory = w.memory_mb || {};
    const used = [memory.rss != null ? `rss ${memory.rss}` : null, memory.gpu_allocated != null ? `gpu ${memory.gpu_allocated}` : null];
    const device = w.gpu != null && w.gpu !== "" ? `GPU ${w.gpu} (${w.device})` : (w.device || "-");
    return el("tr", {}, el("td", {}, w.name), el("td", {}, w.state), el("td", {}, (w.kinds || []).join(", ")),
      el("td", {}, device), el("td", {}, used.filter(Boolean).join(" / ") || "-"), el("td", {}, w.jobs_done ?? 0));
  });
  if (!rows.length) rows.push(el("tr", {}, el("td", { colSpan: 6, class: "hint" }, "no live workers")));
  $("#workers tbody").replaceChildren(...rows);
}

// --- Jobs ------------------------------------------------------------------------

function picture(src, attributes) {
  return el("img", { src, loading: "lazy", ...attributes });
}

function pictures(record) {
  const shown = [];
  const input = state.inputs.get(record.id) || (/^https?:/.test(record.input.image || "") ? record.input.image : null);
  if (input) shown.push(picture(input, { class: "input", title: "input", "data-role": "input" }));
  const output = record.output || {};
  const files = [];
  if (output.overlay) files.push(["overlay", output.overlay]);
  for (const segment of output.segments || []) files.push([`mask ${segment.label}`, segment.mask]);
  for (const image of output.images || []) files.push(["image", image]);
  for (const [role, ref] of files) {
    if (ref && ref.url) {
      shown.push(picture(ref.url, { class: "output", title: role, "data-role": role.split(" ")[0],
                                    "data-job": record.id, "data-sha256": ref.sha256 }));
    }
  }
  return shown;
}

function jobCard(record) {
  const progress = record.status === "succeeded" ? 1 : record.progress;
  const card = el("article", { class: "job", "data-job": record.id, "data-status": record.status },
    el("div", { class: "head" },
      el("span", {}, el("strong", {}, record.kind), " ", el("span", { class: "id" }, record.id.slice(0, 8))),
      el("span", { class: `status ${record.status}` }, record.status)),
    el("div", { class: "bar" }, el("div", { style: `width: ${Math.round(progress * 100)}%` })),
    el("div", { class: "pictures" }, ...pictures(record)));
  if (record.output && record.output.text != null) card.append(el("p", { class: "text" }, record.output.text));
  if (record.error) card.append(el("p", { class: "error" }, `${record.error.code}: ${record.error.message}`));
  return card;
}

function upsertJob(record) {
  const existing = document.querySelector(`#jobs [data-job="${record.id}"]`);
  const card = jobCard(record);
  // Replace only what changed, so pictures that are already shown do not flicker.
  if (existing && existing.dataset.status === record.status && existing.dataset.status !== "running") return;
  if (existing) existing.replaceWith(card);
  else $("#jobs").prepend(card);
}

function renderJobs(records) {
  const wanted = new Set(records.map((r) => r.id));
  for (const card of document.querySelectorAll("#jobs > .job")) {
    if (!wanted.has(card.dataset.job)) card.remove();
  }
  for (const record of [...records].reverse()) upsertJob(record);
}

async function refresh() {
  try {
    const [queues, workers, jobs] = await Promise.all([
      api("/v1/queues").then((r) => r.json()), api("/v1/workers").then((r) => r.json()),
      api("/v1/jobs?limit=24").then((r) => r.json()),
    ]);
    renderQueues(queues);
    renderWorkers(workers);
    renderJobs(jobs.jobs);
  } catch (error) {
    $("#submit-error").textContent = error.message;
  }
}

// Server-sent events through fetch (EventSource cannot send the Authorization header).
async function follow(jobId) {
  const response = await api(`/v1/jobs/${jobId}/events`);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").find((line) => line.startsWith("data: "));
      if (data) upsertJob(JSON.parse(data.slice(6)));
    }
  }
}

// --- Submit ----------------------------------------------------------------------

function jobBody(form) {
  const kind = form.dataset.kind;
  const fields = new FormData(form);
  const text = (name) => (fields.get(name) || "").trim();
  if (kind === "caption") return { kind, input: text("prompt") ? { prompt: text("prompt") } : {} };
  if (kind === "segment") {
    const labels = text("labels").split(",").map((l) => l.trim()).filter(Boolean);
    return { kind, input: { labels: labels.length ? labels : null, threshold: Number(fields.get("threshold")) } };
  }
  const input = { prompt: text("prompt"), width: Number(fields.get("width")), height: Number(fields.get("height")),
                  steps: Number(fields.get("steps")) };
  if (text("seed")) input.seed = Number(text("seed"));
  return { kind, input };
}

async function submit(form) {
  $("#submit-error").textContent = "";
  const body = jobBody(form);
  const file = form.elements.image ? form.elements.image.files[0] : null;
  let request;
  if (file) {
    const parts = new FormData();
    parts.append("request", new Blob([JSON.stringify(body)], { type: "application/json" }));
    parts.append("image", file);
    request = { method: "POST", body: parts };
  } else {
    request = { method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" } };
  }
  const record = await (await api("/v1/jobs", request)).json();
  if (file) state.inputs.set(record.id, URL.createObjectURL(file));
  upsertJob(record);
  follow(record.id).catch((error) => { $("#submit-error").textContent = error.message; });
}

// --- Wiring ----------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("#sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    signIn($("#api-key").value.trim()).catch((error) => signOut(error.message));
  });
  $("#sign-out").addEventListener("click", () => signOut());
  for (const tab of document.querySelectorAll(".tabs button")) {
    tab.addEventListener("click", () => {
      for (const other of document.querySelectorAll(".tabs button")) other.classList.toggle("active", other === tab);
      for (const form of document.querySelectorAll("#submit form")) form.hidden = form.dataset.kind !== tab.dataset.kind;
    });
  }
  for (const form of document.querySelectorAll("#submit form")) {
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      submit(form).catch((error) => { $("#submit-error").textContent = error.message; });
    });
  }
  if (state.key) signIn(state.key).catch((error) => signOut(error.message));
});
