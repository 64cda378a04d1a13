// The playground: chat (or raw completion) over the server's own API, streamed token by token.
import { Api, ApiError, ConnectionLost } from "./api.js";
import { download, el, renderText } from "./render.js";
import {
  $,
  addAnswer,
  addMessage,
  clearNotice,
  countdown,
  every,
  figuresOf,
  finish,
  notice,
  setNotice,
  stopTicking,
} from "./view.js";

const KEY = "playground.key"; // sessionStorage: gone when the tab closes
const CHATS = "playground.chats"; // localStorage: [{id, title}], newest first
const CURRENT = "playground.current";

const api = new Api(() => sessionStorage.getItem(KEY) || "");
const state = { sessionId: null, history: [], lastPrompt: "", lastAnswer: "", running: null };

function init() {
  $("api-key").value = sessionStorage.getItem(KEY) || "";
  $("api-key").addEventListener("change", onKey);
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    sendBox();
  });
  $("message").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      sendBox();
    }
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape") stop();
  });
  $("stop").addEventListener("click", stop);
  $("regenerate").addEventListener("click", regenerate);
  $("new-chat").addEventListener("click", newChat);
  $("export").addEventListener("click", exportJson);
  $("download").addEventListener("click", downloadTxt);
  for (const radio of document.querySelectorAll("input[name=mode]")) radio.addEventListener("change", newChat);
  if (window.matchMedia("(max-width: 700px)").matches) {
    $("chats-box").open = false;
    $("settings-box").open = false;
  }
  renderChats();
  checkHealth();
  loadStatus();
  const current = localStorage.getItem(CURRENT);
  if (current) openChat(current);
}

function showError(error) {
  const id = error.requestId ? ` (request ${error.requestId})` : "";
  if (error instanceof ConnectionLost) {
    notice("The connection to the server was lost. Check that it is running, then try again.");
  } else if (!(error instanceof ApiError)) {
    notice(`Something went wrong: ${error.message}`);
  } else if (error.status === 401) {
    notice("This server needs an API key: type it in the “API key” field, then send again.");
    $("api-key").focus();
  } else if (error.status === 429) {
    countdown(error.retryAfter ?? 1, (s) => `Too many requests: try again in ${s} s.`, "You can send again.");
  } else if (error.status === 503 && error.code === "model_loading") {
    watchLoading();
  } else if (error.status === 503) {
    const wait = error.retryAfter ?? 5;
    countdown(wait, (s) => `The server is busy (${error.message}): try again in ${s} s.`, "You can send again.");
  } else if (error.status === 0) {
    notice(`The answer failed: ${error.message}${id}`);
  } else {
    notice(`Error ${error.status}: ${error.message}${id}`);
  }
}

/** While the model loads, show its progress from /health until it is ready. */
async function watchLoading() {
  const poll = async () => {
    let body = null;
    try {
      body = await (await fetch("health")).json();
    } catch {
      notice("The connection to the server was lost.");
      return;
    }
    if (body.status === "healthy") {
      stopTicking();
      $("model").textContent = body.model_name;
      setNotice("The model is ready: send again.");
    } else if (body.status === "loading") {
      setNotice(`The model is loading${body.progress ? ` (${body.progress})` : ""}…`);
    } else {
      stopTicking();
      setNotice(`The model cannot serve: ${body.reason || body.status}.`);
    }
  };
  notice("The model is loading…");
  every(1000, poll);
  await poll();
}

async function checkHealth() {
  try {
    const response = await fetch("health");
    const body = await response.json();
    $("model").textContent = body.model_name || "";
    if (body.status === "loading") watchLoading();
  } catch {
    notice("The server does not answer.");
  }
}

async function loadStatus() {
  try {
    const status = await api.json("GET", "status");
    $("model").textContent = status.model.served_name;
    $("max-tokens").placeholder = `default ${status.defaults.max_tokens}`;
    $("max-tokens").max = String(status.limits.max_tokens);
    $("temperature").placeholder = `default ${status.defaults.temperature}`;
    $("top-p").placeholder = `default ${status.defaults.top_p}`;
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) showError(error);
  }
}

function onKey() {
  sessionStorage.setItem(KEY, $("api-key").value.trim());
  clearNotice();
  loadStatus();
  if (state.sessionId && !state.history.length) openChat(state.sessionId);
}

// ---- chats ---------------------------------------------------------------------------------

function chats() {
  try {
    return JSON.parse(localStorage.getItem(CHATS) || "[]");
  } catch {
    return [];
  }
}

function saveChats(list) {
  localStorage.setItem(CHATS, JSON.stringify(list.slice(0, 50)));
  renderChats();
}

function renderChats() {
  const items = chats().map(({ id, title }) => {
    const item = el("li", id === state.sessionId ? "current" : "");
    const open = el("button", "", title);
    open.type = "button";
    open.title = title;
    open.addEventListener("click", () => openChat(id));
    const remove = el("button", "", "×");
    remove.type = "button";
    remove.setAttribute("aria-label", `Delete chat ${title}`);
    remove.addEventListener("click", () => deleteChat(id));
    item.append(open, remove);
    return item;
  });
  $("chats").replaceChildren(...items);
}

function newSessionId() {
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return `pg-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

function newChat() {
  stop();
  state.sessionId = null;
  state.history = [];
  state.lastPrompt = "";
  state.lastAnswer = "";
  localStorage.removeItem(CURRENT);
  $("messages").replaceChildren();
  clearNotice();
  renderChats();
  $("message").focus();
}

async function openChat(id) {
  stop();
  state.sessionId = id;
  state.history = [];
  localStorage.setItem(CURRENT, id);
  $("messages").replaceChildren();
  renderChats();
  try {
    const session = await api.json("GET", `v1/chat/sessions/${encodeURIComponent(id)}`);
    state.history = session.messages;
    for (const message of session.messages) {
      if (message.role === "assistant") showAnswer(message.content);
      else addMessage(message.role, message.content);
    }
    const users = session.messages.filter((m) => m.role === "user");
    state.lastPrompt = users.length ? users[users.length - 1].content : "";
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) {
      saveChats(chats().filter((chat) => chat.id !== id));
      newChat();
      notice("That chat is no longer on the server (it expired or was deleted).");
    } else showError(error);
  }
}

async function deleteChat(id) {
  try {
    await api.json("DELETE", `v1/chat/sessions/${encodeURIComponent(id)}`);
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 404)) {
      showError(error);
      return;
    }
  }
  saveChats(chats().filter((chat) => chat.id !== id));
  if (id === state.sessionId) newChat();
}

function showAnswer(text, figures) {
  const answer = addAnswer();
  renderText(answer.body, text);
  finish(answer, text, figures || []);
  state.lastAnswer = text;
  return answer;
}

// ---- sending -------------------------------------------------------------------------------

function numberField(id, parse) {
  const value = $(id).value.trim();
  return value === "" ? undefined : parse(value);
}

function parameters() {
  const params = {
    temperature: numberField("temperature", Number.parseFloat),
    top_p: numberField("top-p", Number.parseFloat),
    max_tokens: numberField("max-tokens", (v) => Number.parseInt(v, 10)),
    seed: numberField("seed", (v) => Number.parseInt(v, 10)),
  };
  return Object.fromEntries(Object.entries(params).filter(([, v]) => v !== undefined && !Number.isNaN(v)));
}

function mode() {
  return document.querySelector("input[name=mode]:checked").value;
}

/** What one send posts, and how its `done` body gives the answer's text. */
function buildTurn(text) {
  if (mode() === "raw") {
    return { path: "v1/generate", body: { prompt: text, stream: true, ...parameters() }, answer: (d) => d.generated_text };
  }
  const sessionId = state.sessionId || newSessionId();
  const system = $("system").value.trim();
  const messages = [];
  if (!state.history.length && system) messages.push({ role: "system", content: system });
  messages.push({ role: "user", content: text });
  return {
    path: "v1/chat",
    sessionId,
    messages,
    body: { messages, session_id: sessionId, stream: true, ...parameters() },
    answer: (d) => d.message.content,
  };
}

function sendBox() {
  const text = $("message").value;
  if (!text.trim() || state.running) return;
  $("message").value = "";
  send(text);
}

function regenerate() {
  if (state.lastPrompt && !state.running) send(state.lastPrompt);
}

function setRunning(running) {
  $("stop").disabled = !running;
  $("send").disabled = running;
  $("regenerate").disabled = running;
}

async function send(text) {
  clearNotice();
  const turn = buildTurn(text);
  state.lastPrompt = text;
  const shown = addMessage("user", text);
  const answer = addAnswer();
  answer.article.setAttribute("aria-busy", "true");
  const controller = new AbortController();
  state.running = controller;
  setRunning(true);
  const started = performance.now();
  let first = null;
  let streamed = "";
  try {
    for await (const { event, data } of api.stream(turn.path, turn.body, controller.signal)) {
      if (event === "token") {
        first ??= performance.now();
        streamed += data.text;
        renderText(answer.body, streamed);
      } else if (event === "error") {
        throw new ApiError(0, data, null);
      } else if (event === "done") {
        const content = turn.answer(data);
        renderText(answer.body, content);
        finish(answer, content, figuresOf(data, started, first, performance.now()));
        commit(turn, content);
        return;
      }
    }
    throw new ConnectionLost("the stream ended before the answer was complete");
  } catch (error) {
    if (error.name === "AbortError") {
      finish(answer, streamed, ["stopped: not kept in the chat"]);
    } else if (streamed === "" && !(error instanceof ApiError && error.status === 0)) {
      // Refused before any answer: take the turn back so it can be sent again as it was.
      shown.remove();
      answer.article.remove();
      if (!$("message").value) $("message").value = text;
      showError(error);
    } else {
      answer.article.classList.add("error");
      finish(answer, streamed, ["failed: not kept in the chat"]);
      showError(error);
    }
  } finally {
    answer.article.removeAttribute("aria-busy");
    state.running = null;
    setRunning(false);
  }
}

function commit(turn, content) {
  state.lastAnswer = content;
  if (!turn.sessionId) {
    state.history.push({ role: "user", content: turn.body.prompt }, { role: "assistant", content });
    return;
  }
  state.history.push(...turn.messages, { role: "assistant", content });
  if (state.sessionId !== turn.sessionId) {
    state.sessionId = turn.sessionId;
    localStorage.setItem(CURRENT, turn.sessionId);
    const title = turn.messages[turn.messages.length - 1].content.slice(0, 40);
    saveChats([{ id: turn.sessionId, title }, ...chats().filter((chat) => chat.id !== turn.sessionId)]);
  }
}

function stop() {
  if (state.running) state.running.abort();
}

// ---- export --------------------------------------------------------------------------------

async function exportJson() {
  let text;
  if (state.sessionId) {
    try {
      const response = await api.request("GET", `v1/chat/sessions/${encodeURIComponent(state.sessionId)}`);
      text = await response.text();
    } catch (error) {
      showError(error);
      return;
    }
  } else {
    text = JSON.stringify({ session_id: null, messages: state.history, expires_at: null }, null, 2);
  }
  download(`chat-${state.sessionId || "local"}.json`, "application/json", text);
}

function downloadTxt() {
  if (!state.lastAnswer) {
    notice("There is no answer to download yet.");
    return;
  }
  download("answer.txt", "text/plain", state.lastAnswer);
}

init();
