// The audit view: page through each list the last `usesearch audit` wrote, with the
// masks drawn (the segment tiles), and mark each item ok or wrong. The state lives in
// the URL hash (#list=swapped&offset=0&reviewed=false); data goes in as text only.
"use strict";

const $ = (id) => document.getElementById(id);
const LISTS = ["swapped", "overlooked", "badly_located", "leaks", "outliers"];
const PAGE = 24;

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function call(url, options = {}) {
  const response = await fetch(url, { headers: { Accept: "application/json", "Content-Type": "application/json" }, ...options });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.detail || `${response.status} ${response.statusText}`);
  return body;
}

function state() {
  const params = new URLSearchParams(location.hash.slice(1));
  const list = LISTS.includes(params.get("list")) ? params.get("list") : "swapped";
  return { list, offset: Math.max(0, parseInt(params.get("offset") || "0", 10) || 0), reviewed: params.get("reviewed") === "true" };
}

function go(next) {
  const params = new URLSearchParams({ list: next.list, offset: String(next.offset), reviewed: String(next.reviewed) });
  location.hash = params.toString();
}

function describe(kind, item) {
  const pct = (v) => `${(100 * v).toFixed(0)}%`;
  if (kind === "swapped") return `labelled ${item.labelled}; model prefers ${item.preferred} (margin ${item.score.toFixed(3)})`;
  if (kind === "overlooked") return `no annotation; looks like ${item.proposed} (${item.score.toFixed(3)})`;
  if (kind === "badly_located") return `${item.labelled}: best proposal overlaps ${pct(item.iou)}`;
  if (kind === "leaks") return `${item.kind} in ${item.splits.join(" and ")} (${item.score.toFixed(3)})`;
  return `${item.labelled}: ${item.score.toFixed(3)} from its class`;
}

function picture(src, alt) {
  const img = document.createElement("img");
  img.src = src;
  img.alt = alt;
  img.loading = "lazy";
  return img;
}

function card(kind, item) {
  const figure = document.createElement("figure");
  figure.className = "audit-item";
  figure.dataset.item = item.item;
  if (item.verdict) figure.classList.add(item.verdict);
  const pictures = document.createElement("div");
  pictures.className = "pictures";
  if (kind === "leaks") {
    for (const id of item.images.slice(0, 3)) pictures.append(picture(`/api/images/${id}/thumbnail.jpg?size=256`, `photo ${id}`));
  } else {
    pictures.append(picture(`/api/segments/${item.segment_id}/tile.png?size=192`, `segment ${item.segment_id}`));
    if (kind === "badly_located" && item.proposal_id) {
      pictures.append(picture(`/api/segments/${item.proposal_id}/tile.png?size=192`, `proposal ${item.proposal_id}`));
    }
  }
  const caption = document.createElement("figcaption");
  const what = document.createElement("div");
  what.className = "what";
  what.textContent = `#${item.rank} ${describe(kind, item)}`;
  const name = document.createElement("div");
  name.className = "name";
  name.textContent = kind === "leaks" ? item.paths.join(" · ") : `${item.item} · ${item.image || ""}`;
  name.title = name.textContent;
  const verdicts = document.createElement("div");
  verdicts.className = "verdicts";
  for (const verdict of ["ok", "wrong"]) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = verdict;
    button.dataset.verdict = verdict;
    button.setAttribute("aria-pressed", String(item.verdict === verdict));
    button.addEventListener("click", () => review(kind, item, item.verdict === verdict ? null : verdict, figure));
    verdicts.append(button);
  }
  caption.append(what, name, verdicts);
  figure.append(pictures, caption);
  return figure;
}

async function review(kind, item, verdict, figure) {
  try {
    await call(`/api/audit/${kind}/review`, { method: "POST", body: JSON.stringify({ item: item.item, verdict }) });
    item.verdict = verdict;
    figure.classList.remove("ok", "wrong");
    if (verdict) figure.classList.add(verdict);
    for (const button of figure.querySelectorAll(".verdicts button")) {
      button.setAttribute("aria-pressed", String(button.dataset.verdict === verdict));
    }
    setStatus(verdict ? `${item.item} marked ${verdict}` : `${item.item}: verdict taken back`);
    await loadSummary();
  } catch (error) {
    setStatus(`could not save the verdict: ${error.message}`, true);
  }
}

async function loadSummary() {
  const summary = await call("/api/audit");
  const nav = $("audit-lists");
  for (const old of nav.querySelectorAll("button")) old.remove();
  const now = state();
  for (const kind of LISTS) {
    const counts = summary.lists[kind] || { total: 0, reviewed: 0 };
    const button = document.createElement("button");
    button.type = "button";
    button.id = `list-${kind}`;
    button.textContent = `${kind.replace("_", " ")} (${counts.total - counts.reviewed} to review)`;
    button.classList.toggle("current", kind === now.list);
    button.addEventListener("click", () => go({ ...state(), list: kind, offset: 0 }));
    nav.append(button);
  }
  return summary.stale;
}

async function show() {
  const now = state();
  $("include-reviewed").checked = now.reviewed;
  try {
    const stale = await loadSummary();
    const page = await call(`/api/audit/${now.list}?offset=${now.offset}&limit=${PAGE}&include_reviewed=${now.reviewed}`);
    const items = $("audit-items");
    items.replaceChildren(...page.items.map((item) => card(now.list, item)));
    const last = Math.min(page.total, now.offset + page.items.length);
    $("page-info").textContent = page.total ? `${now.offset + 1}-${last} of ${page.total}` : "nothing left to review";
    $("prev-page").disabled = now.offset === 0;
    $("next-page").disabled = last >= page.total;
    setStatus(`${now.list.replace("_", " ")}: ${page.total} items${now.reviewed ? "" : " not yet reviewed"}`);
    if (stale) setStatus(stale, true);  // lists of the index as it was: said over everything else
  } catch (error) {
    setStatus(error.message, true);
  }
}

$("prev-page").addEventListener("click", () => go({ ...state(), offset: Math.max(0, state().offset - PAGE) }));
$("next-page").addEventListener("click", () => go({ ...state(), offset: state().offset + PAGE }));
$("include-reviewed").addEventListener("change", (event) => go({ ...state(), offset: 0, reviewed: event.target.checked }));
window.addEventListener("hashchange", show);
show();
