// The HTTP API (docs/PROTOCOL.md §10) and what the page keeps in local
// storage: the session (its token is the only secret kept), this browser's
// device id, and the inbox position per user.

/** An API refusal: the protocol's error code number and its message. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/**
 * Calls the API on this page's own origin. `token` goes in as a bearer
 * token; answers are parsed JSON (or null for 204). Network failures throw
 * ApiError with status 0 so callers handle one type.
 */
export async function api(method, path, { token, body } = {}) {
  const headers = {};
  if (token) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
  } catch {
    throw new ApiError(0, 0, "the server cannot be reached");
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!response.ok) {
    const error = data && data.error ? data.error : {};
    throw new ApiError(
      response.status,
      error.code || 0,
      error.message || `${response.status} ${response.statusText}`,
    );
  }
  return data;
}

const SESSION_KEY = "hanmadi.session";
const DEVICE_KEY = "hanmadi.device";
const positionKey = (userId) => `hanmadi.position.${userId}`;

/** The stored session `{token, user_id, username}`, or null. */
export function loadSession() {
  try {
    const s = JSON.parse(localStorage.getItem(SESSION_KEY) || "null");
    return s && s.token && s.user_id ? s : null;
  } catch {
    return null;
  }
}

export function saveSession(session) {
  localStorage.setItem(SESSION_KEY, JSON.stringify(session));
}

/** Forgets the session and the inbox position of its user. */
export function clearSession(session) {
  localStorage.removeItem(SESSION_KEY);
  if (session) localStorage.removeItem(positionKey(session.user_id));
}

/** A stable id for this browser, as `Hello.device_id` (1 to 64 bytes). */
export function deviceId() {
  let id = localStorage.getItem(DEVICE_KEY);
  if (!id) {
    const bytes = crypto.getRandomValues(new Uint8Array(8));
    id = "web-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
    localStorage.setItem(DEVICE_KEY, id);
  }
  return id;
}

/** The last inbox cursor handed on to the page for `userId` (base64). */
export function loadPosition(userId) {
  return localStorage.getItem(positionKey(userId)) || "";
}

export function savePosition(userId, cursor) {
  localStorage.setItem(positionKey(userId), cursor);
}
