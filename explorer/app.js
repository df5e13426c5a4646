// The explorer page: sends the picked image with the chosen options to the page server (which
// forwards it to TorchServe with the inference key) and shows the answer. No framework, no build.
"use strict";

const MODEL = "squeezenet_saliency";
const PREDICT_URL = `/predictions/${MODEL}`;
const METHODS = [
  "vanilla", "gradcam", "smoothgrad", "smoothgrad_sq", "vargrad", "integrated_gradients",
];
const NOISY = ["smoothgrad", "smoothgrad_sq", "vargrad"];
// The options that only some methods take: the service refuses them elsewhere (invalid_option).
const METHOD_OPTIONS = {
  samples: NOISY,
  noise: NOISY,
  seed: NOISY,
  steps: ["integrated_gradients"],
  baseline: ["integrated_gradients"],
};
// Fields of the answer's "saliency" worth showing, beside the map itself.
const SALIENCY_DETAILS = [
  "method", "objective", "max", "samples", "noise", "seed", "steps", "baseline", "delta",
  "layer", "coarse_width", "coarse_height",
];

const $ = (id) => document.getElementById(id);
let image = null; // the picked File
let bitmap = Promise.resolve(null); // its decoded pixels (or null), to draw the crop the model saw
let previewUrl = null;
let generation = 0; // answers to an older request than the latest are dropped

class ServiceError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

function setState(state) {
  document.body.dataset.state = state;
  const busy = state === "busy";
  $("busy").hidden = !busy;
  $("explain").disabled = busy;
  $("compare").disabled = busy;
}

function showError(error) {
  $("error-code").textContent = error.code || "error";
  $("error-message").textContent = error.message;
  $("error").hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error-code").textContent = "";
  $("error-message").textContent = "";
}

// The service's error as it words it: the handler's {"error": {code, message}}, TorchServe's
// front end's {code, type, message}, or the page server's own (same format as the handler's).
function errorFrom(status, text) {
  let body = null;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON: keep the text
  }
  if (body && body.error && body.error.code) {
    return new ServiceError(body.error.code, body.error.message || "");
  }
  if (body && (body.type || body.code)) {
    return new ServiceError(String(body.type || body.code), body.message || "");
  }
  return new ServiceError(`http_${status}`, text.trim().slice(0, 300) || "no message");
}

function pngUrl(base64) {
  return `data:image/png;base64,${base64}`;
}

function value(id) {
  return $(id).value.trim();
}

// "285 Egyptian cat" (a datalist entry) or "285" send the index; other text goes as a name,
// which the service resolves (or refuses: unknown_label, ambiguous_label).
function targetOption() {
  const text = value("target");
  if (!text) return {};
  const index = text.match(/^(\d+)(\s|$)/);
  return { target: index ? index[1] : text };
}

function commonOptions() {
  return {
    topk: value("topk"),
    objective: $("objective").value,
    colormap: $("colormap").value,
    clip: value("clip"),
    overlay: $("overlay").checked ? "true" : "false",
    ...targetOption(),
  };
}

function methodOptions(method) {
  const options = { method };
  for (const [name, methods] of Object.entries(METHOD_OPTIONS)) {
    const text = value(name);
    if (text && methods.includes(method)) options[name] = text;
  }
  return options;
}

async function predict(options) {
  const body = new FormData();
  body.append("image", image, image.name || "image");
  for (const [name, text] of Object.entries(options)) {
    if (text !== "" && text !== undefined) body.append(name, text);
  }
  const started = performance.now();
  let response;
  try {
    // The page server checks this header: a form on another site cannot send it.
    response = await fetch(PREDICT_URL, {
      method: "POST", body, headers: { "X-Explorer": "1" }, cache: "no-store",
    });
  } catch (error) {
    throw new ServiceError("network_error", `The page server did not answer: ${error.message}`);
  }
  const text = await response.text();
  const milliseconds = Math.round(performance.now() - started);
  if (!response.ok) throw errorFrom(response.status, text);
  let answer;
  try {
    answer = JSON.parse(text);
  } catch {
    throw new ServiceError("bad_response", text.slice(0, 300));
  }
  if (answer.error) throw errorFrom(response.status, text);
  return { answer, milliseconds };
}

function mapPicture(answer) {
  return answer.heatmap || answer.saliency;
}

async function drawCrop(box) {
  const canvas = $("crop");
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  const pixels = await bitmap;
  if (!pixels || !box) return;
  const [x0, y0, x1, y1] = box;
  context.drawImage(pixels, x0, y0, x1 - x0, y1 - y0, 0, 0, canvas.width, canvas.height);
}

function percent(probability) {
  return `${(100 * probability).toFixed(probability < 0.001 ? 3 : 1)} %`;
}

function showTopk(answer) {
  const body = $("topk-table").querySelector("tbody");
  body.replaceChildren();
  answer.topk.forEach((entry, rank) => {
    const row = body.insertRow();
    row.className = entry.index === answer.target.index ? "target" : "";
    row.insertCell().textContent = String(rank + 1);
    const name = row.insertCell();
    const button = document.createElement("button");
    button.type = "button";
    button.className = "link";
    button.title = "explain this class";
    button.textContent = `${entry.label} (${entry.index})`;
    button.addEventListener("click", () => {
      $("target").value = `${entry.index} ${entry.label}`;
      explain();
    });
    name.append(button);
    const probability = row.insertCell();
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${Math.max(1, Math.round(100 * entry.probability))}px`;
    probability.append(bar, ` ${percent(entry.probability)}`);
  });
}

function showDetails(answer, milliseconds) {
  const rows = [
    ["target", `${answer.target.label} (${answer.target.index}), score ${answer.target.score.toFixed(3)}`],
  ];
  for (const name of SALIENCY_DETAILS) {
    if (answer.saliency && answer.saliency[name] !== undefined) {
      rows.push([name, String(answer.saliency[name])]);
    }
  }
  const picture = answer.heatmap || answer.overlay;
  if (picture && picture.clip !== undefined) rows.push(["clip", String(picture.clip)]);
  rows.push(["crop_box", JSON.stringify(answer.crop_box)]);
  if (answer.serving) {
    rows.push(["serving", `batch of ${answer.serving.batch_size} on ${answer.serving.device}`]);
  }
  rows.push(["time", `${milliseconds} ms`]);
  const list = $("details");
  list.replaceChildren();
  for (const [term, text] of rows) {
    const dt = document.createElement("dt");
    dt.textContent = term;
    const dd = document.createElement("dd");
    dd.textContent = text;
    list.append(dt, dd);
  }
}

async function showResult(answer, milliseconds) {
  const prediction = answer.prediction;
  $("prediction").textContent =
    `${prediction.label} (${prediction.index}), p = ${prediction.probability.toFixed(3)}`;
  const picture = mapPicture(answer);
  $("map-image").src = pngUrl(picture.png);
  $("map-caption").textContent = answer.heatmap
    ? `${answer.saliency.method} map, ${answer.heatmap.colormap}`
    : `${answer.saliency.method} map, gray (the data)`;
  $("overlay-figure").hidden = !answer.overlay;
  if (answer.overlay) $("overlay-image").src = pngUrl(answer.overlay.png);
  showTopk(answer);
  showDetails(answer, milliseconds);
  $("result").hidden = false;
  await drawCrop(answer.crop_box);
}

function needImage() {
  if (image) return true;
  showError(new ServiceError("no_image", "Drop or pick an image first."));
  setState("error");
  return false;
}

async function explain() {
  clearError();
  if (!needImage()) return;
  const mine = ++generation;
  setState("busy");
  const method = $("method").value;
  try {
    const { answer, milliseconds } = await predict({ ...commonOptions(), ...methodOptions(method) });
    if (mine !== generation) return;
    await showResult(answer, milliseconds);
    setState("done");
  } catch (error) {
    if (mine !== generation) return;
    $("result").hidden = true; // an answer to other options would pass for this one's
    showError(error);
    setState("error");
  }
}

function compareCell(method) {
  const cell = document.createElement("figure");
  cell.className = "compare-cell";
  cell.dataset.method = method;
  const caption = document.createElement("figcaption");
  caption.textContent = `${method}: working…`;
  cell.append(caption);
  return cell;
}

function fillCell(cell, answer, milliseconds) {
  const map = document.createElement("img");
  map.className = "compare-map";
  map.alt = `${cell.dataset.method} map`;
  map.width = map.height = 224;
  map.src = pngUrl(mapPicture(answer).png);
  cell.prepend(map);
  if (answer.overlay) {
    const overlay = document.createElement("img");
    overlay.className = "compare-overlay";
    overlay.alt = `${cell.dataset.method} overlay`;
    overlay.width = overlay.height = 224;
    overlay.src = pngUrl(answer.overlay.png);
    map.after(overlay);
  }
  cell.querySelector("figcaption").textContent = `${cell.dataset.method}, ${milliseconds} ms`;
}

function failCell(cell, error) {
  cell.classList.add("failed");
  const caption = cell.querySelector("figcaption");
  caption.replaceChildren();
  const code = document.createElement("code");
  code.className = "compare-error";
  code.textContent = error.code;
  caption.append(`${cell.dataset.method}: `, code, ` ${error.message}`);
}

// Every method on the same image, options and class. Without a target each request explains
// its predicted class, which is the same for all: the class comes from the clean image.
async function compareAll() {
  clearError();
  if (!needImage()) return;
  const mine = ++generation;
  setState("busy");
  const grid = $("compare-grid");
  const cells = METHODS.map(compareCell);
  grid.replaceChildren(...cells);
  $("comparison").hidden = false;
  const common = commonOptions();
  const results = await Promise.allSettled(
    METHODS.map((method) => predict({ ...common, ...methodOptions(method) })),
  );
  if (mine !== generation) return;
  let title = "Every method";
  results.forEach((result, i) => {
    if (result.status === "fulfilled") {
      fillCell(cells[i], result.value.answer, result.value.milliseconds);
      const target = result.value.answer.target;
      title = `Every method, explaining ${target.label} (${target.index})`;
    } else {
      failCell(cells[i], result.reason);
    }
  });
  $("comparison-title").textContent = title;
  const failures = results.filter((result) => result.status === "rejected");
  if (failures.length === results.length) showError(failures[0].reason);
  setState(failures.length === results.length ? "error" : "done");
}

function useFile(file) {
  if (!file) return;
  image = file;
  // Decoded by the browser (EXIF orientation applied, as the service does); null if it cannot:
  // the service will say what it makes of the file.
  bitmap = createImageBitmap(file).catch(() => null);
  generation++;
  clearError();
  $("result").hidden = true;
  $("comparison").hidden = true;
  $("drop-text").textContent = `${file.name} (${Math.ceil(file.size / 1024)} KB): Explain, or drop another`;
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = URL.createObjectURL(file);
  $("preview").onerror = () => {
    $("preview").hidden = true;
  };
  $("preview").src = previewUrl;
  $("preview").hidden = false;
  setState("idle");
}

function showMethodFields() {
  const method = $("method").value;
  for (const fields of document.querySelectorAll(".method-fields")) {
    fields.hidden = !fields.dataset.methods.split(" ").includes(method);
  }
}

async function loadLabels() {
  try {
    const response = await fetch("/labels.json");
    const names = await response.json(); // {"0": "tench", ...}: the archive's index_to_name.json
    const options = document.createDocumentFragment();
    for (const [index, name] of Object.entries(names)) {
      const option = document.createElement("option");
      option.value = `${index} ${name}`;
      options.append(option);
    }
    $("classes").replaceChildren(options);
  } catch (error) {
    $("target").placeholder = "class index or name (the class list did not load)";
  }
}

async function checkServer() {
  const status = $("server-status");
  try {
    const response = await fetch("/ping", { cache: "no-store" });
    const text = await response.text();
    if (!response.ok) throw errorFrom(response.status, text);
    status.textContent = `TorchServe: ${JSON.parse(text).status}`;
    status.className = "server-status ok";
  } catch (error) {
    status.textContent = `TorchServe: ${error.code || "unreachable"}: ${error.message}`;
    status.className = "server-status failed";
  }
}

function setUp() {
  const zone = $("drop-zone");
  $("file-input").addEventListener("change", (event) => useFile(event.target.files[0]));
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    useFile(event.dataTransfer.files[0]);
  });
  $("controls").addEventListener("submit", (event) => {
    event.preventDefault();
    explain();
  });
  $("compare").addEventListener("click", compareAll);
  $("method").addEventListener("change", showMethodFields);
  showMethodFields();
  loadLabels();
  checkServer();
}

setUp();
