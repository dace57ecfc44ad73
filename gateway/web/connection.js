// One user's live connection: WebSocket with the JSON subprotocol, Hello,
// Sync from the last cursor, live Deliver frames joined to the sync by the
// seam rule, heartbeats, reconnect with backoff, and sends that are
// exactly-once across reconnects. Follows docs/PROTOCOL.md §8.

const SUBPROTOCOL = "hanmadi.v1.json";
const SYNC_LIMIT = 200;
/** Recently handed-on (conversation, message_id), as the Rust client keeps. */
const SEEN_CAPACITY = 4096;
/** A Send unanswered this long means a dead connection: reconnect, resend. */
const SEND_TIMEOUT_MS = 10000;
/** Equal-jitter backoff: the ceiling starts here and doubles... */
const BACKOFF_FIRST_MS = 100;
/** ...up to this. */
const BACKOFF_MAX_MS = 2000;
/** Until a Welcome says otherwise. */
const DEFAULT_HEARTBEAT_MS = 30000;

/** Error code numbers by their JSON names (§6). */
const CODES = {
  ERROR_CODE_RATE_LIMITED: 1001,
  ERROR_CODE_SERVER_BUSY: 1002,
  ERROR_CODE_UNAVAILABLE: 1003,
  ERROR_CODE_SLOW_CONSUMER: 2001,
  ERROR_CODE_SERVER_DRAINING: 2002,
  ERROR_CODE_IDLE_TIMEOUT: 2003,
  ERROR_CODE_HANDSHAKE_TIMEOUT: 2004,
  ERROR_CODE_UNAUTHENTICATED: 3001,
  ERROR_CODE_TOKEN_EXPIRED: 3002,
  ERROR_CODE_TOKEN_INVALID: 3003,
  ERROR_CODE_TOO_MANY_CONNECTIONS: 3004,
  ERROR_CODE_FRAME_TOO_LARGE: 3101,
  ERROR_CODE_MALFORMED_FRAME: 3102,
  ERROR_CODE_UNSUPPORTED: 3103,
  ERROR_CODE_INVALID_ARGUMENT: 3201,
  ERROR_CODE_BODY_TOO_LARGE: 3202,
  ERROR_CODE_NOT_FOUND: 3203,
  ERROR_CODE_NOT_A_MEMBER: 3204,
  ERROR_CODE_BLOCKED: 3205,
  ERROR_CODE_CURSOR_EXPIRED: 3206,
};

/** The number of an error code, given as its name or its number. */
export function codeNumber(code) {
  if (typeof code === "number") return code;
  return CODES[code] || Number(code) || 0;
}

const isRetry = (n) => n >= 1000 && n < 2000;
const isReconnect = (n) => n >= 2000 && n < 3000;
/** Codes after which the token itself is no good: log in again. */
const TOKEN_CODES = new Set([3001, 3002, 3003]);

/** Bytes of a standard base64 string. */
function fromBase64(text) {
  const raw = atob(text || "");
  const out = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
  return out;
}

function toBase64(bytes) {
  let raw = "";
  for (const b of bytes) raw += String.fromCharCode(b);
  return btoa(raw);
}

/** Bytewise order of two cursors (base64); the empty cursor sorts first. */
export function compareCursors(a, b) {
  const x = fromBase64(a);
  const y = fromBase64(b);
  const n = Math.min(x.length, y.length);
  for (let i = 0; i < n; i++) {
    if (x[i] !== y[i]) return x[i] - y[i];
  }
  return x.length - y.length;
}

/** A stable text key for a Conversation object. */
export function conversationKey(conversation) {
  if (!conversation) return "";
  if (conversation.group_id) return `g:${conversation.group_id}`;
  const d = conversation.direct || {};
  return `d:${d.user_low || "0"}:${d.user_high || "0"}`;
}

/** A fresh client_msg_id: 16 random bytes, base64. */
export function newClientMsgId() {
  return toBase64(crypto.getRandomValues(new Uint8Array(16)));
}

/**
 * The connection. Callbacks (all optional):
 * - onState(state, detail): "connecting", "syncing", "live",
 *   "reconnecting" (detail.delayMs), "stopped" (detail.reason);
 * - onMessages(messages): messages handed on, in inbox order, each once;
 * - onSendAck(outgoing, ack): a send was committed;
 * - onSendFailed(outgoing, error): a send was refused for good;
 * - onPosition(cursor): the position moved (persist it);
 * - onTokenRejected(): the token no longer works.
 */
export class Connection {
  constructor({ url, token, deviceId, position, callbacks }) {
    this.url = url;
    this.token = token;
    this.deviceId = deviceId;
    this.position = position || "";
    this.cb = callbacks || {};
    this.seen = new Set();
    this.outbox = []; // unacked sends, in order; the first is in flight
    this.reads = new Map(); // conversation key -> latest Read to send
    this.state = "stopped";
    this.socket = null;
    this.ceiling = BACKOFF_FIRST_MS;
    this.retryAfterMs = 0;
    this.timers = new Set();
    this.stopped = true;
    this.maxBodyLen = 16384;
  }

  start() {
    this.stopped = false;
    this.open();
  }

  /** Closes for good (log-out). */
  stop(reason = "stopped") {
    this.stopped = true;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    this.ackTimer = null;
    clearInterval(this.heartbeat);
    if (this.socket) {
      this.socket.onclose = null;
      this.socket.close();
      this.socket = null;
    }
    this.setState("stopped", { reason });
  }

  /**
   * Queues a text message to `target` ({user_id} or {group_id}); sends are
   * one at a time so they commit in the order they were written, each with
   * its own client_msg_id that every resend keeps.
   */
  send(target, body) {
    const outgoing = { client_msg_id: newClientMsgId(), target, body, reqId: 0 };
    this.outbox.push(outgoing);
    if (this.outbox.length === 1) this.pump();
    return outgoing;
  }

  /** Marks a conversation read up to `messageId` (sent when live). */
  read(conversation, messageId) {
    this.reads.set(conversationKey(conversation), { conversation, message_id: messageId });
    if (this.state === "live") this.flushReads();
  }

  // --- the socket --------------------------------------------------------

  later(fn, ms) {
    const t = setTimeout(() => {
      this.timers.delete(t);
      fn();
    }, ms);
    this.timers.add(t);
    return t;
  }

  setState(state, detail = {}) {
    this.state = state;
    if (this.cb.onState) this.cb.onState(state, detail);
  }

  open() {
    if (this.stopped) return;
    this.setState("connecting");
    this.nextReq = 1;
    this.pending = new Map(); // req_id -> handler of its answer
    this.buffered = [];
    let socket;
    try {
      socket = new WebSocket(this.url, [SUBPROTOCOL]);
    } catch {
      this.reconnect();
      return;
    }
    this.socket = socket;
    socket.onopen = () => this.hello();
    socket.onmessage = (event) => this.receive(event.data);
    // A failed attempt fires `error` then `close`; `close` alone decides.
    socket.onerror = () => {};
    socket.onclose = () => {
      if (this.socket === socket) this.reconnect();
    };
  }

  /** Drops the socket and schedules the next attempt with backoff (§8.2). */
  reconnect() {
    clearInterval(this.heartbeat);
    if (this.socket) {
      this.socket.onclose = null;
      this.socket.close();
      this.socket = null;
    }
    for (const outgoing of this.outbox) outgoing.reqId = 0;
    if (this.stopped) return;
    const wait = Math.max(
      this.ceiling / 2 + Math.random() * (this.ceiling / 2),
      this.retryAfterMs,
    );
    this.ceiling = Math.min(this.ceiling * 2, BACKOFF_MAX_MS);
    this.retryAfterMs = 0;
    this.setState("reconnecting", { delayMs: Math.round(wait) });
    this.later(() => this.open(), wait);
  }

  frame(kind, body, onAnswer) {
    const reqId = this.nextReq++;
    if (onAnswer) this.pending.set(String(reqId), onAnswer);
    this.socket.send(JSON.stringify({ req_id: String(reqId), [kind]: body }));
    this.lastSent = Date.now();
    return reqId;
  }

  hello() {
    this.frame("hello", { token: this.token, device_id: this.deviceId }, (reply) => {
      if (!reply.welcome) {
        // Refused (§3.2): the server closes; its code says what next.
        this.onClosing(reply.error || {});
        return;
      }
      const w = reply.welcome;
      this.heartbeatMs = w.heartbeat_ms || DEFAULT_HEARTBEAT_MS;
      if (w.max_body_len) this.maxBodyLen = w.max_body_len;
      this.startHeartbeat();
      this.setState("syncing");
      this.sync(this.position);
    });
  }

  receive(data) {
    this.lastReceived = Date.now();
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      this.reconnect();
      return;
    }
    const reqId = frame.req_id || "0";
    if (frame.deliver) {
      this.onDeliver(frame.deliver);
    } else if (frame.error && reqId === "0") {
      this.onClosing(frame.error);
    } else if (this.pending.has(reqId)) {
      const handler = this.pending.get(reqId);
      this.pending.delete(reqId);
      handler(frame);
    } else if (frame.error) {
      this.onRefused(reqId, frame.error);
    }
    // Anything else (a pong, a frame of a newer server) needs no action.
  }

  /** A closing notice (req_id 0): reconnect, or give up on its code. */
  onClosing(error) {
    const code = codeNumber(error.code);
    if (isRetry(code) || isReconnect(code)) {
      this.retryAfterMs = error.retry_after_ms || 0;
      this.reconnect();
    } else if (TOKEN_CODES.has(code)) {
      this.stop("token");
      if (this.cb.onTokenRejected) this.cb.onTokenRejected();
    } else {
      this.stop(error.message || String(error.code));
    }
  }

  /** A refusal of a frame that had no answer handler (Read, Ack). */
  onRefused(reqId, error) {
    const code = codeNumber(error.code);
    if (TOKEN_CODES.has(code)) {
      this.stop("token");
      if (this.cb.onTokenRejected) this.cb.onTokenRejected();
    }
    // A refused Read or Ack is harmless: a later one covers it.
  }

  // --- heartbeats (§8.1) --------------------------------------------------

  startHeartbeat() {
    clearInterval(this.heartbeat);
    this.lastSent = this.lastReceived = Date.now();
    const interval = this.heartbeatMs;
    this.heartbeat = setInterval(() => {
      const now = Date.now();
      if (now - this.lastReceived >= 2 * interval) {
        this.reconnect(); // dead despite the pings
      } else if (now - this.lastSent >= interval || now - this.lastReceived >= interval) {
        this.frame("ping", {}, () => {});
      }
    }, interval);
  }

  // --- sync and the seam rule (§8.3, §8.4) --------------------------------

  sync(after) {
    this.frame("sync", { after, limit: SYNC_LIMIT }, (reply) => {
      if (reply.error) {
        const code = codeNumber(reply.error.code);
        if (!isRetry(code) && !isReconnect(code) && after) {
          // CURSOR_EXPIRED: entries past retention are gone from the
          // inbox; the page loads conversations from history anyway, so
          // restart the stream from the oldest kept entry (§8.7). Any other
          // refusal of a stored cursor is the same remedy.
          this.position = "";
          this.sync("");
        } else {
          this.retryAfterMs = reply.error.retry_after_ms || 0;
          this.reconnect();
        }
        return;
      }
      const batch = reply.sync_batch || {};
      const handed = [];
      for (const entry of batch.messages || []) this.admit(entry, handed);
      const next = batch.next || after;
      if (batch.has_more) {
        if (compareCursors(next, after) <= 0) {
          this.stop("the server's sync did not move forward");
          return;
        }
        this.handOn(handed);
        this.sync(next);
        return;
      }
      for (const entry of this.buffered) this.admit(entry, handed);
      this.buffered = [];
      this.handOn(handed);
      this.ceiling = BACKOFF_FIRST_MS;
      this.setState("live");
      this.flushReads();
      this.pump();
    });
  }

  onDeliver(entry) {
    if (this.state === "live") {
      const handed = [];
      this.admit(entry, handed);
      this.handOn(handed);
    } else if (compareCursors(entry.cursor, this.position) > 0) {
      this.buffered.push(entry);
    }
  }

  /** The seam rule: each entry once, in cursor order. */
  admit(entry, handed) {
    if (compareCursors(entry.cursor, this.position) <= 0) return;
    this.position = entry.cursor;
    const m = entry.message;
    const key = `${conversationKey(m.conversation)}/${m.message_id}`;
    if (this.seen.has(key)) return;
    this.seen.add(key);
    if (this.seen.size > SEEN_CAPACITY) {
      this.seen.delete(this.seen.values().next().value);
    }
    handed.push(m);
  }

  handOn(messages) {
    if (messages.length && this.cb.onMessages) this.cb.onMessages(messages);
    if (this.cb.onPosition) this.cb.onPosition(this.position);
    this.scheduleAck();
  }

  /** One Ack covers many entries: at most one a second (§8.5). */
  scheduleAck() {
    if (this.ackTimer || !this.position) return;
    this.ackTimer = this.later(() => {
      this.ackTimer = null;
      if (this.socket && this.socket.readyState === WebSocket.OPEN && this.state === "live") {
        this.frame("ack", { cursor: this.position });
      }
    }, 1000);
  }

  flushReads() {
    for (const read of this.reads.values()) this.frame("read", read);
    this.reads.clear();
  }

  // --- sending (§8.6) -------------------------------------------------------

  /** Sends the first unacked message if it is not already in flight. */
  pump() {
    const outgoing = this.outbox[0];
    if (!outgoing || outgoing.reqId || this.state !== "live") return;
    const send = { client_msg_id: outgoing.client_msg_id, body: outgoing.body, ...outgoing.target };
    const timer = this.later(() => {
      if (outgoing.reqId === reqId) this.reconnect();
    }, SEND_TIMEOUT_MS);
    const reqId = this.frame("send", send, (reply) => {
      clearTimeout(timer);
      this.timers.delete(timer);
      outgoing.reqId = 0;
      if (reply.send_ack) {
        this.outbox.shift();
        if (this.cb.onSendAck) this.cb.onSendAck(outgoing, reply.send_ack);
      } else {
        const error = reply.error || {};
        const code = codeNumber(error.code);
        if (isRetry(code) || isReconnect(code)) {
          this.later(() => this.pump(), Math.max(error.retry_after_ms || 0, 100));
          return;
        }
        this.outbox.shift();
        if (this.cb.onSendFailed) this.cb.onSendFailed(outgoing, error);
      }
      this.pump();
    });
    outgoing.reqId = reqId;
  }
}
