// The session token: the only secret the page keeps, in sessionStorage under one key (it
// survives a reload of this tab, and ends with the tab). The list of rooms this tab has joined
// is kept beside it; it is not secret.

const TOKEN_KEY = 'actorhub.session';
const ROOMS_KEY = 'actorhub.rooms';
/** A token this close to its expiry is treated as expired. */
const EXPIRY_MARGIN_MS = 10_000;

function read(key) {
  try {
    return JSON.parse(sessionStorage.getItem(key) || 'null');
  } catch {
    return null;
  }
}

/** The stored session `{token, expires_at_s, user_id}`, if still valid. */
export function loadSession() {
  const session = read(TOKEN_KEY);
  if (session && typeof session.token === 'string' && !isExpired(session)) return session;
  sessionStorage.removeItem(TOKEN_KEY);
  return null;
}

export function isExpired(session) {
  return !session || session.expires_at_s * 1000 - EXPIRY_MARGIN_MS < Date.now();
}

export function saveSession(token, expiresAtS, userId) {
  const session = { token, expires_at_s: expiresAtS, user_id: userId };
  sessionStorage.setItem(TOKEN_KEY, JSON.stringify(session));
  return session;
}

export function clearSession() {
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(ROOMS_KEY);
}

/** The room ids `user` joined in this tab. */
export function loadRooms(userId) {
  const saved = read(ROOMS_KEY);
  if (!saved || saved.user !== userId || !Array.isArray(saved.rooms)) return [];
  return saved.rooms.filter((room) => typeof room === 'string');
}

export function saveRooms(userId, rooms) {
  sessionStorage.setItem(ROOMS_KEY, JSON.stringify({ user: userId, rooms }));
}
