// ldm-serve page: fills the form from /api/config, streams /api/generate, keeps a gallery of results.
// Editing (image-to-image, inpainting with a painted mask, outpainting by margins) is in edit.js.
"use strict";

const $ = (id) => document.getElementById(id);
const FIELDS = ["prompt", "negative_prompt", "sampler_name", "steps", "cfg_scale", "seed", "width", "height",
                "batch_size"];
const EDIT_FIELDS = ["denoising_strength", "mask_blur", "repaint_jump_length", "repaint_jump_n_sample"];
const MARGINS = ["outpaint_left", "outpaint_top", "outpaint_right", "outpaint_bottom"];  // ldm-generate's order
const NUMBERS = new Set(["steps", "cfg_scale", "seed", "width", "height", "batch_size", ...EDIT_FIELDS]);
const PAINTING = new Set(["inpaint", "outpaint"]);
let currentJob = null;
let config = null;

async function loadConfig() {
  config = await (await fetch("api/config")).json();
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
  for (const side of ["width", "height", ...MARGINS]) {
    $(side).step = config.size_step;
    $(side).max = config.limits.max_size;
  }
  for (const side of ["width", "height"]) {
    $(side).value = config.default_size;
    $(side).min = config.size_step;
  }
  for (const name of ["mask_blur", "repaint_jump_length", "repaint_jump_n_sample"]) $(name).value = d[name];
  $("keep_unmasked").checked = d.keep_unmasked;
  for (const mode of config.modes) $(`mode_${mode}`).hidden = false;
  if (config.modes.includes("inpaint")) $("mode_outpaint").hidden = false;
  setMode("txt2img");
}

function mode() {
  return document.querySelector("input[name=mode]:checked").value;
}

// Show the controls of `name`; strength starts on ldm-generate's default for it.
function setMode(name, keepStrength = false) {
  document.querySelector(`input[name=mode][value=${name}]`).checked = true;
  $("edit").hidden = name === "txt2img";
  $("mask_tools").hidden = name !== "inpaint";
  $("margins").hidden = name !== "outpaint";
  $("paint_options").hidden = !PAINTING.has(name);
  Edit.paintable(name === "inpaint");
  if (!keepStrength && name !== "txt2img") {
    $("denoising_strength").value = config.strength_defaults[PAINTING.has(name) ? "inpaint" : "img2img"];
  }
}

// The init image (a data URL) as the image to edit; width and height follow it, rounded down to the VAE factor.
async function useImage(url) {
  const size = await Edit.setImage(url);
  const step = config.size_step;
  $("width").value = Math.max(step, size.width - size.width % step);
  $("height").value = Math.max(step, size.height - size.height % step);
  if (mode() === "txt2img") setMode("img2img");
}

function settings() {
  const body = {mode: mode()};
  for (const name of FIELDS) {
    body[name] = NUMBERS.has(name) ? Number($(name).value) : $(name).value;
  }
  if (body.mode === "txt2img") return body;
  if (!Edit.source()) throw new Error("upload an image to edit first (or use \"Edit this\" on a result)");
  body.init_images = [Edit.source()];
  for (const name of EDIT_FIELDS) body[name] = Number($(name).value);
  body.keep_unmasked = $("keep_unmasked").checked;
  if (body.mode === "inpaint") {
    body.mask = Edit.mask();
    if (!body.mask) throw new Error("paint the area to repaint on the image first");
  }
  if (body.mode === "outpaint") body.outpaint = MARGINS.map((name) => Number($(name).value));
  return body;
}

async function applySettings(body) {
  setMode(body.mode || "txt2img", true);
  if (body.init_images) await Edit.setImage(body.init_images[0]);
  if (body.mask) await Edit.setMask(body.mask);
  for (const name of [...FIELDS, ...EDIT_FIELDS]) {
    if (body[name] !== undefined && body[name] !== null) $(name).value = body[name];
  }
  if (body.keep_unmasked !== undefined) $("keep_unmasked").checked = body.keep_unmasked;
  if (body.outpaint) MARGINS.forEach((name, i) => { $(name).value = body.outpaint[i]; });
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

function describe(body) {
  const lines = [body.prompt];
  if (body.negative_prompt) lines.push(`not: ${body.negative_prompt}`);
  lines.push(`${body.sampler_name}, ${body.steps} steps, guidance ${body.cfg_scale} (w = ${body.cfg_scale - 1}), ` +
             `seed ${body.seed}`);
  if (body.mode && body.mode !== "txt2img") {
    let edit = `${body.mode}, strength ${body.denoising_strength}`;
    if (body.outpaint) edit += `, margins ${body.outpaint.join(",")} (left,top,right,bottom)`;
    if (PAINTING.has(body.mode)) {
      edit += body.keep_unmasked ? `, keep unmasked (blur ${body.mask_blur})` : "";
      if (body.repaint_jump_n_sample > 1) edit += `, RePaint ${body.repaint_jump_length}×${body.repaint_jump_n_sample}`;
    }
    lines.push(edit);
  }
  return lines.join("\n");
}

function addResult(src, body) {
  const card = document.createElement("div");
  card.className = "result";
  const image = new Image();
  const text = document.createElement("pre");
  text.textContent = describe(body);
  image.onload = () => { text.textContent += `, ${image.naturalWidth}×${image.naturalHeight}`; };
  image.src = src;
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
  button("Reuse all", () => applySettings(body).catch((error) => setStatus(`Error: ${error.message}`, true)));
  if (config.modes.length > 1) button("Edit this", () => useImage(src));
  const link = document.createElement("a");
  link.href = src;
  link.download = `ldm-${body.seed}.png`;
  link.textContent = "Download PNG";
  actions.append(link);
  card.append(image, text, actions);
  $("gallery").prepend(card);
}

async function readStream(response, body) {
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
}

async function generate(submitEvent) {
  submitEvent.preventDefault();
  let body;
  try {
    body = settings();
  } catch (error) {
    setStatus(`Error: ${error.message}`, true);
    return;
  }
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
    await readStream(response, body);
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
for (const radio of document.querySelectorAll("input[name=mode]")) {
  radio.addEventListener("change", () => setMode(radio.value));
}
$("init_file").addEventListener("change", async () => {
  const file = $("init_file").files[0];
  if (!file) return;
  try {
    await useImage(await Edit.readFile(file));
  } catch (error) {
    setStatus(`Error: ${error.message}`, true);
  }
});
Edit.start();
loadConfig().catch((error) => setStatus(`Could not load the server's settings: ${error.message}`, true));
