// The chat page: a client key, the conversation list, one WebSocket session on the open conversation.

import * as api from "./api.js";
import { $, el, clear } from "./dom.js";
import * as fmt from "./format.js";
import { Transcript } from "./transcript.js";
import { renderAudit } from "./audit.js";

const KEY = "agent.key";
const CONVERSATION = "agent.conversation";
const RETRY_SECONDS = [1, 2, 3, 5, 8, 10];

const ui = {
  banner: $("banner"), bannerText: $("banner-text"), bannerRetry: $("banner-retry"), bannerClose: $("banner-close"),
  keyScreen: $("key-screen"), keyForm: $("key-form"), keyInput: $("key-input"), keyError: $("key-error"),
  app: $("app"), sidebar: $("sidebar"), scrim: $("scrim"), toggleList: $("toggle-list"),
  newBtn: $("new-btn"), forgetBtn: $("forget-btn"), listStatus: $("list-status"), list: $("conv-list"),
  title: $("chat-title"), renameForm: $("rename-form"), renameInput: $("rename-input"),
  renameCancel: $("rename-cancel"), actions: $("chat-actions"),
  auditBtn: $("audit-btn"), renameBtn: $("rename-btn"), deleteBtn: $("delete-btn"),
  messages: $("messages"), emptyHint: $("empty-hint"), status: $("status"),
  composer: $("composer"), input: $("input"), sendBtn: $("send-btn"), stopBtn: $("stop-btn"),
  auditDialog: $("audit-dialog"), auditBody: $("audit-body"), auditClose: $("audit-close"),
  confirmDialog: $("confirm-dialog"), confirmText: $("confirm-text"), confirmOk: $("confirm-ok"),
  confirmCancel: $("confirm-cancel"),
};

const transcript = new Transcript(ui.messages, ui.emptyHint);

const state = {
  key: sessionStorage.getItem(KEY),
  conversationId: sessionStorage.getItem(CONVERSATION),
  title: null,
  conversations: [],
  session: null,
  verified: false, // a session frame arrived with this key
  busy: false, // the server is sending a reply on this session (start .. done/error/cancelled)
  sent: null, // {node, text}: a message sent, its reply not started yet
  reply: null, // the ReplyView of the reply in progress
  runningId: null, // its reply_id
  pending: new Map(), // tool_use_id -> {kind, name, answer}
  stopping: false,
  retry: 0,
  retryTimer: null,
  retryTicker: null,
  bannerKind: null,
  lastError: null, // the last error frame about a frame (shown again if the server then closes the session)
};

// -- small UI helpers ----------------------------------------------------------------------------------------

function setStatus(text) {
  ui.status.textContent = text || "";
}

function showBanner(text, { kind = "error", retry = false } = {}) {
  ui.bannerText.textContent = text;
  ui.banner.dataset.kind = kind;
  ui.bannerRetry.hidden = !retry;
  ui.banner.hidden = false;
  state.bannerKind = kind;
}

function hideBanner(kind) {
  if (kind && state.bannerKind !== kind) return;
  ui.banner.hidden = true;
  state.bannerKind = null;
}

function describeError(error) {
  if (!error) return "Something went wrong.";
  if (error.type === "budget_exceeded_error") {
    const renews = /renews at (\S+Z)/.exec(error.message || "");
    const local = renews ? ` (renews ${fmt.fullTime(renews[1])} your time)` : "";
    return `The budget of this key is spent: ${error.message}${local}`;
  }
  if (error.type === "authentication_error") return "This key is not accepted.";
  if (error.type === "rate_limit_error") {
    const retry = typeof error.retry_after === "number" ? ` Try again in ${error.retry_after} s.` : "";
    return `Too many requests: ${error.message}${retry}`;
  }
  return error.message || error.type || "Something went wrong.";
}

function narrow() {
  return window.matchMedia("(max-width: 760px)").matches;
}

function setListOpen(open) {
  ui.app.classList.toggle("list-open", open);
  ui.toggleList.setAttribute("aria-expanded", String(open));
  ui.scrim.hidden = !open;
  if (open) ui.newBtn.focus();
}

function updateControls() {
  const replying = state.busy || state.sent !== null;
  ui.stopBtn.hidden = !replying;
  ui.sendBtn.hidden = replying;
  ui.stopBtn.disabled = state.stopping;
  const connected = Boolean(state.session && state.session.open && state.verified);
  ui.sendBtn.disabled = !connected;
  const has = Boolean(state.conversationId);
  ui.auditBtn.disabled = ui.renameBtn.disabled = ui.deleteBtn.disabled = !has;
  ui.title.textContent = has ? state.title || "Conversation" : "New conversation";
  for (const item of ui.list.querySelectorAll(".conv")) {
    if (item.dataset.id === state.conversationId) item.setAttribute("aria-current", "true");
    else item.removeAttribute("aria-current");
  }
  if (state.stopping) setStatus("Stopping…");
  else if (state.sent && !state.busy) setStatus("Sending…");
  else if (state.busy) setStatus("Replying… (Escape stops)");
  else if (unansweredApprovals() > 0) setStatus("Waiting for your decision on a tool call.");
  else if (!connected && state.verified) setStatus("Not connected.");
  else if (!connected) setStatus("Connecting…");
  else setStatus("");
}

function follow(fn) {
  const stuck = transcript.stuck;
  fn();
  if (stuck) transcript.scroll();
}

// -- screens ----------------------------------------------------------------------------------------------

function showKeyScreen(error) {
  closeSession();
  clearTimeout(state.retryTimer);
  state.verified = false;
  ui.app.hidden = true;
  ui.keyScreen.hidden = false;
  ui.keyError.hidden = !error;
  ui.keyError.textContent = error || "";
  ui.keyInput.value = "";
  ui.keyInput.focus();
}

function showApp() {
  ui.keyScreen.hidden = true;
  ui.app.hidden = false;
}

function keyRejected() {
  sessionStorage.removeItem(KEY);
  state.key = null;
  hideBanner();
  showKeyScreen("This key is not accepted. Check it and try again.");
}

// -- the WebSocket session ----------------------------------------------------------------------------------

function closeSession() {
  if (state.session) state.session.close();
  state.session = null;
  state.busy = false;
  state.sent = null;
  state.reply = null;
  state.stopping = false;
  state.pending.clear();
}

function connect() {
  closeSession();
  clearTimeout(state.retryTimer);
  clearInterval(state.retryTicker);
  if (!state.key) return;
  state.session = new api.Session(state.key, state.conversationId, { onFrame, onClose });
  updateControls();
}

function onClose({ code }) {
  state.session = null;
  const wasReplying = state.busy || state.sent !== null;
  state.busy = false;
  state.stopping = false;
  if (state.sent) {
    if (state.sent.node) state.sent.node.classList.add("msg-failed");
    state.sent = null;
  }
  if (code === api.CLOSE_UNAUTHORIZED) {
    keyRejected();
    return;
  }
  if (code === api.CLOSE_NOT_FOUND) {
    forgetConversation();
    showBanner("That conversation does not exist (or belongs to another key). A new one is open.", { kind: "info" });
    connect();
    refreshList();
    return;
  }
  // 1008: the server refused the session (too many sessions for this key, say), after an error frame saying why.
  const why = code === 1008 && state.lastError ? state.lastError
    : `The server cannot be reached${wasReplying ? " (the reply goes on without this page)" : ""}.`;
  state.lastError = null;
  scheduleRetry(why);
  updateControls();
}

function scheduleRetry(why) {
  const seconds = RETRY_SECONDS[Math.min(state.retry, RETRY_SECONDS.length - 1)];
  state.retry += 1;
  let left = seconds;
  const say = () => showBanner(`${why} Retrying in ${left} s…`, { kind: "offline", retry: true });
  say();
  clearInterval(state.retryTicker);
  state.retryTicker = setInterval(() => {
    left -= 1;
    if (left > 0) say();
  }, 1000);
  clearTimeout(state.retryTimer);
  state.retryTimer = setTimeout(() => {
    clearInterval(state.retryTicker);
    showBanner("Connecting to the server…", { kind: "offline" });
    connect();
  }, seconds * 1000);
}

function onFrame(frame) {
  switch (frame.type) {
    case "session": return onSession(frame);
    case "history": return follow(() => onHistory(frame));
    case "start": return follow(() => onStart(frame));
    case "token": return follow(() => currentReply().text(frame.text));
    case "thinking": return follow(() => currentReply().thinking(frame.text || ""));
    case "tool_use": return follow(() => currentReply().toolUse(frame));
    case "tool_result": return follow(() => transcript.toolResult(frame, state.reply && state.reply.id));
    case "step": return currentReply().step(frame);
    case "requires_action": return follow(() => setPending(frame.pending || []));
    case "done": return follow(() => onDone(frame));
    case "cancelled": return follow(() => onEnded(() => currentReply().cancelled()));
    case "error": return follow(() => onError(frame));
    default: return undefined;
  }
}

function currentReply() {
  if (!state.reply) state.reply = transcript.reply(null);
  return state.reply;
}

function onSession(frame) {
  const first = !state.verified;
  state.verified = true;
  state.retry = 0;
  state.lastError = null;
  hideBanner("offline");
  showApp();
  state.conversationId = frame.conversation_id || null;
  if (state.conversationId) sessionStorage.setItem(CONVERSATION, state.conversationId);
  const running = frame.reply && frame.reply.status === "running" ? frame.reply.reply_id : null;
  // Rebuild from what the server says: the history, then (when a reply runs) its frames from the first one.
  transcript.reset();
  state.reply = null;
  state.sent = null;
  state.busy = Boolean(running);
  state.runningId = running;
  state.stopping = false;
  state.pending.clear();
  transcript.renderHistory(frame.turns || [], running);
  showEarlierButton(frame.turns_before);
  if (frame.pending && frame.pending.length) setPending(frame.pending);
  transcript.scroll();
  updateControls();
  if (state.conversationId) loadUsage(state.conversationId);
  if (first) refreshList();
  if (!narrow()) ui.input.focus();
}

function showEarlierButton(before) {
  const box = transcript.earlier;
  clear(box);
  box.hidden = before === null || before === undefined;
  if (box.hidden) return;
  const button = el("button", { type: "button", class: "secondary", text: "Show earlier messages" });
  button.addEventListener("click", () => {
    button.disabled = true;
    if (state.session) state.session.send({ type: "history", before });
  });
  box.append(button);
}

function onHistory(frame) {
  const top = ui.messages.scrollHeight - ui.messages.scrollTop;
  transcript.prependHistory(frame.turns || [], state.busy ? state.runningId : null);
  showEarlierButton(frame.before);
  ui.messages.scrollTop = ui.messages.scrollHeight - top;
  if (state.conversationId) loadUsage(state.conversationId);
}

function onStart(frame) {
  state.busy = true;
  if (state.sent) {
    if (state.sent.node) state.sent.node.classList.remove("msg-pending");
    state.sent = null;
  }
  state.reply = transcript.reply(frame.reply_id);
  state.runningId = frame.reply_id;
  const isNew = state.conversationId !== frame.conversation_id;
  state.conversationId = frame.conversation_id;
  sessionStorage.setItem(CONVERSATION, frame.conversation_id);
  if (isNew) refreshList();
  updateControls();
}

function onEnded(render) {
  render();
  state.busy = false;
  state.stopping = false;
  state.reply = null;
  updateControls();
  flushAnswers();
  refreshList();
}

function onDone(frame) {
  onEnded(() => currentReply().done(frame));
}

function onError(frame) {
  const error = frame.error || {};
  const message = describeError(error);
  if (typeof frame.seq === "number" && state.busy) {
    onEnded(() => currentReply().error(error, message));
    if (error.type === "budget_exceeded_error") showBanner(message, { kind: "budget" });
    return;
  }
  // An error about a frame (no seq): the message was refused, or an answer was not taken.
  state.lastError = message;
  if (state.sent && !state.sent.node) {
    // Answers to pending actions were refused: ask the server what is pending now (a new session says).
    showBanner(message, { kind: error.type === "budget_exceeded_error" ? "budget" : "error" });
    connect();
    return undefined;
  }
  if (state.sent) {
    const { node, text } = state.sent;
    if (node) {
      node.classList.remove("msg-pending");
      node.classList.add("msg-failed");
      node.append(el("p", { class: "msg-error", text: `Not sent: ${message}` }));
    }
    if (text && !ui.input.value) ui.input.value = text;
    state.sent = null;
  }
  if (error.type === "authentication_error") return keyRejected();
  showBanner(message, { kind: error.type === "budget_exceeded_error" ? "budget" : "error" });
  updateControls();
  return undefined;
}

// -- pending actions ------------------------------------------------------------------------------------------

function unansweredApprovals() {
  let count = 0;
  for (const item of state.pending.values()) if (item.kind === "approval" && !item.answer) count += 1;
  return count;
}

function clientToolAnswer(name) {
  if (name === "get_timezone") {
    let zone = "";
    try {
      zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "";
    } catch {
      zone = "";
    }
    if (zone) return { content: zone, is_error: false, say: `This page answered with your time zone: ${zone}` };
    return { content: "The browser did not tell its time zone.", is_error: true,
             say: "This page could not tell your time zone; the model was told so." };
  }
  return { content: `This web page cannot run the client tool "${name}".`, is_error: true,
           say: `This page cannot run "${name}"; the model was told so.` };
}

function setPending(items) {
  let firstButton = null;
  for (const item of items) {
    if (state.pending.has(item.tool_use_id)) continue;
    const entry = { kind: item.kind, name: item.name, answer: null };
    state.pending.set(item.tool_use_id, entry);
    let card = transcript.cards.get(item.tool_use_id);
    if (!card) card = currentReply().toolUse({ id: item.tool_use_id, name: item.name, input: item.input });
    if (item.kind === "approval") {
      const button = card.askApproval((approved, reason) => {
        entry.answer = { type: "approval", tool_use_id: item.tool_use_id, approved };
        if (reason) entry.answer.reason = reason;
        flushAnswers();
        updateControls();
      });
      firstButton = firstButton || button;
    } else {
      const answer = clientToolAnswer(item.name);
      entry.answer = { type: "tool_result", tool_use_id: item.tool_use_id, content: answer.content };
      if (answer.is_error) entry.answer.is_error = true;
      card.answered(answer.say, { error: answer.is_error });
    }
  }
  updateControls();
  flushAnswers();
  if (firstButton && document.activeElement === ui.input && !ui.input.value) firstButton.focus();
}

/** Answers go when every pending action has one and the paused reply has ended (its `done` arrived). */
function flushAnswers() {
  if (!state.pending.size || state.busy || !state.session || !state.session.open) return;
  const entries = [...state.pending.values()];
  if (entries.some((entry) => !entry.answer)) return;
  for (const entry of entries) state.session.send(entry.answer);
  state.pending.clear();
  state.sent = { node: null, text: "" }; // the continuing reply's start clears it
  updateControls();
}

// -- sending and stopping ---------------------------------------------------------------------------------

function send() {
  const text = ui.input.value;
  if (!text.trim()) return;
  if (state.busy || state.sent) {
    setStatus("A reply is in progress: wait for it, or stop it (Escape).");
    return;
  }
  if (!state.session || !state.session.open) {
    showBanner("Not connected to the server yet; your message is still in the box.", { kind: "error" });
    return;
  }
  if (unansweredApprovals() > 0) {
    setStatus("Answer the pending tool call first (approve or deny).");
    return;
  }
  state.session.send({ type: "message", message: text });
  const node = transcript.addUser(text, { pending: true });
  state.sent = { node, text };
  ui.input.value = "";
  transcript.scroll();
  hideBanner("error");
  updateControls();
}

function stop() {
  if (!(state.busy || state.sent) || !state.session) return;
  state.session.send({ type: "cancel" });
  state.stopping = true;
  updateControls();
}

// -- the conversation list, rename, delete, audit -------------------------------------------------------

async function refreshList() {
  if (!state.key) return;
  const key = state.key;
  try {
    const page = await api.listConversations(key);
    if (key !== state.key) return;
    state.conversations = page.conversations || [];
    renderList();
    ui.listStatus.textContent = state.conversations.length ? "" : "No conversations yet.";
  } catch (error) {
    if (error.status === 401) return keyRejected();
    ui.listStatus.textContent = error.status === 0 ? "The server cannot be reached." : describeError(error);
  }
  return undefined;
}

function renderList() {
  clear(ui.list);
  for (const c of state.conversations) {
    const t = c.totals || {};
    const button = el("button", { type: "button", class: "conv", dataset: { id: c.id } },
      el("span", { class: "conv-title", text: c.title || "(untitled)" }),
      el("span", { class: "conv-meta" },
        el("time", { datetime: c.updated_at || "", text: fmt.when(c.updated_at) }),
        el("span", { class: "conv-cost", text: fmt.usd(t.cost_usd) })));
    button.addEventListener("click", () => openConversation(c.id));
    ui.list.append(el("li", {}, button));
    if (c.id === state.conversationId) state.title = c.title;
  }
  updateControls();
}

function openConversation(id) {
  if (narrow()) setListOpen(false);
  if (id === state.conversationId && state.session) return;
  state.conversationId = id;
  const known = state.conversations.find((c) => c.id === id);
  state.title = known ? known.title : null;
  sessionStorage.setItem(CONVERSATION, id);
  hideBanner();
  transcript.reset();
  connect();
}

function forgetConversation() {
  state.conversationId = null;
  state.title = null;
  sessionStorage.removeItem(CONVERSATION);
}

function newConversation() {
  if (narrow()) setListOpen(false);
  forgetConversation();
  hideBanner();
  transcript.reset();
  connect();
  ui.input.focus();
}

async function loadUsage(conversationId) {
  try {
    const audit = await api.getAudit(state.key, conversationId);
    if (conversationId !== state.conversationId) return;
    state.title = audit.title;
    transcript.applyAuditUsage(audit.requests, state.busy ? state.runningId : null);
    updateControls();
  } catch (error) {
    if (error.status === 401) keyRejected();
  }
}

async function openAudit() {
  if (!state.conversationId) return;
  clear(ui.auditBody);
  ui.auditBody.append(el("p", { class: "muted", text: "Loading…" }));
  ui.auditDialog.showModal();
  try {
    const audit = await api.getAudit(state.key, state.conversationId);
    renderAudit(ui.auditBody, audit);
  } catch (error) {
    clear(ui.auditBody);
    ui.auditBody.append(el("p", { class: "error", text: describeError(error) }));
  }
}

function startRename() {
  ui.renameInput.value = state.title || "";
  ui.title.hidden = true;
  ui.actions.hidden = true;
  ui.renameForm.hidden = false;
  ui.renameInput.focus();
  ui.renameInput.select();
}

function endRename() {
  ui.renameForm.hidden = true;
  ui.title.hidden = false;
  ui.actions.hidden = false;
  ui.renameBtn.focus();
}

async function saveRename() {
  const title = ui.renameInput.value.trim();
  const id = state.conversationId;
  if (!title || !id) return endRename();
  try {
    const summary = await api.renameConversation(state.key, id, title);
    if (id === state.conversationId) state.title = summary.title;
    endRename();
    await refreshList();
  } catch (error) {
    if (error.status === 401) return keyRejected();
    showBanner(`Could not rename: ${describeError(error)}`);
  }
  return undefined;
}

function askDelete() {
  if (!state.conversationId) return;
  ui.confirmText.textContent =
    `“${state.title || "This conversation"}” and its audit will be deleted for good. This cannot be undone.`;
  ui.confirmDialog.showModal();
  ui.confirmCancel.focus();
}

async function confirmDelete() {
  ui.confirmDialog.close();
  const id = state.conversationId;
  if (!id) return;
  try {
    await api.deleteConversation(state.key, id);
  } catch (error) {
    if (error.status === 401) return keyRejected();
    if (error.status !== 404) {
      showBanner(`Could not delete: ${describeError(error)}`);
      return undefined;
    }
  }
  if (id === state.conversationId) newConversation();
  setStatus("The conversation was deleted.");
  await refreshList();
  return undefined;
}

// -- events -----------------------------------------------------------------------------------------------

ui.keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const key = ui.keyInput.value.trim();
  if (!key) return;
  state.key = key;
  sessionStorage.setItem(KEY, key);
  ui.keyError.hidden = true;
  ui.keyInput.value = "";
  setStatus("Connecting…");
  connect();
});

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  send();
});

ui.input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    send();
  }
});

ui.stopBtn.addEventListener("click", stop);
ui.newBtn.addEventListener("click", newConversation);
ui.forgetBtn.addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  sessionStorage.removeItem(CONVERSATION);
  state.key = null;
  state.conversationId = null;
  state.conversations = [];
  clear(ui.list);
  transcript.reset();
  hideBanner();
  showKeyScreen();
});
ui.toggleList.addEventListener("click", () => setListOpen(!ui.app.classList.contains("list-open")));
ui.scrim.addEventListener("click", () => setListOpen(false));
ui.auditBtn.addEventListener("click", openAudit);
ui.auditClose.addEventListener("click", () => ui.auditDialog.close());
ui.renameBtn.addEventListener("click", startRename);
ui.renameCancel.addEventListener("click", endRename);
ui.renameForm.addEventListener("submit", (event) => {
  event.preventDefault();
  saveRename();
});
ui.renameInput.addEventListener("keydown", (event) => {
  if (event.key === "Escape") {
    event.preventDefault();
    event.stopPropagation();
    endRename();
  }
});
ui.deleteBtn.addEventListener("click", askDelete);
ui.confirmOk.addEventListener("click", confirmDelete);
ui.confirmCancel.addEventListener("click", () => ui.confirmDialog.close());
ui.bannerClose.addEventListener("click", () => hideBanner());
ui.bannerRetry.addEventListener("click", () => {
  showBanner("Connecting to the server…", { kind: "offline" });
  connect();
});

document.addEventListener("keydown", (event) => {
  if (event.key !== "Escape" || event.defaultPrevented) return;
  if (ui.auditDialog.open || ui.confirmDialog.open) return; // the dialog closes itself
  if (ui.app.classList.contains("list-open")) {
    setListOpen(false);
    ui.toggleList.focus();
    return;
  }
  if (state.busy || state.sent) {
    event.preventDefault();
    stop();
  }
});

window.addEventListener("online", () => {
  if (!state.session && state.key) connect();
});

// -- start ------------------------------------------------------------------------------------------------

if (state.key) {
  showApp();
  updateControls();
  connect();
} else {
  showKeyScreen();
}
