/**
 * Live scoreboard page: one ES module, no framework, no build step.
 *
 * The gateway serves it under a strict Content-Security-Policy, so everything dynamic happens here
 * through the DOM API (never innerHTML: usernames are user input).
 *
 * Reads top-down: settings → state → HTTP edge (`request`) → session tokens → live feed
 * (WebSocket) → frame handling → render functions → user actions → boot.
 */

// ---------------------------------------------------------------------------------------------
// Settings

const STORAGE_KEY = "scoreboard.session";
const BOARD_SIZE = 10;
const BACKOFF_BASE_MS = 500;
const BACKOFF_CAP_MS = 15_000;
/** Close 1012 means the server is only restarting: come back soon, but not all clients at once. */
const RESTART_DELAY_MS = { min: 250, max: 1_000 };
const CLOSE_POLICY = 1008;
const CLOSE_RESTART = 1012;
/** A token this close to expiry is refreshed before use rather than risking a 401 round trip. */
const TOKEN_MIN_VALIDITY_MS = 30_000;
const TRANSIENT_REFRESH_RETRY_MS = 10_000;
const PREFER_WAIT_S = 5;
/** While the socket is down (or blocked by a proxy), the REST board keeps the page useful. */
const OFFLINE_POLL_MS = 10_000;
const FIRST_OFFLINE_POLL_MS = 2_000;
/** Retrying an update is safe (the same action_id never counts twice), so transient errors are. */
const SUBMIT_ATTEMPTS = 3;
/** The server measures min_duration_ms from issued_at; this absorbs clock skew between replicas. */
const MIN_DURATION_MARGIN_MS = 150;
/** No answer (0) or a gateway/queue outage: the same update may be sent again. */
const TRANSIENT_STATUSES = new Set([0, 502, 503, 504]);
const FLASH_CLASSES = ["flash-new", "flash-up", "flash-down", "flash-score"];

const reducedMotion = window.matchMedia("(prefers-reduced-motion: reduce)");
const numberFormat = new Intl.NumberFormat();

// ---------------------------------------------------------------------------------------------
// State: the page's whole model; render functions read it, event handlers change it.

const state = {
  /** phase: "connecting" | "live" | "reconnecting" | "error". */
  connection: { phase: "connecting", retryAt: 0, message: "" },
  /** connectionId: which socket the shown board came from (see applyTop). */
  board: { version: -1, entries: [], connectionId: 0, rendered: false },
  /** { accessToken, refreshToken, expiresAt, lifetimeMs, userId, username } or null. */
  session: null,
  /** frames counts "me" frames, so a slower GET /me never overwrites a newer frame. */
  me: { version: -1, score: null, rank: null, connectionId: 0, frames: 0 },
  actionTypes: [],
  busyActions: new Set(),
};

const timers = { refresh: 0, countdown: 0, offlinePoll: 0 };

const ui = {
  status: byId("status"),
  statusText: byId("status-text"),
  reconnect: byId("reconnect"),
  announcer: byId("announcer"),
  board: byId("board"),
  boardNote: byId("board-note"),
  authPanel: byId("auth-panel"),
  authHeading: byId("auth-heading"),
  authNotice: byId("auth-notice"),
  loginForm: byId("login-form"),
  registerForm: byId("register-form"),
  playerPanel: byId("player-panel"),
  playerHeading: byId("player-heading"),
  meName: byId("me-name"),
  meScore: byId("me-score"),
  meRank: byId("me-rank"),
  logout: byId("logout"),
  actions: byId("actions"),
  actionsNote: byId("actions-note"),
  result: byId("result"),
};

function byId(id) {
  const element = document.getElementById(id);
  if (!element) throw new Error(`index.html lacks #${id}`);
  return element;
}

// ---------------------------------------------------------------------------------------------
// HTTP edge: every call returns a plain outcome object instead of throwing, so callers branch
// on status the way the contract's tables are written.

/**
 * Call the API (same origin). Resolves to { ok, status, data, detail, retryAfter }; status 0
 * means the network failed before any response.
 */
async function request(path, { method = "GET", body, token, headers = {} } = {}) {
  const init = {
    method,
    cache: "no-store",
    headers: { Accept: "application/json, application/problem+json", ...headers },
  };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  if (token) init.headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    return {
      ok: false,
      status: 0,
      data: null,
      retryAfter: null,
      detail: "The server could not be reached. Check your connection and try again.",
    };
  }
  const data = await readJson(response);
  return {
    ok: response.ok,
    status: response.status,
    data,
    retryAfter: parseRetryAfter(response.headers.get("Retry-After")),
    detail: response.ok ? "" : problemDetail(response.status, data),
  };
}

async function readJson(response) {
  if (response.status === 204) return null;
  if (!/json/i.test(response.headers.get("Content-Type") ?? "")) return null;
  try {
    return await response.json();
  } catch {
    return null;
  }
}

const FALLBACK_DETAILS = {
  401: "Please log in again.",
  403: "You are not allowed to do that.",
  404: "Not found.",
  409: "That was already done.",
  413: "The request was too large.",
  429: "Too many requests.",
  502: "The service is temporarily unavailable.",
  503: "The service is temporarily unavailable.",
  504: "The service took too long to answer.",
};

/** The human sentence of an RFC 9457 problem document (detail, else title, else a fallback). */
function problemDetail(status, problem) {
  for (const key of ["detail", "title"]) {
    const text = problem?.[key];
    if (typeof text === "string" && text.trim()) return text.trim();
  }
  return FALLBACK_DETAILS[status] ?? `The request failed (HTTP ${status}).`;
}

/** Retry-After as whole seconds (it may be delta-seconds or an HTTP date), or null. */
function parseRetryAfter(value) {
  if (!value) return null;
  if (/^\d+$/.test(value.trim())) return Number(value.trim());
  const date = Date.parse(value);
  return Number.isNaN(date) ? null : Math.max(0, Math.ceil((date - Date.now()) / 1000));
}

/** A failed outcome as one sentence for the user, with the wait a 429 asks for. */
function describeFailure(outcome) {
  let message = outcome.detail || FALLBACK_DETAILS[outcome.status] || "Something went wrong.";
  if (outcome.status === 429 && outcome.retryAfter) {
    message = `${withStop(message)} Try again in ${formatSeconds(outcome.retryAfter)}.`;
  }
  return message;
}

function withStop(text) {
  return /[.!?]$/.test(text) ? text : `${text}.`;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---------------------------------------------------------------------------------------------
// Session: tokens in memory and in sessionStorage (survives a reload, not the tab); refreshed
// before expiry and after a 401. A refresh token works once, so refreshes are single-flight.

/** Build a session from a login/refresh response body. */
function sessionFromTokens(tokens, fallbackName) {
  const claims = decodeJwtPayload(tokens.access_token) ?? {};
  const lifetimeS = Number(tokens.expires_in) > 0 ? Number(tokens.expires_in) : 300;
  return {
    accessToken: tokens.access_token,
    refreshToken: tokens.refresh_token,
    // Our own clock plus expires_in, so a skewed device clock cannot make us trust exp wrongly.
    expiresAt: Date.now() + lifetimeS * 1000,
    lifetimeMs: lifetimeS * 1000,
    userId: typeof claims.sub === "string" ? claims.sub : null,
    username: typeof claims.name === "string" ? claims.name : fallbackName,
  };
}

/** The JWT's claims, for display only: the gateway is the one that verifies signatures. */
function decodeJwtPayload(token) {
  try {
    const part = String(token).split(".")[1];
    const base64 = part.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(part.length / 4) * 4, "=");
    const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return null;
  }
}

function saveSession(session) {
  try {
    if (session) sessionStorage.setItem(STORAGE_KEY, JSON.stringify(session));
    else sessionStorage.removeItem(STORAGE_KEY);
  } catch {
    // Storage can be disabled (privacy modes); the session then lives in memory only.
  }
}

function loadSavedSession() {
  try {
    const saved = JSON.parse(sessionStorage.getItem(STORAGE_KEY) ?? "null");
    const valid =
      saved &&
      typeof saved.accessToken === "string" &&
      typeof saved.refreshToken === "string" &&
      Number.isFinite(saved.expiresAt) &&
      Number.isFinite(saved.lifetimeMs);
    return valid ? saved : null;
  } catch {
    return null;
  }
}

/** Install new tokens (login or refresh) and plan the next refresh. */
function setSession(session) {
  state.session = session;
  saveSession(session);
  scheduleRefresh();
}

function scheduleRefresh(delayMs) {
  clearTimeout(timers.refresh);
  const session = state.session;
  if (!session) return;
  const margin = Math.min(60_000, session.lifetimeMs / 4);
  const due = delayMs ?? Math.max(1_000, session.expiresAt - margin - Date.now());
  timers.refresh = setTimeout(() => void refreshSession(), due);
}

let refreshInFlight = null;

/** Refresh the tokens once, however many callers ask at the same time. Resolves to success. */
function refreshSession() {
  refreshInFlight ??= performRefresh().finally(() => {
    refreshInFlight = null;
  });
  return refreshInFlight;
}

async function performRefresh() {
  const session = state.session;
  if (!session) return false;
  const outcome = await request("/api/auth/refresh", {
    method: "POST",
    body: { refresh_token: session.refreshToken },
  });
  if (state.session !== session) return false; // logged out meanwhile: drop the new tokens
  if (outcome.ok && outcome.data?.access_token) {
    setSession(sessionFromTokens(outcome.data, session.username));
    return true;
  }
  if (outcome.status === 0 || outcome.status === 429 || outcome.status >= 500) {
    // Not a verdict on the session: keep it and try again shortly.
    scheduleRefresh(TRANSIENT_REFRESH_RETRY_MS);
    return false;
  }
  endSession("Your session has ended. Please log in again.");
  return false;
}

/** The access token to use now, refreshed first if it is about to expire; null if signed out. */
async function freshAccessToken() {
  if (state.session && state.session.expiresAt - Date.now() < TOKEN_MIN_VALIDITY_MS) {
    await refreshSession();
  }
  return state.session?.accessToken ?? null;
}

/** `request` with the Bearer token; on a 401 it refreshes once and retries once. */
async function authedRequest(path, options = {}) {
  const token = await freshAccessToken();
  if (!token) return { ok: false, status: 401, data: null, retryAfter: null, detail: "Please log in first." };
  const outcome = await request(path, { ...options, token });
  if (outcome.status !== 401 || !state.session) return outcome;
  // Another call may already have refreshed; otherwise the token was revoked or expired in flight.
  const renewed = state.session.accessToken !== token || (await refreshSession());
  if (!renewed || !state.session) return outcome;
  return request(path, { ...options, token: state.session.accessToken });
}

async function logIn(username, password) {
  const outcome = await request("/api/auth/login", { method: "POST", body: { username, password } });
  if (!outcome.ok) return outcome;
  startSession(sessionFromTokens(outcome.data, username));
  return outcome;
}

async function register(username, password) {
  const outcome = await request("/api/auth/register", { method: "POST", body: { username, password } });
  if (!outcome.ok) return { ...outcome, detail: registrationDetail(outcome) };
  const login = await logIn(username, password);
  if (!login.ok) {
    return { ...login, detail: `Your account was created, but logging in failed: ${describeFailure(login)}` };
  }
  return login;
}

const FIELD_RULES = {
  username: "Usernames are 3–32 characters: letters, digits, _ . or -.",
  password: "Passwords are 8–128 characters.",
};

/** A 400 lists the offending fields; say the rule instead of echoing a validator's regex. */
function registrationDetail(outcome) {
  const fields = Array.isArray(outcome.data?.errors) ? outcome.data.errors.map((e) => e?.field) : [];
  const rules = [...new Set(fields)].map((field) => FIELD_RULES[field]).filter(Boolean);
  return outcome.status === 400 && rules.length ? rules.join(" ") : outcome.detail;
}

function startSession(session) {
  setSession(session);
  state.me = { version: -1, score: null, rank: null, connectionId: 0, frames: 0 };
  ui.authNotice.textContent = "";
  clearResult();
  renderAccount();
  renderMe();
  if (state.board.rendered) renderBoard(); // mark our own row
  ui.playerHeading.focus();
  void loadMe();
  feed.restart(); // reconnect with the token so the server sends our "me" frames
}

/** Forget the session locally (after logout, or when the server no longer accepts it). */
function endSession(notice) {
  if (!state.session) return;
  clearTimeout(timers.refresh);
  const hadFocus = ui.playerPanel.contains(document.activeElement);
  state.session = null;
  saveSession(null);
  state.me = { version: -1, score: null, rank: null, connectionId: 0, frames: 0 };
  clearResult();
  ui.authNotice.textContent = notice;
  renderAccount();
  if (state.board.rendered) renderBoard();
  if (hadFocus) ui.authHeading.focus();
  feed.restart();
}

async function logOut() {
  if (!state.session) return;
  // Tell the server first so the refresh token dies with the login; leave locally whatever it says.
  await authedRequest("/api/auth/logout", { method: "POST" });
  endSession("You have logged out.");
}

/** On load: keep the tab's session if the server still honours it. */
async function restoreSession() {
  const saved = loadSavedSession();
  if (!saved) return;
  state.session = saved;
  if (saved.expiresAt - Date.now() < TOKEN_MIN_VALIDITY_MS) {
    await refreshSession();
    if (!state.session) return;
  }
  scheduleRefresh();
  renderAccount();
  void loadMe();
}

// ---------------------------------------------------------------------------------------------
// Live feed: one WebSocket with jittered exponential backoff. Every (re)connect begins with a
// fresh "top" snapshot, so nothing needs replaying after a gap.

class LiveFeed {
  #socket = null;
  #generation = 0;
  #attempt = 0;
  #tokenFailures = 0;
  #timer = 0;

  /** handlers: onFrame(frame, connectionId), onPhase(phase, {retryAt, message}). */
  constructor(handlers) {
    this.handlers = handlers;
  }

  start() {
    this.restart();
  }

  /** Drop the current socket and connect again at once (e.g. the token changed). */
  restart() {
    this.#drop();
    this.#attempt = 0;
    void this.#connect();
  }

  /** Skip the remaining backoff wait (user asked, tab came back, network came back). */
  reconnectNow() {
    if (this.#socket) return;
    this.#drop();
    void this.#connect();
  }

  #drop() {
    this.#generation += 1; // late events of the old socket are ignored from now on
    clearTimeout(this.#timer);
    if (this.#socket) {
      this.#socket.close(1000, "client reconnecting");
      this.#socket = null;
    }
  }

  async #connect() {
    const generation = ++this.#generation;
    clearTimeout(this.#timer);
    this.handlers.onPhase("connecting", {});
    const token = await freshAccessToken();
    if (generation !== this.#generation) return;
    let socket;
    try {
      // The token travels as a subprotocol: URLs end up in logs, subprotocol headers do not.
      socket = token ? new WebSocket(socketUrl(), ["bearer", token]) : new WebSocket(socketUrl());
    } catch {
      this.#scheduleReconnect(this.#backoffDelay(), "");
      return;
    }
    this.#socket = socket;
    let receivedFrame = false;
    socket.addEventListener("message", (event) => {
      if (generation !== this.#generation) return;
      const frame = parseFrame(event.data);
      if (!frame) return;
      if (!receivedFrame) {
        receivedFrame = true;
        this.#attempt = 0;
        this.#tokenFailures = 0;
        this.handlers.onPhase("live", {});
      }
      this.handlers.onFrame(frame, generation);
    });
    socket.addEventListener("close", (event) => {
      if (generation !== this.#generation) return;
      this.#socket = null;
      this.#onClose(event, receivedFrame, Boolean(token));
    });
  }

  #onClose(event, receivedFrame, usedToken) {
    if (event.code === CLOSE_POLICY) {
      // 1008: the server will not have us back as we are; retrying would only repeat it.
      this.handlers.onPhase("error", { message: event.reason || "refused by the server" });
      return;
    }
    if (event.code === CLOSE_RESTART) {
      this.#attempt = 0;
      const { min, max } = RESTART_DELAY_MS;
      this.#scheduleReconnect(min + Math.random() * (max - min));
      return;
    }
    // A refused upgrade (401/403) is invisible to WebSocket code: it looks like a close before
    // any frame. Twice in a row with a token, suspect the token and let a refresh decide.
    if (!receivedFrame && usedToken && ++this.#tokenFailures >= 2) {
      this.#tokenFailures = 0;
      void refreshSession();
    }
    this.#scheduleReconnect(this.#backoffDelay());
  }

  /** Full jitter: uniform in [0, min(cap, base × 2^attempt)]. */
  #backoffDelay() {
    const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** this.#attempt);
    this.#attempt += 1;
    return Math.random() * ceiling;
  }

  #scheduleReconnect(delayMs) {
    const generation = this.#generation;
    this.handlers.onPhase("reconnecting", { retryAt: Date.now() + delayMs });
    this.#timer = setTimeout(() => {
      if (generation === this.#generation) void this.#connect();
    }, delayMs);
  }
}

function socketUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws/scoreboard`;
}

function parseFrame(data) {
  if (typeof data !== "string") return null;
  try {
    const frame = JSON.parse(data);
    return frame && typeof frame === "object" && typeof frame.type === "string" ? frame : null;
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------------------------------------
// Frame handling

function handleFrame(frame, connectionId) {
  if (frame.type === "top") applyTop(frame, connectionId);
  else if (frame.type === "me") applyMe(frame, connectionId);
}

/** connectionId 0 marks a REST snapshot: it may only move the board forward, never reset it. */
function applyTop(frame, connectionId) {
  if (!Number.isFinite(frame.version) || !Array.isArray(frame.entries)) return;
  // Within one connection frames only move forward, so an older version is stale and dropped.
  // A new connection's first frame is the server's whole current state and replaces ours.
  const fresh = connectionId !== 0 && state.board.connectionId !== connectionId;
  if (!fresh && frame.version <= state.board.version) return;
  state.board.version = frame.version;
  state.board.connectionId = connectionId;
  state.board.entries = frame.entries.filter(isEntry).slice(0, BOARD_SIZE);
  renderBoard();
}

async function pollTopWhileOffline() {
  if (state.connection.phase === "live") return;
  const outcome = await request(`/api/scoreboard/top?limit=${BOARD_SIZE}`);
  if (outcome.ok && outcome.data && state.connection.phase !== "live") applyTop(outcome.data, 0);
}

function isEntry(entry) {
  return (
    entry && typeof entry.user_id === "string" && Number.isFinite(entry.score) && Number.isFinite(entry.rank)
  );
}

function applyMe(frame, connectionId) {
  if (!state.session || !Number.isFinite(frame.version)) return;
  const fresh = state.me.connectionId !== connectionId;
  if (!fresh && frame.version < state.me.version) return;
  state.me.version = frame.version;
  state.me.connectionId = connectionId;
  state.me.frames += 1;
  setMe(frame.score, frame.rank);
}

/** The player's score and rank as the board knows them now (GET /api/scoreboard/me). */
async function loadMe() {
  const session = state.session;
  const framesBefore = state.me.frames;
  const outcome = await authedRequest("/api/scoreboard/me");
  if (state.session?.userId !== session?.userId || state.me.frames !== framesBefore) return;
  if (outcome.ok) setMe(outcome.data?.score, outcome.data?.rank);
  else if (outcome.status === 404) setMe(0, null); // not on the board until the first points
}

function setMe(score, rank) {
  const next = {
    score: Number.isFinite(score) ? score : state.me.score,
    rank: Number.isFinite(rank) && rank > 0 ? rank : null,
  };
  const changed = next.score !== state.me.score || next.rank !== state.me.rank;
  const hadValue = state.me.score !== null;
  state.me.score = next.score;
  state.me.rank = next.rank;
  renderMe(changed && hadValue);
}

// ---------------------------------------------------------------------------------------------
// Rendering

const STATUS_TEXT = {
  connecting: "Connecting…",
  live: "Live",
  reconnecting: "Reconnecting",
  error: "Disconnected",
};

function setConnection(phase, { retryAt = 0, message = "" } = {}) {
  const previous = state.connection.phase;
  state.connection = { phase, retryAt, message };
  renderConnection();
  announceConnection(previous, phase, message);
  clearInterval(timers.countdown);
  if (phase === "reconnecting") timers.countdown = setInterval(renderConnection, 250);
}

function renderConnection() {
  const { phase, retryAt, message } = state.connection;
  let text = STATUS_TEXT[phase];
  if (phase === "reconnecting") {
    text += ` in ${formatSeconds(Math.max(1, Math.ceil((retryAt - Date.now()) / 1000)))}`;
  } else if (phase === "error" && message) {
    text += `: ${message}`;
  }
  if (ui.statusText.textContent !== text) ui.statusText.textContent = text;
  ui.status.dataset.state = phase;
  ui.reconnect.hidden = phase !== "reconnecting" && phase !== "error";
  ui.board.closest("table").classList.toggle("is-stale", phase !== "live" && state.board.rendered);
}

function announceConnection(previous, phase, message) {
  if (phase === "error") ui.announcer.textContent = `Live updates stopped: ${message}.`;
  else if (phase === "live" && previous !== "live") ui.announcer.textContent = "Live updates connected.";
  else if (previous === "live") ui.announcer.textContent = "Connection lost. Reconnecting…";
}

/**
 * Render the top 10, reusing each player's row so it can animate: a FLIP slide to its new
 * position, plus a flash for a new entry, a rank change or a score change.
 */
function renderBoard() {
  const { entries } = state.board;
  const existing = new Map(Array.from(ui.board.rows, (row) => [row.dataset.userId, row]));
  const animate = state.board.rendered;
  const slide = animate && !reducedMotion.matches;
  const before = slide ? new Map(Array.from(existing, ([id, row]) => [id, topOf(row)])) : null;

  const rows = entries.map((entry) => {
    const row = existing.get(entry.user_id) ?? createRow(entry.user_id);
    const change = updateRow(row, entry, existing.has(entry.user_id));
    if (animate && change) flash(row, `flash-${change}`);
    return row;
  });
  ui.board.replaceChildren(...rows);
  if (before) slideRows(rows, before);

  state.board.rendered = true;
  ui.boardNote.hidden = entries.length > 0;
  ui.boardNote.textContent = "No scores yet. Complete an action to be the first!";
  renderConnection();
}

function topOf(row) {
  return row.getBoundingClientRect().top;
}

function createRow(userId) {
  const row = document.createElement("tr");
  row.dataset.userId = userId;
  const rank = document.createElement("td");
  rank.className = "rank";
  const badge = document.createElement("span");
  badge.className = "rank__badge";
  rank.append(badge);
  row.append(rank, cell("th", "name"), cell("td", "score"));
  row.cells[1].scope = "row";
  row.addEventListener("animationend", (event) => {
    if (event.target === row) row.classList.remove(...FLASH_CLASSES);
  });
  return row;
}

function cell(tag, className) {
  const element = document.createElement(tag);
  element.className = className;
  return element;
}

/** Write an entry into its row; returns what changed: "new" | "up" | "down" | "score" | null. */
function updateRow(row, entry, existed) {
  const previousRank = Number(row.dataset.rank);
  const previousScore = Number(row.dataset.score);
  const name = String(entry.username ?? "");
  row.dataset.rank = String(entry.rank);
  row.dataset.score = String(entry.score);
  row.querySelector(".rank__badge").textContent = String(entry.rank);
  row.cells[1].textContent = name;
  row.cells[1].title = name;
  row.cells[2].textContent = numberFormat.format(entry.score);
  const isMe = Boolean(state.session?.userId) && entry.user_id === state.session.userId;
  row.classList.toggle("is-me", isMe);
  if (isMe) row.setAttribute("aria-current", "true");
  else row.removeAttribute("aria-current");

  if (!existed) return "new";
  if (entry.rank < previousRank) return "up";
  if (entry.rank > previousRank) return "down";
  if (entry.score !== previousScore) return "score";
  return null;
}

function flash(element, className) {
  element.classList.remove(...FLASH_CLASSES);
  void element.offsetWidth; // reflow, so re-adding the class restarts the animation
  element.classList.add(className);
}

/** FLIP: start each moved row at its old position, then let the CSS transition bring it home. */
function slideRows(rows, before) {
  const moved = [];
  for (const row of rows) {
    const oldTop = before.get(row.dataset.userId);
    if (oldTop === undefined) continue;
    const delta = oldTop - topOf(row);
    if (Math.abs(delta) < 1) continue;
    row.classList.add("is-moving");
    row.style.transform = `translateY(${delta}px)`;
    moved.push(row);
  }
  if (!moved.length) return;
  void ui.board.offsetHeight; // commit the inverted positions before transitioning away from them
  for (const row of moved) {
    row.classList.remove("is-moving");
    row.style.transform = "";
  }
}

function renderAccount() {
  const session = state.session;
  ui.authPanel.hidden = Boolean(session);
  ui.playerPanel.hidden = !session;
  ui.meName.textContent = session?.username ?? "";
  if (!session) renderActions();
}

function renderMe(changed = false) {
  const { score, rank } = state.me;
  ui.meScore.textContent = score === null ? "0" : numberFormat.format(score);
  ui.meRank.textContent = rank === null ? "–" : numberFormat.format(rank);
  ui.meRank.title = rank === null ? "Not on the board yet" : "";
  if (changed) {
    flash(ui.meScore, "flash-score");
    flash(ui.meRank, "flash-score");
  }
}

function renderActions() {
  const items = state.actionTypes.map(actionItem);
  ui.actions.replaceChildren(...items);
}

function actionItem(type) {
  const item = document.createElement("div");
  item.className = "action";
  const button = document.createElement("button");
  button.type = "button";
  button.className = "action__button";
  button.dataset.actionType = type.action_type;
  const name = document.createElement("span");
  name.className = "action__name";
  name.textContent = actionLabel(type.action_type);
  const points = document.createElement("span");
  points.className = "action__points";
  points.textContent = `+${numberFormat.format(type.points)}`;
  const duration = document.createElement("span");
  duration.className = "action__duration";
  duration.textContent = formatDuration(type.min_duration_ms);
  button.append(name, points, duration);
  button.setAttribute(
    "aria-label",
    `${actionLabel(type.action_type)}: ${type.points} points, takes ${formatDuration(type.min_duration_ms)}`,
  );
  const progress = document.createElement("progress");
  progress.className = "action__progress";
  progress.max = 1;
  progress.value = 0;
  progress.hidden = true;
  progress.setAttribute("aria-label", `${actionLabel(type.action_type)} progress`);
  item.append(button, progress);
  return item;
}

function showResult(kind, message) {
  ui.result.dataset.kind = kind;
  ui.result.textContent = message;
}

function clearResult() {
  delete ui.result.dataset.kind;
  ui.result.textContent = "";
}

function actionLabel(actionType) {
  const words = String(actionType).replace(/[_-]+/g, " ").trim();
  return words.charAt(0).toUpperCase() + words.slice(1);
}

function formatDuration(ms) {
  if (!ms) return "instant";
  if (ms < 1_000) return `${ms} ms`;
  return `${new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 }).format(ms / 1000)} s`;
}

function formatSeconds(seconds) {
  return `${seconds} s`;
}

// ---------------------------------------------------------------------------------------------
// User actions

/** Load the action catalog, retrying with backoff until the gateway answers. */
async function loadActionTypes(attempt = 0) {
  const outcome = await request("/api/actions/types");
  if (outcome.ok && Array.isArray(outcome.data)) {
    state.actionTypes = outcome.data.filter(isActionType);
    ui.actionsNote.hidden = true;
    renderActions();
    return;
  }
  ui.actionsNote.hidden = false;
  ui.actionsNote.textContent = "Actions are unavailable right now; retrying…";
  await sleep(Math.min(30_000, 2_000 * 2 ** attempt));
  return loadActionTypes(attempt + 1);
}

function isActionType(t) {
  return (
    t && typeof t.action_type === "string" && Number.isFinite(t.points) && Number.isFinite(t.min_duration_ms)
  );
}

/**
 * The real flow: ticket (POST /api/actions) → wait min_duration_ms with a progress bar →
 * completion (POST /api/scoreboard/update, Prefer: wait) → result.
 */
async function runAction(button) {
  const type = state.actionTypes.find((t) => t.action_type === button.dataset.actionType);
  const session = state.session;
  if (!type || !session || state.busyActions.has(type.action_type)) return;
  const label = actionLabel(type.action_type);
  const progress = button.parentElement.querySelector("progress");
  const hadFocus = document.activeElement === button;
  state.busyActions.add(type.action_type);
  setActionBusy(button, progress, true);
  showResult("pending", `${label}: started…`);
  try {
    const body = { action_type: type.action_type };
    const ticket = await authedRequest("/api/actions", { method: "POST", body });
    if (state.session?.userId !== session.userId) return; // logged out meanwhile
    if (!ticket.ok) {
      showResult("error", `${label}: ${describeFailure(ticket)}`);
      return;
    }
    await runProgress(progress, type.min_duration_ms + MIN_DURATION_MARGIN_MS);
    progress.removeAttribute("value"); // indeterminate while the server applies it
    const { outcome, retried } = await submitCompletion(ticket.data);
    if (state.session?.userId !== session.userId) return;
    reportCompletion(label, ticket.data, outcome, retried);
  } finally {
    state.busyActions.delete(type.action_type);
    setActionBusy(button, progress, false);
    // A disabled button drops keyboard focus; give it back if nothing else took it.
    const focusLost = !document.activeElement || document.activeElement === document.body;
    if (hadFocus && focusLost && button.isConnected) button.focus();
  }
}

function setActionBusy(button, progress, busy) {
  button.disabled = busy;
  button.setAttribute("aria-busy", String(busy));
  progress.hidden = !busy;
  if (busy) progress.value = 0;
}

/** Advance the bar for durationMs; resolves on a timer so a background tab still completes. */
function runProgress(progress, durationMs) {
  if (durationMs <= 0) {
    progress.value = 1;
    return Promise.resolve();
  }
  const start = performance.now();
  let done = false;
  const step = (now) => {
    if (done) return;
    progress.value = Math.min(1, (now - start) / durationMs);
    requestAnimationFrame(step);
  };
  requestAnimationFrame(step);
  return sleep(durationMs).then(() => {
    done = true;
    progress.value = 1;
  });
}

async function submitCompletion(ticket) {
  const { action_id, action_type, action_hash } = ticket;
  const body = { action_id, action_type, action_hash }; // nothing else: points come from the server
  for (let attempt = 1; ; attempt += 1) {
    const outcome = await authedRequest("/api/scoreboard/update", {
      method: "POST",
      body,
      headers: { Prefer: `wait=${PREFER_WAIT_S}` },
    });
    const transient = TRANSIENT_STATUSES.has(outcome.status);
    if (!transient || attempt >= SUBMIT_ATTEMPTS) return { outcome, retried: attempt > 1 };
    await sleep(Math.min(5, outcome.retryAfter ?? 1) * 1000);
  }
}

function reportCompletion(label, ticket, outcome, retried) {
  const points = numberFormat.format(ticket.points);
  if (outcome.status === 200 && outcome.data?.status === "applied") {
    const { score, rank } = outcome.data;
    // A "me" frame from a later action may already show more; scores only grow.
    if (!(state.me.score > score)) setMe(score, rank);
    const where = Number.isFinite(rank) ? `, rank ${numberFormat.format(rank)}` : "";
    const total = numberFormat.format(score);
    showResult("success", `${label} done: +${points} points. Your score is ${total}${where}.`);
  } else if (outcome.status === 202 || (outcome.ok && outcome.data?.status === "accepted")) {
    showResult("accepted", `${label} accepted: +${points} points will reach the board in a moment.`);
  } else if (outcome.status === 409 && retried) {
    // An earlier attempt did get through before its answer was lost.
    showResult("accepted", `${label} accepted: +${points} points will reach the board in a moment.`);
  } else {
    showResult("error", `${label}: ${describeFailure(outcome)}`);
  }
}

/** Submit a login or sign-up form, showing the server's problem detail on failure. */
async function submitAuthForm(form, operation) {
  const error = form.querySelector(".form__error");
  const submit = form.querySelector("button[type=submit]");
  const data = new FormData(form);
  const username = String(data.get("username") ?? "").trim();
  const password = String(data.get("password") ?? "");
  error.textContent = "";
  submit.disabled = true;
  form.setAttribute("aria-busy", "true");
  let lockMs = 0;
  try {
    const outcome = await operation(username, password);
    if (outcome.ok) {
      ui.loginForm.reset();
      ui.registerForm.reset();
    } else {
      error.textContent = describeFailure(outcome);
      if (outcome.status === 429 && outcome.retryAfter) lockMs = Math.min(outcome.retryAfter, 300) * 1000;
    }
  } finally {
    form.removeAttribute("aria-busy");
    // After a 429 the button stays off for the wait the server asked for.
    if (lockMs) setTimeout(() => (submit.disabled = false), lockMs);
    else submit.disabled = false;
  }
}

// ---------------------------------------------------------------------------------------------
// Boot

const feed = new LiveFeed({ onFrame: handleFrame, onPhase: setConnection });

function wireEvents() {
  ui.loginForm.addEventListener("submit", (event) => {
    event.preventDefault();
    void submitAuthForm(ui.loginForm, logIn);
  });
  ui.registerForm.addEventListener("submit", (event) => {
    event.preventDefault();
    void submitAuthForm(ui.registerForm, register);
  });
  ui.logout.addEventListener("click", async () => {
    ui.logout.disabled = true;
    try {
      await logOut();
    } finally {
      ui.logout.disabled = false;
    }
  });
  ui.actions.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action-type]");
    if (button && !button.disabled) void runAction(button);
  });
  ui.reconnect.addEventListener("click", () => feed.reconnectNow());
  window.addEventListener("online", () => feed.reconnectNow());
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState !== "visible") return;
    // Background tabs throttle timers: catch up on a due refresh and a pending reconnect.
    if (state.session) void freshAccessToken();
    if (state.connection.phase === "reconnecting") feed.reconnectNow();
  });
}

async function boot() {
  wireEvents();
  renderAccount();
  renderMe();
  renderConnection();
  void loadActionTypes();
  timers.offlinePoll = setTimeout(function poll() {
    void pollTopWhileOffline();
    timers.offlinePoll = setTimeout(poll, OFFLINE_POLL_MS);
  }, FIRST_OFFLINE_POLL_MS);
  await restoreSession();
  feed.start();
}

void boot();
