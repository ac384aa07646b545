// usesearch page: every search lives in the URL hash, so Back and shared links work.
// Data is only ever put into the page with textContent/attributes, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const FILTERS = ["path", "min_area", "per_image", "distinct", "min_score", "k", "refine", "refine_top"];
const VIEW_SIZE = 1024;
let current = null; // segment shown in the viewer

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function getJSON(url) {
  const response = await fetch(url, { headers: { Accept: "application/json" } });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.detail || `${response.status} ${response.statusText}`);
  return body;
}

function filtersFromForm() {
  const params = new URLSearchParams();
  const path = $("path").value.trim();
  if (path) params.set("path", path);
  const minArea = parseInt($("min-area").value, 10);
  if (minArea > 0) params.set("min_area", String(minArea));
  if ($("per-image").checked) params.set("per_image", "true");
  if ($("distinct").checked) params.set("distinct", "true");
  const minScore = $("min-score").value.trim();
  if (minScore !== "") params.set("min_score", minScore);
  params.set("k", $("k").value);
  if ($("refine").checked) {
    params.set("refine", "sam3");
    params.set("refine_top", $("refine-top").value || "20");
  }
  return params;
}

function formFromParams(params) {
  $("q").value = params.get("q") || "";
  $("path").value = params.get("path") || "";
  $("min-area").value = params.get("min_area") || "0";
  $("per-image").checked = params.get("per_image") === "true";
  $("distinct").checked = params.get("distinct") === "true";
  $("min-score").value = params.get("min_score") || "";
  if (params.get("k")) $("k").value = params.get("k");
  $("refine").checked = params.get("refine") === "sam3";
  $("refine-top").value = params.get("refine_top") || "20";
  if (["path", "min_area", "per_image", "distinct", "min_score", "refine"].some((name) => params.get(name))) $("filters").open = true;
}

function go(params) {
  const hash = params.toString();
  if (location.hash.slice(1) === hash) runSearch(); // same search again: no hashchange
  else location.hash = hash; // hashchange runs the search
}

// A hit whose photo is gone or changed since indexing (the server answers 410 with why):
// a grey "photo gone" tile saying why, as the CLI's contact sheet draws it, not a broken
// image. Another failure (a busy server's 503) is said as not loaded, not as a photo lost.
async function showGone(figure, img, url) {
  const gone = document.createElement("div");
  gone.className = "gone";
  gone.textContent = "not loaded";
  figure.replaceChild(gone, img);
  try {
    const response = await fetch(url, { headers: { Accept: "application/json" } });
    const body = await response.json().catch(() => ({}));
    if (response.status === 410) gone.textContent = "photo gone";
    gone.title = body.detail || `${response.status} ${response.statusText}: search again to retry`;
  } catch {
    gone.title = "the server could not be reached: search again to retry";
  }
}

function tile(hit) {
  const figure = document.createElement("figure");
  figure.className = "tile";
  figure.tabIndex = 0;
  figure.dataset.segmentId = hit.segment_id;
  if (hit.refined_by) figure.classList.add("refined");
  const img = document.createElement("img");
  img.src = hit.tile_url; // a refined hit's tile comes inline (data URL): its mask is no stored segment
  img.alt = hit.refined_by ? `SAM 3 instance in ${hit.image}` : `segment ${hit.segment_id} of ${hit.image}`;
  img.loading = "lazy";
  img.addEventListener("error", () => showGone(figure, img, hit.tile_url), { once: true });
  const caption = document.createElement("figcaption");
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = `#${hit.rank} ${hit.score.toFixed(3)}`;
  if (hit.refined_by) {
    score.title = `SAM 3 score; best-overlapping stored segment's USE score: ${hit.use_score == null ? "none" : hit.use_score.toFixed(3)}`;
  }
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = hit.image.split(/[\\/]/).pop();
  name.title = hit.image;
  caption.append(score, name);
  const like = document.createElement("button");
  like.type = "button";
  like.className = "like";
  like.textContent = "More like this";
  like.addEventListener("click", (event) => {
    event.stopPropagation();
    moreLike(hit.segment_id);
  });
  figure.append(img, caption);
  if (hit.segment_id) figure.append(like); // a refined hit: more like the stored segment it overlaps best
  const open = () => hit.segment_id && openSegment(hit.segment_id);
  figure.addEventListener("click", open);
  figure.addEventListener("keydown", (event) => { if (event.key === "Enter") open(); });
  return figure;
}

async function runSearch() {
  const params = new URLSearchParams(location.hash.slice(1));
  formFromParams(params);
  const query = params.get("q");
  const like = params.get("like");
  if (!query && !like) return;
  const filters = new URLSearchParams(FILTERS.filter((f) => params.has(f)).map((f) => [f, params.get(f)]));
  const url = like
    ? `/api/segments/${encodeURIComponent(like)}/similar?${filters}`
    : `/api/search?${new URLSearchParams([["q", query], ...filters])}`;
  setStatus("searching…");
  const started = performance.now(); // the wait as the user had it: took_ms is the server's search alone
  try {
    const result = await getJSON(url);
    const took = `${(performance.now() - started).toFixed(0)} ms`;
    $("results").replaceChildren(...result.hits.map(tile));
    const what = like ? `segments like #${like}` : `“${query}”`;
    if (result.refined_photos != null) {
      const skipped = result.skipped && result.skipped.length
        ? `; ${result.skipped.length} photo(s) skipped, e.g. ${result.skipped[0]}` : "";
      setStatus(`${result.hits.length} SAM 3 instances of ${what} in the top ${result.refined_photos} photos (${result.image_steps} not cached) in ${took}${skipped}`);
    } else {
      const why = result.notes ? `: ${result.notes.join("; ")}` : ""; // no hit: a filter names what the index lacks
      setStatus(`${result.hits.length} of ${result.segments_indexed} segments for ${what} in ${took}${why}`);
    }
  } catch (error) {
    $("results").replaceChildren();
    setStatus(error.message, true);
  }
}

function moreLike(segmentId) {
  const params = filtersFromForm();
  params.set("like", String(segmentId));
  go(params);
}

function meta(rows) {
  const list = $("viewer-meta");
  list.replaceChildren();
  for (const [key, value] of rows) {
    const dt = document.createElement("dt");
    dt.textContent = key;
    const dd = document.createElement("dd");
    dd.textContent = value;
    list.append(dt, dd);
  }
}

function showSegment(segment) {
  current = segment.segment_id;
  $("viewer-overlay").src = `/api/segments/${segment.segment_id}/overlay.png?size=${VIEW_SIZE}`;
  $("mask-link").href = segment.mask_url;
  $("json-link").href = `/api/segments/${segment.segment_id}`;
  meta([
    ["segment", String(segment.segment_id)],
    ["image", segment.image],
    ["bbox (x, y, w, h)", segment.bbox.join(", ")],
    ["area", `${segment.area} px`],
    ["predicted IoU", segment.predicted_iou == null ? "–" : segment.predicted_iou.toFixed(3)],
  ]);
  for (const img of $("image-segments").children) {
    img.classList.toggle("current", img.dataset.segmentId === String(current));
  }
  for (const figure of $("results").children) {
    figure.classList.toggle("selected", figure.dataset.segmentId === String(current));
  }
}

async function openSegment(segmentId) {
  try {
    const segment = await getJSON(`/api/segments/${segmentId}`);
    const image = await getJSON(segment.image_url);
    $("viewer").hidden = false;
    $("viewer-image").src = `${image.thumbnail_url}?size=${VIEW_SIZE}`;
    $("viewer-image").alt = image.image;
    const strip = image.segments.map((other) => {
      const img = document.createElement("img");
      img.src = `${other.tile_url}?size=96`;
      img.alt = `segment ${other.segment_id}`;
      img.title = `segment ${other.segment_id}, ${other.area} px`;
      img.loading = "lazy";
      img.dataset.segmentId = other.segment_id;
      img.addEventListener("click", () => showSegment(other));
      return img;
    });
    $("image-segments").replaceChildren(...strip);
    showSegment(segment);
  } catch (error) {
    setStatus(error.message, true);
  }
}

async function showInfo() {
  try {
    const info = await getJSON("/api/info");
    $("index-info").textContent = `${info.images_done} images, ${info.segments} segments, model ${info.fingerprint}`;
  } catch (error) {
    $("index-info").textContent = error.message;
  }
}

// -- search by a region of any photo: the file goes to the server in the request
// body only (never stored); a click is a point prompt, a drag a box prompt.
let regionFile = null;
let regionPhoto = null; // data URL of the photo as chosen (the page's CSP allows data: images)
let regionShown = false; // drawn: a browser that cannot show a TIFF drew none, and a click on it sent point -1,-1

function pickRegionPhoto(file) {
  if (!file) return;
  regionFile = file;
  regionShown = false; // until this one is drawn: a click meanwhile sent it with the last one's pixels
  const reader = new FileReader();
  reader.onload = () => {
    const img = $("region-photo");
    regionPhoto = reader.result;
    img.onload = () => {
      if (regionShown || img.src !== regionPhoto) return; // (the region drawn on it, or shown again)
      regionShown = true;
      setStatus("click a point, or drag a box, on the photo");
    };
    img.onerror = () => {
      if (img.src !== regionPhoto) return;
      setStatus(`this browser cannot show ${file.name} (${file.type || "an unknown type"}): choose a PNG, JPEG or `
        + "WebP copy of it, or search its region with `usesearch similar --image`", true);
    };
    img.src = regionPhoto;
    $("region-stage").hidden = false;
    $("region-search").open = true;
  };
  reader.readAsDataURL(file);
}

function photoPixel(event) {
  const img = $("region-photo");
  const rect = img.getBoundingClientRect();
  const x = Math.min(img.naturalWidth - 1, Math.max(0, (event.clientX - rect.left) * img.naturalWidth / rect.width));
  const y = Math.min(img.naturalHeight - 1, Math.max(0, (event.clientY - rect.top) * img.naturalHeight / rect.height));
  return [Math.round(x), Math.round(y), event.clientX - rect.left, event.clientY - rect.top];
}

async function searchRegion(prompt) {
  const params = filtersFromForm();
  for (const [key, value] of Object.entries(prompt)) params.set(key, value);
  setStatus("finding the region and searching…");
  const started = performance.now(); // (the upload and SAM's region too: took_ms is the search alone)
  try {
    const response = await fetch(`/api/region-search?${params}`, { method: "POST", body: regionFile,
      headers: { "Content-Type": regionFile.type || "application/octet-stream", Accept: "application/json" } });
    const result = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(result.detail || `${response.status} ${response.statusText}`);
    $("region-photo").src = result.region.overlay; // the region SAM chose, drawn on the photo
    $("results").replaceChildren(...result.hits.map(tile));
    setStatus(`${result.hits.length} segments like the region (${result.region.area} px) in ${(performance.now() - started).toFixed(0)} ms`);
  } catch (error) {
    setStatus(error.message, true);
  }
}

function wireRegionSearch() {
  const img = $("region-photo");
  let start = null;
  $("region-file").addEventListener("change", (event) => pickRegionPhoto(event.target.files[0]));
  document.addEventListener("dragover", (event) => event.preventDefault());
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    pickRegionPhoto(event.dataTransfer.files[0]);
  });
  img.addEventListener("dragstart", (event) => event.preventDefault());
  img.addEventListener("mousedown", (event) => { start = regionShown ? photoPixel(event) : null; });
  img.addEventListener("mousemove", (event) => {
    if (!start) return;
    const now = photoPixel(event);
    const box = $("region-box");
    box.hidden = false;
    Object.assign(box.style, { left: `${Math.min(start[2], now[2])}px`, top: `${Math.min(start[3], now[3])}px`,
      width: `${Math.abs(now[2] - start[2])}px`, height: `${Math.abs(now[3] - start[3])}px` });
  });
  img.addEventListener("mouseup", (event) => {
    if (!start) return;
    const end = photoPixel(event);
    $("region-box").hidden = true;
    img.src = regionPhoto; // the plain photo until the new region comes back
    const [x0, y0, x1, y1] = [Math.min(start[0], end[0]), Math.min(start[1], end[1]), Math.max(start[0], end[0]), Math.max(start[1], end[1])];
    const dragged = Math.abs(end[2] - start[2]) > 4 || Math.abs(end[3] - start[3]) > 4;
    start = null;
    searchRegion(dragged ? { box: `${x0},${y0},${x1 - x0 + 1},${y1 - y0 + 1}` } : { point: `${end[0]},${end[1]}` });
  });
}

document.addEventListener("DOMContentLoaded", () => {
  wireRegionSearch();
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const query = $("q").value.trim();
    if (!query) return setStatus("type what to look for", true);
    const params = filtersFromForm();
    params.set("q", query);
    go(params);
  });
  $("viewer-close").addEventListener("click", () => { $("viewer").hidden = true; });
  $("more-like-this").addEventListener("click", () => current && moreLike(current));
  window.addEventListener("hashchange", runSearch);
  showInfo();
  runSearch();
});
