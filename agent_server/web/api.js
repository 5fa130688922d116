// The server's API, from this origin only: HTTP with the key in the Authorization header, and the chat WebSocket
// (browsers cannot set headers on a WebSocket, so the key goes as ?token= on its URL; that URL is never shown).

export class ApiError extends Error {
  constructor(status, type, message) {
    super(message);
    this.status = status; // 0: the server could not be reached
    this.type = type;
  }
}

export async function request(key, method, path, body) {
  const headers = { Authorization: `Bearer ${key}`, Accept: "application/json" };
  const init = { method, headers, cache: "no-store", credentials: "omit", redirect: "error" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(new URL(path, location.origin), init);
  } catch {
    throw new ApiError(0, "unreachable", "The server cannot be reached.");
  }
  if (response.status === 204) return null;
  let payload = null;
  try {
    payload = await response.json();
  } catch {
    payload = null;
  }
  if (!response.ok) {
    const error = payload && payload.error ? payload.error : {};
    throw new ApiError(response.status, error.type || "http_error", error.message || `HTTP ${response.status}`);
  }
  return payload;
}

export const listConversations = (key) => request(key, "GET", "/conversations?limit=50");
export const getAudit = (key, id) => request(key, "GET", `/conversations/${encodeURIComponent(id)}`);
export const renameConversation = (key, id, title) =>
  request(key, "PATCH", `/conversations/${encodeURIComponent(id)}`, { title });
export const deleteConversation = (key, id) => request(key, "DELETE", `/conversations/${encodeURIComponent(id)}`);

export const CLOSE_UNAUTHORIZED = 4401;
export const CLOSE_NOT_FOUND = 4404;

/**
 * One chat session: `new Session(key, conversationId, {onFrame, onClose})`. `onClose({code, reason, opened,
 * ours})`: `opened` says whether the session frame arrived; `ours` whether close() was called.
 */
export class Session {
  constructor(key, conversationId, handlers) {
    this.handlers = handlers;
    this.opened = false;
    this.ours = false;
    const url = new URL("/agent/ws", location.origin);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    url.searchParams.set("token", key);
    if (conversationId) url.searchParams.set("conversation_id", conversationId);
    this.socket = new WebSocket(url.href);
    this.socket.addEventListener("message", (event) => this.#message(event));
    this.socket.addEventListener("close", (event) => {
      if (this.handlers) this.handlers.onClose({ code: event.code, reason: event.reason, opened: this.opened,
                                                  ours: this.ours });
      this.handlers = null;
    });
  }

  #message(event) {
    if (!this.handlers || typeof event.data !== "string") return;
    let frame;
    try {
      frame = JSON.parse(event.data);
    } catch {
      return;
    }
    if (!frame || typeof frame !== "object" || frame.type === "ping") return;
    if (frame.type === "session") this.opened = true;
    this.handlers.onFrame(frame);
  }

  get open() {
    return this.socket.readyState === WebSocket.OPEN;
  }

  send(frame) {
    if (!this.open) return false;
    this.socket.send(JSON.stringify(frame));
    return true;
  }

  close() {
    this.ours = true;
    this.handlers = null;
    if (this.socket.readyState === WebSocket.OPEN) this.socket.close(1000);
    // Closing a socket that is still connecting makes the browser log an error: close it once it opens.
    else if (this.socket.readyState === WebSocket.CONNECTING) {
      this.socket.addEventListener("open", () => this.socket.close(1000));
    }
  }
}
