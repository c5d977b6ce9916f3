// ldm-serve page: fills the form from /api/config, streams /api/generate, keeps a gallery of results.
"use strict";

const $ = (id) => document.getElementById(id);
const FIELDS = ["prompt", "negative_prompt", "sampler_name", "steps", "cfg_scale", "seed", "width", "height",
                "batch_size"];
const NUMBERS = new Set(["steps", "cfg_scale", "seed", "width", "height", "batch_size"]);
let currentJob = null;

async function loadConfig() {
  const config = await (await fetch("api/config")).json();
  $("model").textContent = `${config.model} [${config.model_hash}] · ${config.modes.join(", ")}`;
  for (const sampler of config.samplers) {
    $("sampler_name").add(new Option(sampler.name, sampler.name));
  }
  const d = config.defaults;
  $("sampler_name").value = d.sampler_name;
  $("steps").value = d.steps;
  $("steps").max = config.limits.max_steps;
  $("cfg_scale").value = d.cfg_scale;
  $("batch_size").max = config.limits.max_images;
  for (const side of ["width", "height"]) {
    $(side).value = config.default_size;
    $(side).step = config.size_step;
    $(side).min = config.size_step;
    $(side).max = config.limits.max_size;
  }
}

function settings() {
  const body = {};
  for (const name of FIELDS) {
    body[name] = NUMBERS.has(name) ? Number($(name).value) : $(name).value;
  }
  return body;
}

function applySettings(body) {
  for (const name of FIELDS) {
    if (body[name] !== undefined && body[name] !== null) $(name).value = body[name];
  }
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function ordinal(n) {
  return n + (["th", "st", "nd", "rd"][(n % 100 - 20) % 10] || ["th", "st", "nd", "rd"][n % 100] || "th");
}

function handle(event, body) {
  currentJob = event.job;
  if (event.event === "queued") {
    const place = event.position;
    setStatus(place === 0 ? "Starting…" : place === 1 ? "Next in the queue…" : `Waiting: ${ordinal(place)} in the queue`);
  } else if (event.event === "progress") {
    setStatus(`Step ${event.step} of ${event.total}`);
    $("progress").value = event.step / event.total;
    if (event.preview) $("preview").src = event.preview;
  } else if (event.event === "done" || event.event === "cancelled") {
    $("progress").value = event.event === "done" ? 1 : $("progress").value;
    setStatus(event.event === "done" ? `Done: ${event.images.length} image(s).` : "Cancelled.");
    if (event.images.length) $("preview").src = event.images[0];
    event.images.forEach((src, i) => addResult(src, {...body, seed: event.seeds[i], batch_size: 1}));
  } else if (event.event === "error") {
    setStatus(`Failed: ${event.error}`, true);
  }
}

function addResult(src, body) {
  const card = document.createElement("div");
  card.className = "result";
  const image = new Image();
  image.src = src;
  const text = document.createElement("pre");
  text.textContent = `${body.prompt}\n${body.negative_prompt ? "not: " + body.negative_prompt + "\n" : ""}` +
    `${body.sampler_name}, ${body.steps} steps, guidance ${body.cfg_scale} (w = ${body.cfg_scale - 1}), ` +
    `seed ${body.seed}, ${body.width}×${body.height}`;
  const actions = document.createElement("div");
  actions.className = "actions";
  const button = (label, onclick) => {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    b.onclick = onclick;
    actions.append(b);
  };
  button("Reuse seed", () => { $("seed").value = body.seed; });
  button("Reuse all", () => applySettings(body));
  const link = document.createElement("a");
  link.href = src;
  link.download = `ldm-${body.seed}.png`;
  link.textContent = "Download PNG";
  actions.append(link);
  card.append(image, text, actions);
  $("gallery").prepend(card);
}

async function generate(submitEvent) {
  submitEvent.preventDefault();
  const body = settings();
  $("generate").disabled = true;
  $("cancel").disabled = false;
  $("progress").value = 0;
  setStatus("Sending…");
  try {
    const response = await fetch("api/generate", {
      method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
    });
    if (!response.ok) {
      const detail = (await response.json()).detail;
      throw new Error(Array.isArray(detail) ? detail.map((d) => d.msg).join(" ") : detail);
    }
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffered = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffered += value;
      const lines = buffered.split("\n");
      buffered = lines.pop();
      lines.filter((l) => l.trim()).forEach((l) => handle(JSON.parse(l), body));
    }
  } catch (error) {
    setStatus(`Error: ${error.message}`, true);
  } finally {
    currentJob = null;
    $("generate").disabled = false;
    $("cancel").disabled = true;
  }
}

async function cancel() {
  if (currentJob) await fetch(`api/jobs/${currentJob}/cancel`, {method: "POST"});
}

$("form").addEventListener("submit", generate);
$("cancel").addEventListener("click", cancel);
$("random_seed").addEventListener("click", () => { $("seed").value = -1; });
loadConfig().catch((error) => setStatus(`Could not load the server's settings: ${error.message}`, true));
