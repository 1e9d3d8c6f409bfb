// The Kiwi dashboard: sources with live rates (from /ui/stats, once a
// second) and a live event viewer (through the JavaScript client served at
// /kiwi.js). The address bar keeps the viewer's choice (?source=ID&mode=pull),
// so a link opens the same view.

import { KiwiClient, readable } from "/kiwi.js";

const MAX_EVENTS = 200;
const STATS_INTERVAL_MS = 1000;

const $ = (selector) => document.querySelector(selector);
const params = new URLSearchParams(location.search);
const wsUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/`;

const state = {
  sources: new Map(), // id -> latest stats row
  previous: null, // the previous stats answer, for rates
  watching: null, // {sourceId, mode, from}
  received: 0,
};

const client = new KiwiClient(wsUrl, { token: params.get("access_token") || undefined });
client.on("state", (value) => {
  const pill = $("#connection");
  pill.dataset.state = value;
  pill.textContent = value === "open" ? "connected" : value === "waiting" ? "reconnecting" : value;
});
client.on("result", (data) => {
  if (!state.watching || data.sourceId !== state.watching.sourceId) return;
  state.received += 1;
  addEvent(data);
  showStatus();
});
client.on("notice", (data) => {
  if (!state.watching || data.sourceId !== state.watching.sourceId) return;
  const item = document.createElement("li");
  item.className = "notice";
  item.textContent =
    data.type === "LAG" ? `missed ${data.count} events (LAG)` : `${data.type}: ${data.message || ""}`;
  prepend(item);
  if (data.type === "SUBSCRIPTION_CLOSED") stopped("The server ended the subscription.");
});
client.connect();

// Sources and rates

function rate(id, field, now) {
  const before = state.previous?.sources.find((s) => s.id === id);
  if (!before || !state.previous) return "–";
  const seconds = now.time - state.previous.time;
  if (seconds <= 0) return "–";
  const value = (now.sources.find((s) => s.id === id)[field] - before[field]) / seconds;
  return value >= 10 ? value.toFixed(0) : value.toFixed(1);
}

function renderSources(stats) {
  $("#connections").textContent = String(stats.connections);
  const body = $("#sources tbody");
  const select = $("#source");
  for (const source of stats.sources) {
    let row = body.querySelector(`tr[data-source="${CSS.escape(source.id)}"]`);
    if (!row) {
      row = document.createElement("tr");
      row.dataset.source = source.id;
      for (const name of ["id", "type", "state", "in", "out", "subscribers", "action"]) {
        const cell = document.createElement("td");
        cell.className = name;
        if (["in", "out", "subscribers"].includes(name)) cell.classList.add("number");
        row.append(cell);
      }
      const button = document.createElement("button");
      button.type = "button";
      button.className = "link";
      button.textContent = "watch";
      button.addEventListener("click", () => {
        select.value = source.id;
        sourceChosen();
        watch();
      });
      row.querySelector(".action").append(button);
      body.append(row);
      const option = document.createElement("option");
      option.value = option.textContent = source.id;
      select.append(option);
    }
    row.querySelector(".id").textContent = source.id;
    row.querySelector(".type").textContent = source.type;
    const cell = row.querySelector(".state");
    cell.textContent = source.state;
    cell.dataset.state = source.state;
    row.querySelector(".in").textContent = rate(source.id, "events_in", stats);
    row.querySelector(".out").textContent = rate(source.id, "events_out", stats);
    row.querySelector(".subscribers").textContent = String(source.subscribers);
    row.classList.toggle("selected", state.watching?.sourceId === source.id);
    state.sources.set(source.id, source);
  }
  state.previous = stats;
}

async function refresh() {
  try {
    const response = await fetch("/ui/stats", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    renderSources(await response.json());
    $("#stats-error").hidden = true;
  } catch (error) {
    $("#stats-error").hidden = false;
    $("#stats-error").textContent = `Cannot read /ui/stats: ${error.message}`;
  }
}

// The event viewer

function prepend(item) {
  const list = $("#events");
  list.prepend(item);
  while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
}

function block(value, kind) {
  const pre = document.createElement("pre");
  pre.className = kind;
  pre.textContent = kind === "json" ? JSON.stringify(value, null, 2) : String(value);
  return pre;
}

function addEvent(data) {
  const item = document.createElement("li");
  item.className = "event";
  const meta = document.createElement("div");
  meta.className = "meta";
  if (data.sourceType === "kafka") {
    const source = state.sources.get(data.sourceId) || {};
    const key = readable(data, "key", source.key_format || "base64");
    if (key.kind !== "null") {
      const span = document.createElement("span");
      span.className = "key";
      span.textContent = key.kind === "json" ? JSON.stringify(key.value) : key.value;
      meta.append(span);
    }
    const when = data.timestamp === null ? "" : ` · ${new Date(data.timestamp).toISOString()}`;
    meta.append(`partition ${data.partition} · offset ${data.offset}${when}`);
    item.dataset.partition = data.partition;
    item.dataset.offset = data.offset;
    item.append(meta);
    const payload = readable(data, "payload", source.format || "base64");
    item.append(payload.kind === "null" ? block("(no payload)", "text") : block(payload.value, payload.kind));
  } else {
    meta.textContent = `${data.sourceType} · ${new Date().toLocaleTimeString()}`;
    item.append(meta, block(data.count, "text"));
    item.dataset.count = data.count;
  }
  prepend(item);
}

function showStatus(text) {
  const watching = state.watching;
  $("#viewer-status").textContent =
    text ||
    (watching
      ? `Watching ${watching.sourceId} (${watching.mode}${watching.from === "earliest" ? ", from earliest" : ""}): ${state.received} events`
      : "Pick a source to watch its events.");
}

function stopped(text) {
  state.watching = null;
  $("#stop").disabled = true;
  $("#request").hidden = true;
  showStatus(text);
}

function updateAddress() {
  const next = new URLSearchParams(location.search);
  if (state.watching) {
    next.set("source", state.watching.sourceId);
    if (state.watching.mode === "pull") next.set("mode", "pull");
    else next.delete("mode");
    if (state.watching.from === "earliest") next.set("from", "earliest");
    else next.delete("from");
  } else {
    next.delete("source");
    next.delete("mode");
    next.delete("from");
  }
  const query = next.toString();
  history.replaceState(null, "", query ? `?${query}` : location.pathname);
}

async function unwatch() {
  const watching = state.watching;
  if (!watching) return;
  stopped();
  try {
    await client.unsubscribe(watching.sourceId);
  } catch {
    // already gone
  }
}

async function watch() {
  const sourceId = $("#source").value || params.get("source");
  if (!sourceId) return;
  await unwatch();
  const mode = $("#mode").value;
  const from = $("#from").disabled ? "latest" : $("#from").value;
  state.watching = { sourceId, mode, from };
  state.received = 0;
  updateAddress();
  showStatus(`Subscribing to ${sourceId}…`);
  try {
    await client.subscribe(sourceId, { mode, from: from === "earliest" ? "earliest" : undefined });
    $("#stop").disabled = false;
    $("#request").hidden = mode !== "pull";
    if (mode === "pull") await client.request(sourceId, 10);
    showStatus();
  } catch (error) {
    state.watching = null;
    showStatus(`Cannot watch ${sourceId}: ${error.message}`);
  }
}

function sourceChosen() {
  // Only Kafka sources can start in the past.
  const kafka = state.sources.get($("#source").value)?.type === "kafka";
  $("#from").disabled = !kafka;
  if (!kafka) $("#from").value = "latest";
}

$("#source").addEventListener("change", sourceChosen);
$("#viewer").addEventListener("submit", (event) => {
  event.preventDefault();
  watch();
});
$("#stop").addEventListener("click", async () => {
  await unwatch();
  updateAddress();
});
$("#request").addEventListener("click", () => {
  if (state.watching) client.request(state.watching.sourceId, 10).catch((error) => showStatus(error.message));
});
$("#clear").addEventListener("click", () => {
  $("#events").replaceChildren();
});

// Start: the sources first, then the viewer the address asks for.
await refresh();
setInterval(refresh, STATS_INTERVAL_MS);
sourceChosen();
if (params.get("mode") === "pull") $("#mode").value = "pull";
if (params.get("from") === "earliest") $("#from").value = "earliest";
if (params.get("source")) {
  const wanted = params.get("source");
  if (![...$("#source").options].some((o) => o.value === wanted)) {
    const option = document.createElement("option");
    option.value = option.textContent = wanted;
    $("#source").append(option);
  }
  $("#source").value = wanted;
  sourceChosen();
  if (params.get("from") === "earliest" && !$("#from").disabled) $("#from").value = "earliest";
  if (client.state === "open") watch();
  else {
    const off = client.on("open", () => {
      off();
      watch();
    });
  }
}
