// The conversation as DOM: user messages, replies (text, thinking, tool calls and their results, pending actions)
// and each reply's usage. Everything from the model or the user is inserted as text, never parsed as HTML.

import { el, append, clear, pretty } from "./dom.js";
import * as fmt from "./format.js";

function resultText(content) {
  if (typeof content === "string") return content;
  if (Array.isArray(content)) {
    return content.map((part) => (part && part.type === "text" ? part.text : pretty(part))).join("\n");
  }
  return pretty(content);
}

const KIND_LABELS = { python: "runs on the server", mcp: "MCP tool", client: "runs in this page", server: "server tool" };

export class ToolCard {
  constructor({ id, name, input, kind }) {
    this.id = id;
    this.name = name;
    this.state = el("span", { class: "tool-state", text: "running…" });
    this.result = el("div", { class: "tool-result", hidden: true });
    this.action = el("div", { class: "tool-action", hidden: true });
    this.node = el("section", { class: "tool", dataset: { toolUseId: id || "", tool: name || "" },
                                "aria-label": `Tool call: ${name}` },
      el("header", { class: "tool-head" },
        el("span", { class: "tool-icon", "aria-hidden": "true", text: "⚙" }),
        el("span", { class: "tool-name", text: name || "tool" }),
        kind ? el("span", { class: "tool-kind", text: KIND_LABELS[kind] || kind }) : null,
        this.state),
      el("details", { class: "tool-input" },
        el("summary", { text: "Input" }),
        el("pre", { text: pretty(input ?? {}) })),
      this.action,
      this.result);
  }

  setResult({ content, is_error: isError, duration_ms: durationMs, truncated }) {
    clear(this.result);
    this.result.hidden = false;
    this.node.classList.toggle("tool-error", Boolean(isError));
    this.node.classList.add("tool-done");
    append(this.result,
      el("div", { class: "tool-result-head", text: isError ? "Error" : "Result" }),
      el("pre", { text: resultText(content) }),
      truncated ? el("p", { class: "muted", text: "(the result was truncated)" }) : null);
    this.state.textContent = (isError ? "failed" : "done") + (typeof durationMs === "number" ? ` · ${fmt.ms(durationMs)}` : "");
  }

  /** A pending approval: Approve / Deny with an optional reason; `answer(approved, reason)` is called once. */
  askApproval(answer) {
    clear(this.action);
    this.action.hidden = false;
    this.node.classList.add("tool-pending");
    this.state.textContent = "waiting for your approval";
    const reasonId = `reason-${this.id}`;
    const reason = el("input", { id: reasonId, class: "reason", type: "text", maxlength: "2000", autocomplete: "off",
                                 placeholder: "Why not? (optional, sent when you deny)" });
    const approve = el("button", { type: "button", class: "approve", text: "Approve" });
    const deny = el("button", { type: "button", class: "deny danger", text: "Deny" });
    const decide = (approved) => {
      const why = reason.value.trim();
      approve.disabled = deny.disabled = reason.disabled = true;
      this.node.classList.remove("tool-pending");
      this.answered(approved ? "You approved this call." : `You denied this call${why ? `: ${why}` : "."}`);
      answer(approved, approved ? undefined : why || undefined);
    };
    approve.addEventListener("click", () => decide(true));
    deny.addEventListener("click", () => decide(false));
    reason.addEventListener("keydown", (event) => {
      if (event.key === "Enter") {
        event.preventDefault();
        decide(false);
      }
    });
    append(this.action,
      el("p", { class: "action-prompt", text: `${this.name} needs your approval before it runs.` }),
      el("div", { class: "action-row" },
        approve,
        el("label", { class: "visually-hidden", for: reasonId, text: "Reason for denying (optional)" }),
        reason,
        deny));
    return approve;
  }

  answered(text, { error = false } = {}) {
    clear(this.action);
    this.action.hidden = false;
    this.action.classList.toggle("action-error", error);
    append(this.action, el("p", { class: "action-answer", text }));
    this.state.textContent = error ? "could not answer" : "answered";
  }
}

export class ReplyView {
  constructor(transcript, replyId) {
    this.transcript = transcript;
    this.id = replyId;
    this.usage = fmt.addUsage({}, {});
    this.cost = null;
    this.segment = null; // the Text node the streamed tokens go into
    this.body = el("div", { class: "reply-body" });
    this.footer = el("footer", { class: "usage", hidden: true });
    this.node = el("article", { class: "msg reply", dataset: { replyId: replyId || "" }, "aria-label": "Reply" },
      el("div", { class: "who", text: "Assistant" }), this.body, this.footer);
  }

  text(text) {
    if (!text) return;
    if (!this.segment) {
      this.segment = document.createTextNode("");
      this.body.append(el("div", { class: "text" }, this.segment));
    }
    this.segment.appendData(text);
  }

  thinking(text) {
    let last = this.body.lastElementChild;
    if (!last || !last.classList.contains("thinking")) {
      last = el("details", { class: "thinking" }, el("summary", { text: "Thinking" }), el("pre"));
      this.body.append(last);
      this.segment = null;
    }
    last.querySelector("pre").append(document.createTextNode(text));
  }

  toolUse(tool) {
    const existing = tool.id ? this.transcript.cards.get(tool.id) : undefined;
    if (existing) return existing;
    const card = new ToolCard(tool);
    if (tool.id) this.transcript.cards.set(tool.id, card);
    this.body.append(card.node);
    this.segment = null;
    return card;
  }

  note(text, kind = "note") {
    this.body.append(el("p", { class: `reply-note ${kind}`, text }));
    this.segment = null;
  }

  step(frame) {
    this.usage = fmt.addUsage(this.usage, frame.usage);
    if (typeof frame.cost_usd === "number") this.cost = (this.cost || 0) + frame.cost_usd;
    this.showUsage(false);
  }

  done(frame) {
    if (frame.usage) this.usage = fmt.addUsage({}, frame.usage);
    if (typeof frame.estimated_cost_usd === "number") this.cost = frame.estimated_cost_usd;
    this.node.classList.add("reply-done");
    if (frame.status === "requires_action") this.node.classList.add("reply-paused");
    if (frame.stop_reason === "max_tokens") this.note("(the reply reached its token limit)");
    this.showUsage(true);
  }

  error(error, message) {
    this.node.classList.add("reply-failed");
    this.note(message || (error && error.message) || "The reply failed.", "error");
    this.showUsage(true);
  }

  cancelled() {
    this.node.classList.add("reply-cancelled");
    this.note("Stopped.", "stopped");
    this.showUsage(true);
  }

  setUsage(usage, cost) {
    this.usage = fmt.addUsage({}, usage);
    this.cost = cost;
    this.showUsage(true);
  }

  showUsage(final) {
    const u = this.usage;
    clear(this.footer);
    this.footer.hidden = false;
    this.footer.classList.toggle("usage-live", !final);
    const item = (cls, label, value) => el("span", { class: `u ${cls}` }, el("span", { class: "u-label", text: label }),
                                            " ", el("span", { class: "u-value", text: value }));
    append(this.footer,
      item("u-in", "input", fmt.tokens(u.input_tokens)),
      item("u-out", "output", fmt.tokens(u.output_tokens)),
      item("u-cache-read", "cache read", fmt.tokens(u.cache_read_input_tokens)),
      item("u-cache-write", "cache write", fmt.tokens(u.cache_creation_input_tokens)),
      item("u-cost", "cost", fmt.usd(this.cost)));
    this.footer.title = final ? "Tokens and cost of this reply" : "So far (the reply is running)";
  }
}

export class Transcript {
  constructor(container, emptyHint) {
    this.container = container;
    this.emptyHint = emptyHint;
    this.reset();
  }

  reset() {
    clear(this.container);
    this.cards = new Map(); // tool_use_id -> ToolCard
    this.replies = new Map(); // reply_id -> ReplyView
    this.earlier = el("div", { class: "earlier", hidden: true });
    this.history = el("div", { class: "history" });
    this.live = el("div", { class: "live" });
    this.container.append(this.emptyHint, this.earlier, this.history, this.live);
    this.emptyHint.hidden = false;
  }

  get stuck() {
    const c = this.container;
    return c.scrollHeight - c.scrollTop - c.clientHeight < 80;
  }

  scroll() {
    this.container.scrollTop = this.container.scrollHeight;
  }

  userNode(text) {
    this.emptyHint.hidden = true;
    return el("article", { class: "msg user", "aria-label": "Your message" },
      el("div", { class: "who", text: "You" }), el("div", { class: "text", text }));
  }

  addUser(text, { pending = false } = {}) {
    const node = this.userNode(text);
    if (pending) node.classList.add("msg-pending");
    this.live.append(node);
    return node;
  }

  reply(replyId, into = this.live) {
    let view = replyId ? this.replies.get(replyId) : undefined;
    if (!view) {
      view = new ReplyView(this, replyId);
      if (replyId) this.replies.set(replyId, view);
      into.append(view.node);
      this.emptyHint.hidden = true;
    }
    return view;
  }

  toolResult(frame, replyId, into = this.live) {
    let card = this.cards.get(frame.tool_use_id);
    if (!card) card = this.reply(replyId, into).toolUse({ id: frame.tool_use_id, name: "tool", input: {} });
    card.setResult(frame);
    return card;
  }

  /** Turns from the session (or history) frame; turns of the running reply but its prompt come again as frames. */
  renderTurns(turns, runningReplyId, into) {
    for (const turn of turns) {
      const blocks = Array.isArray(turn.blocks) && turn.blocks.length
        ? turn.blocks : (turn.content ? [{ type: "text", text: turn.content }] : []);
      const ofRunning = Boolean(runningReplyId) && turn.reply_id === runningReplyId;
      if (turn.role === "user") {
        const texts = blocks.filter((b) => b.type === "text").map((b) => b.text);
        if (texts.length) into.append(this.userNode(texts.join("\n")));
        if (ofRunning) continue;
        for (const block of blocks) {
          if (block.type === "tool_result") this.toolResult(block, turn.reply_id, into);
        }
        continue;
      }
      if (ofRunning) continue;
      const view = this.reply(turn.reply_id, into);
      view.node.classList.add("reply-done");
      view.segment = null;
      for (const block of blocks) {
        if (block.type === "text") view.text(block.text);
        else if (block.type === "thinking") view.thinking(block.thinking || "");
        else if (block.type === "redacted_thinking") view.note("(thinking, redacted)");
        else if (block.type === "tool_use" || block.type === "server_tool_use") {
          const card = view.toolUse({ id: block.id, name: block.name, input: block.input,
                                      kind: block.type === "server_tool_use" ? "server" : undefined });
          card.state.textContent = "";
        } else if (block.type === "web_search_tool_result") {
          const card = this.cards.get(block.tool_use_id);
          if (card) card.setResult({ content: block.content, is_error: false });
        }
      }
      if (turn.status && turn.status !== "complete") view.note(`(${turn.status})`, "stopped");
    }
  }

  renderHistory(turns, runningReplyId) {
    this.renderTurns(turns, runningReplyId, this.history);
  }

  prependHistory(turns, runningReplyId) {
    const page = el("div", { class: "history-page" });
    this.renderTurns(turns, runningReplyId, page);
    this.history.prepend(page);
  }

  /** Usage of past replies, from the audit's upstream calls (the running reply's comes from its frames). */
  applyAuditUsage(requests, runningReplyId) {
    const byReply = new Map();
    for (const call of requests || []) {
      if (call.reply_id === runningReplyId) continue;
      const entry = byReply.get(call.reply_id) || { usage: {}, cost: null };
      entry.usage = fmt.addUsage(entry.usage, call);
      if (typeof call.cost_usd === "number") entry.cost = (entry.cost || 0) + call.cost_usd;
      byReply.set(call.reply_id, entry);
    }
    for (const [replyId, entry] of byReply) {
      const view = this.replies.get(replyId);
      if (view && view.footer.hidden) view.setUsage(entry.usage, entry.cost);
    }
  }
}
