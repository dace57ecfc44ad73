// The chat page: log-in, the conversation list, one conversation at a
// time, groups. Live traffic goes through `Connection`; everything else
// through the HTTP API.

import {
  api, ApiError, clearSession, deviceId, loadPosition, loadSession, savePosition, saveSession,
} from "./api.js";
import { Connection, conversationKey } from "./connection.js";

const HISTORY_PAGE = 50;
const CONVERSATION_PAGE = 200;
/** Start loading older messages this close to the top, in pixels. */
const PAGE_BACK_MARGIN = 120;
/** The message box grows with its text up to this height, in pixels. */
const COMPOSER_MAX_HEIGHT = 160;
/** The server counts unread messages up to 100. */
const MAX_UNREAD_SHOWN = 99;

const $ = (id) => document.getElementById(id);

/** Everything the page knows; the DOM is redrawn from it. */
const state = {
  session: null,
  connection: null,
  /** key -> conversation (see `conversationOf`). */
  conversations: new Map(),
  openKey: null,
  /** user id -> profile, or a pending fetch of it. */
  profiles: new Map(),
  connState: "connecting",
  redrawQueued: false,
};

// --- ids ---------------------------------------------------------------

/** Ids are decimal strings of uint64; BigInt compares them exactly. */
const big = (id) => BigInt(id || "0");

function directConversation(a, b) {
  const [low, high] = big(a) <= big(b) ? [a, b] : [b, a];
  return { direct: { user_low: low, user_high: high } };
}

// --- conversations -------------------------------------------------------

/** The conversation record of `conversation`, created on first sight. */
function conversationOf(conversation) {
  const key = conversationKey(conversation);
  let c = state.conversations.get(key);
  if (!c) {
    const me = state.session.user_id;
    const groupId = conversation.group_id || null;
    let peerId = null;
    if (!groupId) {
      const d = conversation.direct;
      peerId = d.user_low === me ? d.user_high : d.user_low;
    }
    c = {
      key,
      conversation,
      type: groupId ? "group" : "direct",
      groupId,
      peerId,
      name: null,
      lastId: "0",
      lastMessage: null,
      /** Unread count as of the last list fetch, plus those counted since. */
      unread: 0,
      /** Ids of messages counted unread after the list was fetched. */
      unreadSince: [],
      /** message id -> message: the loaded window, from the newest back. */
      messages: new Map(),
      /** Own messages not yet acknowledged, in sending order. */
      outgoing: [],
      loaded: false,
      loading: false,
      hasMore: true,
      createdLocally: Date.now(),
    };
    state.conversations.set(key, c);
  }
  return c;
}

function displayName(c) {
  if (c.name) return c.name;
  if (c.type === "direct") return nameOf(c.peerId);
  return "Group";
}

/** Merges the server's list: names, newest messages, unread counts. */
async function loadConversations() {
  const token = state.session.token;
  const list = await api("GET", `/v1/conversations?limit=${CONVERSATION_PAGE}`, { token });
  const listed = new Set();
  for (const entry of list.conversations || []) {
    const c = conversationOf(entry.conversation);
    listed.add(c.key);
    c.name = entry.name || c.name;
    const serverLast = entry.last_message ? entry.last_message.message_id : "0";
    if (entry.last_message && big(serverLast) >= big(c.lastId)) {
      c.lastMessage = entry.last_message;
      c.lastId = serverLast;
    }
    // The server counted up to its newest message; keep what arrived since.
    c.unreadSince = c.unreadSince.filter((id) => big(id) > big(serverLast));
    c.unread = (entry.unread || 0) + c.unreadSince.length;
    if (c.key === state.openKey) markRead(c);
  }
  // Groups the user left are no longer listed.
  for (const [key, c] of list.has_more ? [] : state.conversations) {
    if (c.type === "group" && !listed.has(key) && c.lastId !== "0" && key !== state.openKey) {
      state.conversations.delete(key);
    }
  }
  redraw();
}

let listRefresh = null;
/** Refetches the list soon (a conversation appeared, a group changed). */
function refreshConversationsSoon() {
  if (listRefresh) return;
  listRefresh = setTimeout(() => {
    listRefresh = null;
    loadConversations().catch(showListError);
  }, 150);
}

function showListError(error) {
  if (error instanceof ApiError && error.status === 401) logOut();
}

// --- profiles ---------------------------------------------------------------

function nameOf(userId) {
  if (!userId) return "";
  if (userId === state.session.user_id) return state.session.username;
  const p = state.profiles.get(userId);
  if (p && p.username) return p.display_name || p.username;
  if (!p) {
    state.profiles.set(userId, { loading: true });
    api("GET", `/v1/users/${userId}`, { token: state.session.token })
      .then((profile) => state.profiles.set(userId, profile))
      .catch(() => state.profiles.set(userId, { username: `user ${userId}` }))
      .finally(redraw);
  }
  return "…";
}

// --- live messages ------------------------------------------------------------

/** Messages handed on by the connection: each once, in inbox order. */
function onMessages(messages) {
  const me = state.session.user_id;
  for (const m of messages) {
    const c = conversationOf(m.conversation);
    if (c.name === null) refreshConversationsSoon();
    // Kept once the conversation's history is (being) loaded; before
    // that, opening it loads the newest page, which holds these.
    if (c.loaded || c.loading) c.messages.set(m.message_id, m);
    // Our own message from another device, or this one's before its ack.
    if (m.sender === me) {
      c.outgoing = c.outgoing.filter((o) => o.client_msg_id !== m.client_msg_id);
    }
    if (big(m.message_id) > big(c.lastId)) {
      c.lastId = m.message_id;
      c.lastMessage = m;
      if (m.sender !== me) {
        if (c.key === state.openKey && document.visibilityState === "visible") {
          markRead(c);
        } else {
          c.unread += 1;
          c.unreadSince.push(m.message_id);
        }
      }
    }
    if (isMembershipChange(m)) refreshConversationsSoon();
    if (c.type === "group" && membershipRemoves(m, me)) {
      // Out of the group: an open view stays readable, the list drops it.
      c.left = true;
      if (c.key !== state.openKey) state.conversations.delete(c.key);
    } else if (c.type === "group" && m.kind === "MESSAGE_KIND_MEMBERS_ADDED"
      && ((m.membership && m.membership.user_ids) || []).includes(me)) {
      c.left = false;
    }
  }
  redraw();
}

function isMembershipChange(m) {
  return m.kind && m.kind !== "MESSAGE_KIND_TEXT" && m.kind !== "MESSAGE_KIND_UNSPECIFIED";
}

function membershipRemoves(m, userId) {
  const removed = m.kind === "MESSAGE_KIND_MEMBERS_REMOVED" || m.kind === "MESSAGE_KIND_MEMBER_LEFT";
  return removed && ((m.membership && m.membership.user_ids) || []).includes(userId);
}

function onSendAck(outgoing, ack) {
  const c = conversationOf(ack.conversation);
  c.outgoing = c.outgoing.filter((o) => o !== outgoing);
  const message = {
    conversation: ack.conversation,
    message_id: ack.message_id,
    sender: state.session.user_id,
    client_msg_id: ack.client_msg_id,
    sent_at: ack.sent_at,
    kind: "MESSAGE_KIND_TEXT",
    body: outgoing.body,
  };
  if (c.loaded || c.loading) c.messages.set(ack.message_id, message);
  if (big(ack.message_id) > big(c.lastId)) {
    c.lastId = ack.message_id;
    c.lastMessage = message;
  }
  redraw();
}

function onSendFailed(outgoing, error) {
  for (const c of state.conversations.values()) {
    const o = c.outgoing.find((x) => x === outgoing);
    if (o) {
      o.failed = error.message || String(error.code);
    }
  }
  redraw();
}

/** Tells the server the open conversation is read to its newest message. */
function markRead(c) {
  if (c.lastId !== "0" && state.connection) state.connection.read(c.conversation, c.lastId);
  c.unread = 0;
  c.unreadSince = [];
}

// --- opening a conversation, paging back ------------------------------------------

function historyPath(c, before) {
  const base = c.type === "group" ? `/v1/groups/${c.groupId}` : `/v1/direct/${c.peerId}`;
  const query = `limit=${HISTORY_PAGE}` + (before ? `&before=${before}` : "");
  return `${base}/messages?${query}`;
}

/** Loads the page older than what is loaded (the newest page first). */
async function loadOlder(c) {
  if (c.loading || (c.loaded && !c.hasMore)) return;
  c.loading = true;
  redraw();
  let oldest = null;
  for (const id of c.messages.keys()) {
    if (oldest === null || big(id) < big(oldest)) oldest = id;
  }
  const before = c.loaded ? oldest : null;
  try {
    const page = await api("GET", historyPath(c, before), { token: state.session.token });
    for (const m of page.messages || []) c.messages.set(m.message_id, m);
    c.hasMore = Boolean(page.has_more);
    c.loaded = true;
    c.historyError = null;
  } catch (error) {
    c.historyError = error.message;
    if (error instanceof ApiError && error.status === 401) logOut();
  } finally {
    c.loading = false;
  }
  redraw();
}

function openConversation(key, { focus = true } = {}) {
  const c = state.conversations.get(key);
  if (!c) return;
  state.openKey = key;
  stickToBottom = true;
  markRead(c);
  if (!c.loaded) loadOlder(c).then(() => markRead(c));
  document.body.classList.add("conversation-open");
  redraw();
  if (focus) $("composer").focus();
}

function closeConversation() {
  const key = state.openKey;
  state.openKey = null;
  document.body.classList.remove("conversation-open");
  redraw();
  const button = key && document.querySelector(`.conv[data-key="${key}"]`);
  if (button) button.focus();
}

// --- drawing ------------------------------------------------------------------------

function redraw() {
  if (state.redrawQueued) return;
  state.redrawQueued = true;
  setTimeout(() => {
    state.redrawQueued = false;
    drawList();
    drawConversation();
  }, 0);
}

const STATUS_TEXT = {
  connecting: "Connecting…",
  syncing: "Syncing…",
  live: "Online",
  reconnecting: "Reconnecting…",
  stopped: "Offline",
};

function drawStatus(detail = {}) {
  const el = $("status");
  el.dataset.state = state.connState;
  let text = STATUS_TEXT[state.connState] || state.connState;
  if (state.connState === "reconnecting" && detail.delayMs >= 1000) {
    text = `Reconnecting in ${Math.round(detail.delayMs / 1000)} s…`;
  }
  if (state.connState === "stopped" && detail.reason && detail.reason !== "logged out") {
    text = `Offline: ${detail.reason}`;
  }
  el.textContent = text;
  el.title = text;
}

/** A message id starts with its time (PROTOCOL.md §4.3), so ordering by
 * the newest id is newest activity first. A chat just started here has no
 * message yet: it goes on top, newest start first (a millisecond time
 * shifted past every id's bits). */
function sortedConversations() {
  const key = (c) => (c.lastId === "0" ? BigInt(c.createdLocally) << 64n : big(c.lastId));
  return [...state.conversations.values()].sort((a, b) => {
    const x = key(a);
    const y = key(b);
    return x === y ? 0 : x > y ? -1 : 1;
  });
}

function preview(c) {
  const m = c.lastMessage;
  if (!m) return "No messages yet";
  const text = describe(m);
  if (isMembershipChange(m)) return text;
  const who = m.sender === state.session.user_id ? "You: " : c.type === "group" ? `${nameOf(m.sender)}: ` : "";
  return who + text;
}

/** The text of a message, or a sentence for a membership change. */
function describe(m) {
  const ids = (m.membership && m.membership.user_ids) || [];
  const names = ids.map(nameOf).join(", ");
  switch (m.kind) {
    case "MESSAGE_KIND_GROUP_CREATED":
      return `${nameOf(m.sender)} created the group with ${names}`;
    case "MESSAGE_KIND_MEMBERS_ADDED":
      return `${nameOf(m.sender)} added ${names}`;
    case "MESSAGE_KIND_MEMBERS_REMOVED":
      return `${nameOf(m.sender)} removed ${names}`;
    case "MESSAGE_KIND_MEMBER_LEFT":
      return `${nameOf(m.sender)} left`;
    default:
      return m.body || "";
  }
}

function timeText(ms) {
  const d = new Date(Number(ms));
  const sameDay = d.toDateString() === new Date().toDateString();
  return sameDay
    ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : d.toLocaleDateString([], { month: "short", day: "numeric" });
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function drawList() {
  const list = $("conversations");
  const focusedKey = document.activeElement && document.activeElement.dataset
    ? document.activeElement.dataset.key : null;
  const items = sortedConversations().map((c) => row(c.key, () => {
    const unread = c.unread > 0
      ? el("span", { class: "unread", dataset: { count: String(c.unread) },
        "aria-label": `${c.unread} unread` }, c.unread > MAX_UNREAD_SHOWN ? "99+" : String(c.unread))
      : null;
    const time = c.lastMessage ? el("time", { class: "muted small" }, timeText(c.lastMessage.sent_at)) : null;
    const button = el("button", {
      type: "button",
      class: "conv",
      dataset: { key: c.key, type: c.type },
      "aria-current": c.key === state.openKey ? "true" : null,
    },
    el("span", { class: "avatar", "aria-hidden": "true" }, initial(displayName(c))),
    el("span", { class: "conv-text" },
      el("span", { class: "conv-top" }, el("span", { class: "conv-name" }, displayName(c)), time),
      el("span", { class: "conv-bottom" }, el("span", { class: "preview muted" }, preview(c)), unread)));
    button.addEventListener("click", () => openConversation(c.key));
    return el("li", {}, button);
  }));
  reconcile(list, items);
  $("no-conversations").hidden = items.length > 0;
  list.hidden = items.length === 0;
  if (focusedKey && document.activeElement === document.body) {
    // The focused entry was redrawn: focus its new element.
    const again = list.querySelector(`.conv[data-key="${focusedKey}"]`);
    if (again) again.focus();
  }
  const total = [...state.conversations.values()].reduce((n, c) => n + c.unread, 0);
  document.title = total > 0 ? `(${total}) Hanmadi` : "Hanmadi";
}

function initial(name) {
  const first = [...(name || "?")][0] || "?";
  return first.toUpperCase();
}

/** Whether the view follows new messages (the reader is at the bottom). */
let stickToBottom = true;

function drawConversation() {
  const c = state.openKey ? state.conversations.get(state.openKey) : null;
  const scroller = $("scroller");
  $("placeholder").hidden = Boolean(c);
  scroller.hidden = !c;
  $("composer-form").hidden = !c;
  $("group-info").hidden = !c || c.type !== "group" || c.left;
  $("conversation-name").textContent = c ? displayName(c) : "Hanmadi";
  if (!c) return;
  const writable = !c.left;
  $("composer").disabled = !writable;
  $("send").disabled = !writable;
  $("composer").placeholder = writable ? "Message" : "You are no longer in this group";

  const me = state.session.user_id;
  const ordered = [...c.messages.values()].sort((a, b) => {
    const x = big(a.message_id);
    const y = big(b.message_id);
    return x === y ? 0 : x < y ? -1 : 1;
  });
  // Rows keyed so that a redraw touches only what changed: own messages by
  // client_msg_id (pending, then acknowledged, is one row), others by id.
  const rows = [];
  let previousSender = null;
  for (const m of ordered) {
    if (isMembershipChange(m)) {
      rows.push(row(`m:${m.message_id}`, () => el("li", {
        class: "msg system", dataset: { id: m.message_id, state: "sent" },
      }, el("span", { class: "body" }, describe(m)))));
      previousSender = null;
      continue;
    }
    const mine = m.sender === me;
    const showName = c.type === "group" && !mine && m.sender !== previousSender;
    previousSender = m.sender;
    const sent = new Date(Number(m.sent_at));
    rows.push(row(mine ? `c:${m.client_msg_id}` : `m:${m.message_id}`, () => el("li", {
      class: `msg ${mine ? "mine" : "theirs"}`,
      dataset: { id: m.message_id, state: "sent", sender: m.sender },
    },
    showName ? el("span", { class: "sender" }, nameOf(m.sender)) : null,
    el("span", { class: "body" }, m.body || ""),
    el("time", { class: "meta", datetime: sent.toISOString(), title: sent.toLocaleString() },
      timeText(m.sent_at)))));
  }
  for (const o of c.outgoing) {
    rows.push(row(`c:${o.client_msg_id}`, () => el("li", {
      class: `msg mine ${o.failed ? "failed" : "pending"}`,
      dataset: { state: o.failed ? "failed" : "pending", clientMsgId: o.client_msg_id },
    },
    el("span", { class: "body" }, o.body),
    el("span", { class: "meta" }, o.failed ? `Not sent: ${o.failed}` : "Sending…"))));
  }

  const list = $("messages");
  const oldHeight = scroller.scrollHeight;
  const oldTop = scroller.scrollTop;
  const firstBefore = list.firstElementChild ? list.firstElementChild.dataset.key : null;
  if (list.dataset.conversation !== c.key) {
    // Another conversation: fill the log silently, announce what follows.
    list.dataset.conversation = c.key;
    list.setAttribute("aria-live", "off");
    list.replaceChildren();
    setTimeout(() => list.setAttribute("aria-live", "polite"), 0);
  }
  reconcile(list, rows);
  let status = "";
  if (c.loading) status = "Loading earlier messages…";
  else if (c.historyError) status = `Could not load messages: ${c.historyError}`;
  else if (c.loaded && !c.hasMore) status = ordered.length ? "Start of the conversation" : "No messages yet. Say hello!";
  $("history-state").textContent = status;

  if (stickToBottom) {
    scroller.scrollTop = scroller.scrollHeight;
  } else if (firstBefore && list.firstElementChild && list.firstElementChild.dataset.key !== firstBefore) {
    // Older messages were put on top: keep the reader where they were.
    scroller.scrollTop = oldTop + (scroller.scrollHeight - oldHeight);
  }
  if (c.loaded && c.hasMore && !c.loading && scroller.scrollHeight <= scroller.clientHeight) {
    loadOlder(c); // the first page does not fill the view
  }
}

/** A row of a keyed list: its key, and how to build it. */
function row(key, build) {
  return { key, build };
}

/**
 * Makes `list`'s children the built rows, in order, reusing the element of
 * every row whose key and content are unchanged: a screen reader hears only
 * new messages, and the reader's scroll anchor survives.
 */
function reconcile(list, rows) {
  const existing = new Map([...list.children].map((n) => [n.dataset.key, n]));
  let cursor = list.firstElementChild;
  for (const { key, build } of rows) {
    const fresh = build();
    fresh.dataset.key = key;
    let node = existing.get(key);
    existing.delete(key);
    if (node && !node.isEqualNode(fresh)) {
      node.replaceWith(fresh);
      if (cursor === node) cursor = fresh;
      node = fresh;
    }
    node = node || fresh;
    if (node === cursor) {
      cursor = cursor.nextElementSibling;
    } else {
      list.insertBefore(node, cursor);
    }
  }
  for (const stale of existing.values()) stale.remove();
}

// --- sending ------------------------------------------------------------------------

function sendFromComposer() {
  const c = state.openKey ? state.conversations.get(state.openKey) : null;
  const box = $("composer");
  const body = box.value.trim();
  $("composer-error").textContent = "";
  if (!c || !body || c.left || !state.connection) return;
  const limit = state.connection.maxBodyLen;
  if (new TextEncoder().encode(body).length > limit) {
    $("composer-error").textContent = `Too long: at most ${limit} bytes.`;
    return;
  }
  const target = c.type === "group" ? { group_id: c.groupId } : { user_id: c.peerId };
  const outgoing = state.connection.send(target, body);
  c.outgoing.push(outgoing);
  box.value = "";
  autosize();
  stickToBottom = true;
  redraw();
}

function autosize() {
  const box = $("composer");
  box.style.height = "auto";
  box.style.height = `${Math.min(box.scrollHeight + 2, COMPOSER_MAX_HEIGHT)}px`;
  box.style.overflowY = box.scrollHeight + 2 > COMPOSER_MAX_HEIGHT ? "auto" : "hidden";
}

// --- dialogs ------------------------------------------------------------------------

async function findUser(username) {
  const name = username.trim();
  if (!name) throw new Error("Enter a username.");
  try {
    return await api("GET", `/v1/users/by-name/${encodeURIComponent(name)}`, { token: state.session.token });
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) throw new Error(`No user named “${name}”.`);
    throw error;
  }
}

function openDialog(id, focusId) {
  const dialog = $(id);
  dialog.querySelectorAll(".error").forEach((e) => { e.textContent = ""; });
  dialog.showModal();
  if (focusId) $(focusId).focus();
}

async function startDirect(event) {
  event.preventDefault();
  try {
    const profile = await findUser($("direct-username").value);
    state.profiles.set(profile.user_id, profile);
    const c = conversationOf(directConversation(state.session.user_id, profile.user_id));
    $("direct-dialog").close();
    $("direct-username").value = "";
    openConversation(c.key);
  } catch (error) {
    $("direct-error").textContent = error.message;
  }
}

async function createGroup(event) {
  event.preventDefault();
  const name = $("group-name").value.trim();
  if (!name) {
    $("group-error").textContent = "Give the group a name.";
    return;
  }
  try {
    const usernames = $("group-members").value.split(",").map((s) => s.trim()).filter(Boolean);
    const members = [];
    for (const u of usernames) {
      const profile = await findUser(u);
      state.profiles.set(profile.user_id, profile);
      members.push(profile.user_id);
    }
    const group = await api("POST", "/v1/groups", { token: state.session.token, body: { name, members } });
    const c = conversationOf({ group_id: group.group_id });
    c.name = group.name;
    $("group-dialog").close();
    $("group-name").value = "";
    $("group-members").value = "";
    openConversation(c.key);
  } catch (error) {
    $("group-error").textContent = error.message;
  }
}

async function showMembers() {
  const c = state.conversations.get(state.openKey);
  if (!c || c.type !== "group") return;
  openDialog("members-dialog", "add-member");
  await drawMembers(c);
}

async function drawMembers(c) {
  const list = $("members");
  try {
    const group = await api("GET", `/v1/groups/${c.groupId}`, { token: state.session.token });
    $("members-title").textContent = `${group.name}: ${group.member_count} members`;
    const me = state.session.user_id;
    const myRole = (group.members.find((m) => m.user_id === me) || {}).role;
    const canManage = myRole === "owner" || myRole === "admin";
    await Promise.all(group.members.map((m) => profileOf(m.user_id)));
    list.replaceChildren(...group.members.map((m) => {
      const remove = canManage && m.user_id !== me
        ? el("button", { type: "button", class: "ghost small", dataset: { userId: m.user_id },
          "aria-label": `Remove ${nameOf(m.user_id)}` }, "Remove")
        : null;
      if (remove) remove.addEventListener("click", () => removeMember(c, m.user_id));
      return el("li", { dataset: { userId: m.user_id } },
        el("span", {}, nameOf(m.user_id)), el("span", { class: "muted small" }, m.role), remove);
    }));
  } catch (error) {
    $("members-error").textContent = error.message;
  }
}

async function profileOf(userId) {
  const known = state.profiles.get(userId);
  if (known && known.username) return known;
  const profile = await api("GET", `/v1/users/${userId}`, { token: state.session.token })
    .catch(() => ({ user_id: userId, username: `user ${userId}` }));
  state.profiles.set(userId, profile);
  return profile;
}

async function addMember(event) {
  event.preventDefault();
  const c = state.conversations.get(state.openKey);
  $("members-error").textContent = "";
  try {
    const profile = await findUser($("add-member").value);
    state.profiles.set(profile.user_id, profile);
    await api("POST", `/v1/groups/${c.groupId}/members`, {
      token: state.session.token, body: { user_ids: [profile.user_id] },
    });
    $("add-member").value = "";
    await drawMembers(c);
  } catch (error) {
    $("members-error").textContent = error.message;
  }
}

async function removeMember(c, userId) {
  $("members-error").textContent = "";
  try {
    await api("DELETE", `/v1/groups/${c.groupId}/members/${userId}`, { token: state.session.token });
    await drawMembers(c);
    $("add-member").focus();
  } catch (error) {
    $("members-error").textContent = error.message;
  }
}

async function leaveGroup() {
  const c = state.conversations.get(state.openKey);
  if (!c) return;
  try {
    await api("DELETE", `/v1/groups/${c.groupId}/members/${state.session.user_id}`, {
      token: state.session.token,
    });
    $("members-dialog").close();
    state.conversations.delete(c.key);
    closeConversation();
  } catch (error) {
    $("members-error").textContent = error.message;
  }
}

// --- session ------------------------------------------------------------------------

async function authenticate(signUp) {
  const username = $("auth-username").value.trim();
  const password = $("auth-password").value;
  $("auth-error").textContent = "";
  if (!username || !password) {
    $("auth-error").textContent = "Enter a username and a password.";
    return;
  }
  const buttons = [$("log-in"), $("sign-up")];
  buttons.forEach((b) => { b.disabled = true; });
  try {
    if (signUp) await api("POST", "/v1/users", { body: { username, password } });
    const session = await api("POST", "/v1/sessions", { body: { username, password } });
    const me = await api("GET", "/v1/users/me", { token: session.token });
    saveSession({ token: session.token, user_id: session.user_id, username: me.username });
    $("auth-password").value = "";
    await enterChat();
  } catch (error) {
    $("auth-error").textContent = error.message;
  } finally {
    buttons.forEach((b) => { b.disabled = false; });
  }
}

function showAuth() {
  $("chat-view").hidden = true;
  $("auth-view").hidden = false;
  $("auth-username").focus();
}

async function enterChat() {
  state.session = loadSession();
  if (!state.session) {
    showAuth();
    return;
  }
  $("auth-view").hidden = true;
  $("chat-view").hidden = false;
  $("me-name").textContent = state.session.username;
  try {
    await loadConversations();
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      logOut();
      return;
    }
    // Unreachable now: the connection retries, and the list follows.
  }
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const userId = state.session.user_id;
  state.connection = new Connection({
    url: `${scheme}//${location.host}/ws`,
    token: state.session.token,
    deviceId: deviceId(),
    position: loadPosition(userId),
    callbacks: {
      onState(connState, detail) {
        const wasLive = state.connState === "live";
        state.connState = connState;
        drawStatus(detail);
        $("status").dataset.transport = scheme.slice(0, -1);
        // Back online: counts and names may have moved while away.
        if (connState === "live" && !wasLive) refreshConversationsSoon();
      },
      onMessages,
      onSendAck,
      onSendFailed,
      onPosition: (cursor) => savePosition(userId, cursor),
      onTokenRejected: logOut,
    },
  });
  state.connection.start();
  redraw();
}

function logOut() {
  if (state.connection) state.connection.stop("logged out");
  clearSession(state.session);
  state.connection = null;
  state.session = null;
  state.conversations.clear();
  state.openKey = null;
  document.body.classList.remove("conversation-open");
  showAuth();
}

// --- wiring -------------------------------------------------------------------------

function wire() {
  $("auth-form").addEventListener("submit", (e) => {
    e.preventDefault();
    authenticate(false);
  });
  $("sign-up").addEventListener("click", () => authenticate(true));
  $("log-out").addEventListener("click", logOut);
  $("back").addEventListener("click", closeConversation);
  $("new-direct").addEventListener("click", () => openDialog("direct-dialog", "direct-username"));
  $("new-group").addEventListener("click", () => openDialog("group-dialog", "group-name"));
  $("group-info").addEventListener("click", showMembers);
  $("direct-form").addEventListener("submit", startDirect);
  $("group-form").addEventListener("submit", createGroup);
  $("members-form").addEventListener("submit", addMember);
  $("leave-group").addEventListener("click", leaveGroup);
  for (const cancel of document.querySelectorAll("dialog .cancel")) {
    cancel.addEventListener("click", () => cancel.closest("dialog").close());
  }

  const box = $("composer");
  box.addEventListener("keydown", (e) => {
    // Enter sends, except while an input method (Hangul) is composing.
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
      e.preventDefault();
      sendFromComposer();
    }
  });
  box.addEventListener("input", autosize);
  $("composer-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sendFromComposer();
    box.focus();
  });

  const scroller = $("scroller");
  scroller.addEventListener("scroll", () => {
    stickToBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 40;
    const c = state.openKey ? state.conversations.get(state.openKey) : null;
    if (c && scroller.scrollTop < PAGE_BACK_MARGIN) loadOlder(c);
  });

  // Escape leaves the conversation (dialogs close themselves first).
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && state.openKey && !document.querySelector("dialog[open]")) {
      closeConversation();
    }
  });
  // Up and down move between conversations in the list.
  $("conversations").addEventListener("keydown", (e) => {
    if (e.key !== "ArrowDown" && e.key !== "ArrowUp") return;
    const buttons = [...document.querySelectorAll(".conv")];
    const i = buttons.indexOf(document.activeElement);
    const next = buttons[i + (e.key === "ArrowDown" ? 1 : -1)];
    if (next) {
      e.preventDefault();
      next.focus();
    }
  });
  document.addEventListener("visibilitychange", () => {
    const c = state.openKey ? state.conversations.get(state.openKey) : null;
    if (c && document.visibilityState === "visible") {
      markRead(c);
      redraw();
    }
  });
}

wire();
autosize();
enterChat();
