// A full ElectronAIChat client session against hearth's compat listener, replayed with Node's
// fetch the way the app's code makes its calls (original-backend-api.md: electron/main.ts,
// electron/src/utils/api.ts, the hooks and App.tsx): the main process's health gate, then the
// renderer's calls with its Origin, its line-by-line SSE parsing that does not buffer across
// network reads, title polling 2.5 s after a stream, upload progress, and a RAG answer whose
// sources name the uploaded file.
//
// usage: node compat_replay.mjs BASE_URL ORIGIN   (ORIGIN: an origin, or "null")
// Prints one JSON line of what it saw; exits non-zero with a message on the first failure.

const [base, origin] = process.argv.slice(2);
const headers = { Origin: origin };
const seen = { origin };

function fail(msg) {
  console.error(`compat replay (${origin}): ${msg}`);
  process.exit(1);
}

function check(cond, msg) {
  if (!cond) fail(msg);
}

// apiClient.request: fetch, throw on !ok, then .json() — on every response.
async function request(path, options = {}) {
  const res = await fetch(base + path, {
    ...options,
    headers: { "Content-Type": "application/json", ...headers, ...(options.headers || {}) },
  });
  if (!res.ok) fail(`${options.method || "GET"} ${path}: ${res.status} ${await res.text()}`);
  const cors = res.headers.get("access-control-allow-origin");
  check(cors === origin, `${path}: CORS answer ${cors}, expected ${origin}`);
  return res.json();
}

// api.ts streamResponse / uploadDocumentWithProgress: each network chunk is split on "\n" and
// only complete `data: ` lines are parsed; nothing is carried over to the next read. An event
// cut in two by a read would be lost by the app, so here it is a failure.
async function readEvents(res, what) {
  check(res.ok, `${what}: ${res.status}`);
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  const events = [];
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    const text = decoder.decode(value, { stream: true });
    const lines = text.split("\n");
    check(lines[lines.length - 1] === "", `${what}: a read ended inside an event: ${JSON.stringify(text)}`);
    for (const line of lines) {
      if (line.startsWith("data: ")) events.push(JSON.parse(line.slice(6)));
    }
  }
  return events;
}

async function stream(body) {
  const res = await fetch(base + "/api/chat/stream", {
    method: "POST",
    headers: { "Content-Type": "application/json", ...headers },
    body: JSON.stringify(body),
  });
  const events = await readEvents(res, "chat stream");
  let text = "";
  for (const e of events) text += e.token || e.content || "";
  const dones = events.filter((e) => e.done);
  check(dones.length === 1, `chat stream: ${dones.length} done events (expected exactly one)`);
  check(events[events.length - 1].done === true, "chat stream: the done event is not the last");
  check(!events[events.length - 1].error, `chat stream error: ${events[events.length - 1].error}`);
  return { text, last: events[events.length - 1], tokens: events.length - 1 };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// --- Electron main: waitForHealth polls every 500 ms until res.ok (no Origin: main process).
{
  const started = Date.now();
  let health;
  for (;;) {
    try {
      const res = await fetch(base + "/api/health");
      if (res.ok) {
        health = await res.json();
        break;
      }
    } catch {}
    check(Date.now() - started < 30000, "health gate: not ok within 30 s");
    await sleep(500);
  }
  check(health.components.startup_validation.passed === true,
    `startup validation: ${JSON.stringify(health.components.startup_validation)}`);
  seen.health_status = health.status;
}

// --- Renderer start-up: status dot, capabilities, models, user, settings.
const status = await request("/api/status");
check(typeof status.status === "string", "status has no status");
const caps = await request("/api/capabilities");
check(typeof caps.model_info.name === "string", "capabilities: no model_info.name");
check(typeof caps.model_info.is_large_enough_for_memory === "boolean", "capabilities: no is_large_enough_for_memory");
check(typeof caps.model_info.estimated_params_billions === "number", "capabilities: no estimate");
seen.params_billions = caps.model_info.estimated_params_billions;
const models = await request("/api/models");
check(models.models.includes(models.current_model), `models: current ${models.current_model} not in ${models.models}`);

const username = `user-${origin === "null" ? "packaged" : "dev"}`;
const user = await request("/api/users/create", { method: "POST", body: JSON.stringify({ username }) });
const again = await request("/api/users/create", { method: "POST", body: JSON.stringify({ username }) });
check(user.id === again.id, "users/create is not idempotent by username");
const userId = user.id;

const settings = await request(`/api/users/${userId}/settings`);
for (const k of ["default_model", "temperature", "max_tokens", "top_p", "top_k", "system_prompt"]) {
  check(k in settings, `settings: no ${k}`);
}
// useSettings.saveSettingsToBackend sends these six; the app's own default model is llama2.
const saved = await request(`/api/users/${userId}/settings`, {
  method: "PUT",
  body: JSON.stringify({
    default_model: "llama2:latest", temperature: 0, max_tokens: 48, top_p: 0.9, top_k: 40,
    system_prompt: "You are a helpful assistant. Answer briefly.",
  }),
});
check(saved.temperature === 0 && saved.max_tokens === 48, `settings PUT: ${JSON.stringify(saved)}`);
check(saved.default_model === settings.default_model, "an unknown default_model replaced the model");

// ModelBar / auto-restore: switch to the current model.
const sw = await request("/api/models/switch", {
  method: "POST",
  body: JSON.stringify({ provider: "llamacpp", model: models.current_model, user_id: userId }),
});
check(sw.success === true && sw.model === models.current_model, `switch: ${JSON.stringify(sw)}`);
const other = await request("/api/models/switch", {
  method: "POST",
  body: JSON.stringify({ provider: "ollama", model: null, user_id: userId }),
});
check(other.success === false && typeof other.warning === "string", "switch to ollama should warn");

// --- A chat: create, sync, stream, title poll.
const chat = await request("/api/chats/create", {
  method: "POST",
  body: JSON.stringify({ user_id: userId, title: "New Chat" }),
});
for (const k of ["id", "title", "search_mode", "created_at", "updated_at"]) check(k in chat, `chat: no ${k}`);
const list = await request(`/api/chats/${userId}`);
check(list.some((c) => c.id === chat.id), "chat list lacks the new chat");

const first = await stream({
  chatId: chat.id, userId, message: "What is the capital of France?", searchMode: "normal", useMemory: false,
});
check(/paris/i.test(first.text), `answer without Paris: ${first.text}`);
seen.first_answer = first.text;
seen.first_tokens = first.tokens;

// App.tsx polls the title 2.5 s after the stream; the title job may take longer on a busy
// machine, so keep polling as a user who waits would see it arrive.
await sleep(2500);
let title = (await request(`/api/chats/detail/${chat.id}`)).title;
seen.title_at_first_poll = title !== "New Chat";
for (let i = 0; i < 60 && title === "New Chat"; i++) {
  await sleep(500);
  title = (await request(`/api/chats/detail/${chat.id}`)).title;
}
check(title !== "New Chat" && title.length > 0, "no automatic title");
seen.title = title;
// useChatHistory.updateChat syncs the title back through the query string.
const put = await request(`/api/chats/${chat.id}?title=${encodeURIComponent(title)}`, { method: "PUT" });
check(put.success === true, "PUT chat title");

// --- Upload with progress (userId is the *username*, as App.tsx sends it).
const doc = "Project Zebulon notes.\n\nThe secret launch code of project Zebulon is 7419. " +
  "Only the night shift knows it.\n\nThe cafeteria serves soup on Tuesdays.\n";
const form = new FormData();
form.append("file", new Blob([doc], { type: "text/plain" }), "zebulon-notes.txt");
form.append("chatId", chat.id);
form.append("userId", username);
const up = await fetch(base + "/documents/upload/stream", { method: "POST", headers, body: form });
const progress = await readEvents(up, "upload");
const stages = progress.map((e) => e.stage);
const order = ["uploading", "uploaded", "extracting", "extracted", "chunking", "chunking_complete", "embedding", "ready"];
let at = 0;
for (const s of stages) {
  const i = order.indexOf(s);
  check(i >= at, `upload stages out of order: ${stages}`);
  at = i;
}
const ready = progress[progress.length - 1];
check(ready.stage === "ready" && ready.progress === 100, `upload ended with ${JSON.stringify(ready)}`);
for (const k of ["id", "name", "size", "uploadedAt", "contentType", "chunks"]) check(k in ready.document, `document: no ${k}`);
check(ready.document.name === "zebulon-notes.txt" && ready.document.chunks >= 1, "uploaded document");
for (const e of progress.filter((e) => e.stage === "embedding")) {
  check(typeof e.current_chunk === "number" && typeof e.total_chunks === "number", "embedding event fields");
}
seen.upload_stages = stages;

// --- RAG: the search mode is set on the chat (query string), then used by the stream.
await request(`/api/chats/${chat.id}?search_mode=embeddings`, { method: "PUT" });
const synced = (await request(`/api/chats/${userId}`)).find((c) => c.id === chat.id);
check(synced.search_mode === "embeddings", `search_mode after PUT: ${synced.search_mode}`);
const rag = await stream({
  chatId: chat.id, userId, message: "What is the secret launch code of project Zebulon?",
  searchMode: "embeddings", useMemory: false,
});
check(Array.isArray(rag.last.sources), "the RAG answer's last event has no sources");
check(rag.last.sources.some((s) => s.filename === "zebulon-notes.txt" && s.type === "document"),
  `sources: ${JSON.stringify(rag.last.sources)}`);
seen.rag_answer = rag.text;
seen.sources = rag.last.sources;

// --- Delete and reset: JSON bodies, never a 204 (the app calls .json() on them).
const del = await request(`/api/chats/${chat.id}`, { method: "DELETE" });
check(del.success === true, "delete chat");
const reset = await request("/api/admin/reset", { method: "POST" });
check(reset.success === true, "reset");
const after = await request(`/api/chats/${userId}`);
check(Array.isArray(after) && after.length === 0, "chats left after reset");

console.log(JSON.stringify(seen));
