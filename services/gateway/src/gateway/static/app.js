/**
 * Live scoreboard page: one ES module, no framework, no build step.
 *
 * The gateway serves it under a strict Content-Security-Policy, so everything dynamic happens here
 * through the DOM API (never innerHTML: usernames are user input).
 *
 * Reads top-down: settings → state → HTTP edge (`request`) → session tokens → live feed
 * (WebSocket) → the viewed board (catalog, subscription, past periods) → frame handling →
 * render functions → user actions → boot.
 *
 * The board card shows one (board, window) of GET /api/boards: live through a WebSocket
 * subscription (one per connection; switching drops the old one), or one closed period read
 * page by page from `?period=` (read-only). The player panel shows the player's rank on that
 * window with the players around them (the subscription's `around` frames).
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
/** The default board's all-time window: what /api/scoreboard/* and the untagged frames show. */
const DEFAULT_BOARD = "global";
const DEFAULT_WINDOW = "all-time";
/** Players either side of the signed-in player in "your rank" (the server allows up to 50). */
const AROUND_N = 3;
/**
 * The broadcaster closes a socket that sends more than 10 messages at once or 2 a second
 * (1008, for good). Switching sends two (unsubscribe, subscribe); this budget keeps the page
 * under the server's however fast someone clicks, and a switch it delays is coalesced.
 */
const SEND_BUDGET = { burst: 6, perSecond: 1.5 };
const SUBSCRIBE_RETRY_MS = 3_000;
/** After a reset time passes without a `period` frame (socket down), ask GET /api/boards. */
const RESET_GRACE_MS = 3_000;
const CATALOG_RETRY_MS = 10_000;
/** How many closed periods the period picker offers, newest first. */
const PAST_PERIODS = { daily: 14, weekly: 12, monthly: 12 };
const WINDOW_LABELS = {
  "all-time": "All-time",
  daily: "Daily",
  weekly: "Weekly",
  monthly: "Monthly",
  season: "Season",
};
const DAY_MS = 86_400_000;

const reducedMotion = window.matchMedia("(prefers-reduced-motion: reduce)");
const numberFormat = new Intl.NumberFormat();
const percentFormat = new Intl.NumberFormat(undefined, { maximumFractionDigits: 2 });

// ---------------------------------------------------------------------------------------------
// State: the page's whole model; render functions read it, event handlers change it.

const state = {
  /** phase: "connecting" | "live" | "reconnecting" | "error". */
  connection: { phase: "connecting", retryAt: 0, message: "" },
  /**
   * The live top of the viewed window. connectionId: which socket it came from; key and
   * period: which (board, window) and period; tagged: from a subscription, not the untagged
   * default frames (see applyTop).
   */
  board: { version: -1, entries: [], connectionId: 0, rendered: false, key: "", period: null, tagged: false },
  /** GET /api/boards: board id → { board, title, windows: [{ window, current, next_reset }], seasons }. */
  boards: new Map(),
  /** Server time minus this device's, from GET /api/boards' as_of: the countdown uses it. */
  clockOffsetMs: 0,
  /**
   * What the board card shows: a (board, window), live, or with archive set one closed period:
   * { period, cursors (one per page, null first), page, nextCursor, entries, players, loaded,
   *   error, around }.
   */
  view: { board: DEFAULT_BOARD, window: DEFAULT_WINDOW, archive: null },
  /** The viewed window's live period: its id, next reset (ms since epoch; null: never). */
  live: { period: null, nextReset: null, refreshAfter: 0, unavailable: "" },
  /** The subscription the server holds on the current socket (sent: null when none). */
  sub: { connectionId: 0, sent: null },
  /** The player's live around frame for the viewed window: { period, rank, players, entries }. */
  around: null,
  /** { accessToken, refreshToken, expiresAt, lifetimeMs, userId, username } or null. */
  session: null,
  /** frames counts "me" frames, so a slower GET /me never overwrites a newer frame. */
  me: { version: -1, score: null, rank: null, connectionId: 0, frames: 0 },
  actionTypes: [],
  busyActions: new Set(),
};

const timers = { refresh: 0, countdown: 0, offlinePoll: 0, subscribe: 0, resetClock: 0, seasonStart: 0 };

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
  boardControls: byId("board-controls"),
  boardSelect: byId("board-select"),
  windowSwitch: byId("window-switch"),
  periodSelect: byId("period-select"),
  periodLabel: byId("period-label"),
  reset: byId("reset"),
  resetLabel: byId("reset-label"),
  countdown: byId("countdown"),
  archiveBanner: byId("archive-banner"),
  archiveText: byId("archive-text"),
  backLive: byId("back-live"),
  boardHeading: byId("board-heading"),
  boardCaption: byId("board-caption"),
  pager: byId("pager"),
  pagePrev: byId("page-prev"),
  pageNext: byId("page-next"),
  pageInfo: byId("page-info"),
  aroundScope: byId("around-scope"),
  aroundSummary: byId("around-summary"),
  aroundList: byId("around-list"),
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
  state.around = null;
  renderAround();
  ui.playerHeading.focus();
  void loadMe();
  void loadArchiveAround();
  feed.restart(); // reconnect with the token so the server sends our "me" and "around" frames
}

/** Forget the session locally (after logout, or when the server no longer accepts it). */
function endSession(notice) {
  if (!state.session) return;
  clearTimeout(timers.refresh);
  const hadFocus = ui.playerPanel.contains(document.activeElement);
  state.session = null;
  saveSession(null);
  state.me = { version: -1, score: null, rank: null, connectionId: 0, frames: 0 };
  state.around = null;
  if (state.view.archive) state.view.archive.around = null;
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
// fresh "top" snapshot, so nothing needs replaying after a gap; subscriptions are sent again
// on each connection (onReady).

class LiveFeed {
  #socket = null;
  #generation = 0;
  #attempt = 0;
  #tokenFailures = 0;
  #timer = 0;
  #ready = 0;

  /**
   * handlers: onFrame(frame, connectionId), onPhase(phase, {retryAt, message}),
   * onReady(connectionId): the socket delivered its first frame and takes requests.
   */
  constructor(handlers) {
    this.handlers = handlers;
  }

  /** The id of the connection that takes requests now; 0 while there is none. */
  get readyId() {
    return this.#socket && this.#ready === this.#generation ? this.#ready : 0;
  }

  /** Send a JSON request on the current connection; false when there is none. */
  send(message) {
    if (!this.readyId || this.#socket.readyState !== WebSocket.OPEN) return false;
    this.#socket.send(JSON.stringify(message));
    return true;
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
        this.#ready = generation;
        this.handlers.onPhase("live", {});
        this.handlers.onReady(generation);
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
// The viewed board: the catalog (GET /api/boards), the one subscription that follows the
// selection, and closed periods.

const viewKey = (board, windowId) => `${board}/${windowId}`;
const currentKey = () => viewKey(state.view.board, state.view.window);
const DEFAULT_KEY = viewKey(DEFAULT_BOARD, DEFAULT_WINDOW);

/** The catalog's entry for a window of a board, or null. */
function windowInfo(board, windowId) {
  return state.boards.get(board)?.windows.find((w) => w.window === windowId) ?? null;
}

function boardTitle(board) {
  return state.boards.get(board)?.title ?? (board === DEFAULT_BOARD ? "Global" : board);
}

function windowLabel(windowId) {
  return WINDOW_LABELS[windowId] ?? windowId;
}

let boardsLoading = null;

/** Load the boards, retrying with backoff until the gateway answers (one load at a time). */
function loadBoards() {
  boardsLoading ??= fetchBoards().finally(() => (boardsLoading = null));
  return boardsLoading;
}

async function fetchBoards(attempt = 0) {
  const outcome = await request("/api/boards");
  if (outcome.ok && Array.isArray(outcome.data?.boards)) {
    const asOf = Date.parse(outcome.data.as_of);
    if (Number.isFinite(asOf)) state.clockOffsetMs = asOf - Date.now();
    state.boards = new Map(outcome.data.boards.filter(isBoard).map((b) => [b.board, b]));
    const info = state.boards.get(state.view.board);
    if (!info) selectView(DEFAULT_BOARD, DEFAULT_WINDOW);
    else if (!windowInfo(state.view.board, state.view.window)) selectView(state.view.board, info.windows[0].window);
    else setLivePeriod(windowInfo(state.view.board, state.view.window));
    // A link to the period that is still running opens it live.
    if (state.view.archive && state.view.archive.period === state.live.period) backToLive();
    renderControls();
    return;
  }
  await sleep(Math.min(30_000, 2_000 * 2 ** attempt));
  return fetchBoards(attempt + 1);
}

function isBoard(b) {
  return b && typeof b.board === "string" && Array.isArray(b.windows) && b.windows.length > 0;
}

/** Take the live period and next reset from a catalog window entry or a `period` frame. */
function setLivePeriod(entry) {
  const nextReset = Date.parse(entry?.next_reset ?? "");
  state.live.period = entry?.current?.period ?? null;
  state.live.nextReset = Number.isFinite(nextReset) ? nextReset : null;
  scheduleSeasonStart();
}

/** The view named by the address's fragment (#board=…&window=…&period=…), or null. */
function viewFromAddress() {
  const params = new URLSearchParams(location.hash.slice(1));
  const board = params.get("board");
  if (!board) return null;
  return { board, window: params.get("window") ?? DEFAULT_WINDOW, period: params.get("period") };
}

/** Keep the view in the address, so a link or a reload opens the same board, window, period. */
function rememberView() {
  const { board, window: windowId, archive } = state.view;
  const params = new URLSearchParams({ board, window: windowId });
  if (archive) params.set("period", archive.period);
  const home = board === DEFAULT_BOARD && windowId === DEFAULT_WINDOW && !archive;
  const hash = home ? "" : `#${params}`;
  if (location.hash !== hash) history.replaceState(null, "", hash || location.pathname + location.search);
}

/** Show (board, window) live; a window the board lacks falls back to its first one. */
function selectView(board, windowId) {
  const info = state.boards.get(board);
  const windows = info ? info.windows.map((w) => w.window) : [DEFAULT_WINDOW];
  const chosen = windows.includes(windowId) ? windowId : windows[0];
  if (board === state.view.board && chosen === state.view.window && !state.view.archive) return;
  const switched = board !== state.view.board || chosen !== state.view.window;
  state.view = { board, window: chosen, archive: null };
  if (switched) {
    state.board = { ...state.board, version: -1, entries: [], key: "", period: null, tagged: false };
    state.around = null;
    state.live.unavailable = "";
    setLivePeriod(windowInfo(board, chosen));
  }
  rememberView();
  renderControls();
  renderBoard();
  renderAround();
  if (switched) {
    syncSubscription();
    if (state.connection.phase !== "live") void pollTopWhileOffline();
  }
}

/** The subscription this page wants now: the viewed window, with `around` when signed in. */
function wantedSubscription() {
  return { board: state.view.board, window: state.view.window, around: state.session ? AROUND_N : 0 };
}

/** A token bucket that keeps requests under the server's message budget. */
const sendBudget = {
  tokens: SEND_BUDGET.burst,
  at: performance.now(),
  /** Take n tokens; returns 0, or how many ms to wait until n are there (nothing taken). */
  take(n) {
    const now = performance.now();
    this.tokens = Math.min(SEND_BUDGET.burst, this.tokens + ((now - this.at) / 1000) * SEND_BUDGET.perSecond);
    this.at = now;
    if (this.tokens >= n) {
      this.tokens -= n;
      return 0;
    }
    return Math.ceil(((n - this.tokens) / SEND_BUDGET.perSecond) * 1000);
  },
};

/**
 * Make the server's subscription on this socket the wanted one: unsubscribe the old window (its
 * frames stop), subscribe the new one (a fresh snapshot). Called on each connection, on each
 * switch, and after an error asked us to retry.
 */
function syncSubscription() {
  clearTimeout(timers.subscribe);
  const connectionId = feed.readyId;
  if (!connectionId) return; // onReady calls again
  if (state.sub.connectionId !== connectionId) state.sub = { connectionId, sent: null };
  const want = wantedSubscription();
  const have = state.sub.sent;
  if (have && have.board === want.board && have.window === want.window && have.around === want.around) return;
  const messages = [];
  if (have && (have.board !== want.board || have.window !== want.window)) {
    messages.push({ type: "unsubscribe", board: have.board, window: have.window });
  }
  messages.push({ type: "subscribe", ...want });
  const wait = sendBudget.take(messages.length);
  if (wait > 0) {
    timers.subscribe = setTimeout(syncSubscription, wait);
    return;
  }
  for (const message of messages) if (!feed.send(message)) return;
  state.sub.sent = want;
}

/** When the viewed board's next season starts (ms since epoch), or null: none is planned. */
function nextSeasonStart() {
  const now = Date.now() + state.clockOffsetMs;
  const starts = (state.boards.get(state.view.board)?.seasons ?? [])
    .map((season) => Date.parse(season.starts_at))
    .filter((t) => Number.isFinite(t) && t > now);
  return starts.length ? Math.min(...starts) : null;
}

/** A season window between seasons: subscribe again when the next season starts. */
function scheduleSeasonStart() {
  clearTimeout(timers.seasonStart);
  if (state.view.window !== "season" || state.live.period !== null) return;
  const starts = nextSeasonStart();
  if (starts === null) return;
  const delay = starts - (Date.now() + state.clockOffsetMs) + 500;
  if (delay > 2 ** 31 - 1) return;
  timers.seasonStart = setTimeout(async () => {
    await loadBoards();
    state.live.unavailable = "";
    if (state.sub.sent?.window === "season") state.sub.sent = null;
    syncSubscription();
  }, delay);
}

/**
 * The closed periods the picker offers for the viewed window, newest first: the days, ISO
 * weeks or months before the live one (computed from its id, which is a local date of the
 * board's zone), or the seasons that have ended.
 */
function pastPeriods(board, windowId, livePeriod) {
  if (windowId === "season") {
    const now = Date.now() + state.clockOffsetMs;
    return (state.boards.get(board)?.seasons ?? [])
      .filter((season) => Date.parse(season.ends_at) <= now)
      .sort((a, b) => Date.parse(b.ends_at) - Date.parse(a.ends_at))
      .map((season) => season.id);
  }
  const count = PAST_PERIODS[windowId] ?? 0;
  const ids = [];
  let id = livePeriod;
  for (let i = 0; i < count && id; i += 1) {
    id = previousPeriod(windowId, id);
    if (id) ids.push(id);
  }
  return ids;
}

/** The period before `id` of a daily ("2026-12-02"), weekly ("2026-W49") or monthly window. */
function previousPeriod(windowId, id) {
  let match;
  if (windowId === "daily" && (match = /^(\d{4})-(\d{2})-(\d{2})$/.exec(id))) {
    const day = Date.UTC(Number(match[1]), Number(match[2]) - 1, Number(match[3])) - DAY_MS;
    return new Date(day).toISOString().slice(0, 10);
  }
  if (windowId === "weekly" && (match = /^(\d{4})-W(\d{2})$/.exec(id))) {
    return isoWeekId(isoWeekMonday(Number(match[1]), Number(match[2])) - 7 * DAY_MS);
  }
  if (windowId === "monthly" && (match = /^(\d{4})-(\d{2})$/.exec(id))) {
    const year = Number(match[1]);
    const month = Number(match[2]) - 1; // the previous month, 0-based
    return month === 0 ? `${year - 1}-12` : `${year}-${String(month).padStart(2, "0")}`;
  }
  return null;
}

/** The Monday (UTC midnight, ms) of ISO week `week` of `year`: week 1 holds January 4th. */
function isoWeekMonday(year, week) {
  const jan4 = Date.UTC(year, 0, 4);
  const weekday = (new Date(jan4).getUTCDay() + 6) % 7; // Monday 0
  return jan4 - weekday * DAY_MS + (week - 1) * 7 * DAY_MS;
}

/** The ISO week id ("2026-W49") of a UTC midnight: the week's Thursday decides the year. */
function isoWeekId(dayMs) {
  const weekday = (new Date(dayMs).getUTCDay() + 6) % 7;
  const thursday = new Date(dayMs + (3 - weekday) * DAY_MS);
  const year = thursday.getUTCFullYear();
  const week = 1 + Math.round((thursday.getTime() - isoWeekMonday(year, 1) - 3 * DAY_MS) / (7 * DAY_MS));
  return `${year}-W${String(week).padStart(2, "0")}`;
}

/** Show one closed period's final standings (read-only pages of GET ...top?period=). */
async function openArchive(period) {
  state.view.archive = {
    period,
    cursors: [null],
    page: 0,
    nextCursor: null,
    entries: [],
    players: 0,
    loaded: false,
    error: "",
    around: null,
  };
  rememberView();
  renderControls();
  renderBoard();
  renderAround();
  await Promise.all([loadArchivePage(0), loadArchiveAround()]);
}

function boardPath(view) {
  return `/api/boards/${encodeURIComponent(view.board)}/${encodeURIComponent(view.window)}`;
}

async function loadArchivePage(page) {
  const view = state.view;
  const archive = view.archive;
  if (!archive) return;
  const query = new URLSearchParams({ period: archive.period, limit: String(BOARD_SIZE) });
  const cursor = archive.cursors[page];
  if (cursor) query.set("cursor", cursor);
  const outcome = await request(`${boardPath(view)}/top?${query}`);
  if (state.view.archive !== archive) return; // the player moved on meanwhile
  if (outcome.ok && Array.isArray(outcome.data?.entries)) {
    archive.page = page;
    archive.entries = outcome.data.entries.filter(isEntry);
    archive.players = Number(outcome.data.players) || 0;
    archive.nextCursor = outcome.data.next_cursor ?? null;
    if (archive.nextCursor) archive.cursors[page + 1] = archive.nextCursor;
    archive.error = "";
  } else {
    archive.error = describeFailure(outcome);
  }
  archive.loaded = true;
  renderBoard();
  renderPager();
}

/** The signed-in player's final rank in the viewed closed period. */
async function loadArchiveAround() {
  const archive = state.view.archive;
  if (!archive || !state.session) return;
  const query = new URLSearchParams({ period: archive.period, n: String(AROUND_N) });
  const outcome = await authedRequest(`${boardPath(state.view)}/around/me?${query}`);
  if (state.view.archive !== archive || !outcome.ok) return;
  archive.around = aroundOf(outcome.data, archive.period);
  renderAround();
}

function backToLive() {
  if (!state.view.archive) return;
  state.view.archive = null;
  rememberView();
  renderControls();
  renderBoard();
  renderAround();
}

// ---------------------------------------------------------------------------------------------
// Frame handling

function handleFrame(frame, connectionId) {
  if (frame.type === "top") applyTop(frame, connectionId);
  else if (frame.type === "me") applyMe(frame, connectionId);
  else if (frame.type === "around") applyAround(frame);
  else if (frame.type === "period") applyPeriod(frame);
  else if (frame.type === "error") applySubscriptionError(frame);
}

/**
 * A top frame of the viewed window (others are late frames of a dropped subscription). Untagged
 * frames are the default board's all-time top, sent until the first subscribe is answered.
 * connectionId 0 marks a REST snapshot: it may only move the board forward, never reset it.
 */
function applyTop(frame, connectionId) {
  if (!Number.isFinite(frame.version) || !Array.isArray(frame.entries)) return;
  const tagged = typeof frame.board === "string";
  const key = tagged ? viewKey(frame.board, frame.window) : DEFAULT_KEY;
  if (key !== currentKey()) return;
  const board = state.board;
  if (!tagged && board.tagged && board.connectionId === connectionId) return; // the subscription has it
  const period = tagged ? String(frame.period) : null;
  // Within one subscription frames only move forward, so an older version is stale and dropped.
  // A new connection's, window's, period's or subscription's first frame replaces ours.
  const fresh =
    (connectionId !== 0 && board.connectionId !== connectionId) ||
    board.key !== key ||
    board.period !== period ||
    (tagged && !board.tagged);
  if (!fresh && frame.version <= board.version) return;
  state.board = {
    ...board,
    version: frame.version,
    connectionId,
    key,
    period,
    tagged,
    entries: frame.entries.filter(isEntry).slice(0, BOARD_SIZE),
  };
  if (tagged) state.live.unavailable = "";
  if (tagged && period !== state.live.period) {
    state.live.period = period;
    renderControls();
  }
  if (!state.view.archive) renderBoard();
}

/** While the socket is down, the REST board keeps the page useful (the viewed window's). */
async function pollTopWhileOffline() {
  if (state.connection.phase === "live") return;
  const view = state.view;
  const key = currentKey();
  if (key === DEFAULT_KEY) {
    const outcome = await request(`/api/scoreboard/top?limit=${BOARD_SIZE}`);
    if (outcome.ok && outcome.data && state.connection.phase !== "live") applyTop(outcome.data, 0);
    return;
  }
  const outcome = await request(`${boardPath(view)}/top?limit=${BOARD_SIZE}`);
  if (!outcome.ok || !Array.isArray(outcome.data?.entries)) return;
  if (state.connection.phase === "live" || currentKey() !== key) return;
  // These pages carry no version; the next connection's snapshot replaces them.
  state.board = {
    ...state.board,
    version: -1,
    connectionId: 0,
    key,
    period: String(outcome.data.period),
    tagged: false,
    entries: outcome.data.entries.filter(isEntry).slice(0, BOARD_SIZE),
  };
  if (!state.view.archive) renderBoard();
}

/** The signed-in player's rank and neighbours on the viewed window, live. */
function applyAround(frame) {
  if (!state.session || viewKey(frame.board, frame.window) !== currentKey()) return;
  state.around = aroundOf(frame, frame.period);
  if (!state.view.archive) renderAround();
}

/** An around frame or GET .../around/me answer as the panel shows it. */
function aroundOf(data, period) {
  const rank = Number.isFinite(data?.rank) && data.rank > 0 ? data.rank : null;
  const entries = Array.isArray(data?.entries) ? data.entries.filter(isEntry) : [];
  return { period: String(period), rank, players: Number(data?.players) || 0, entries };
}

/** A window's period ended: the new period and its next reset; its top follows. */
function applyPeriod(frame) {
  const entry = windowInfo(frame.board, frame.window);
  if (entry) {
    entry.current = frame.current ?? null;
    entry.next_reset = frame.next_reset ?? null;
  }
  if (viewKey(frame.board, frame.window) !== currentKey()) return;
  setLivePeriod({ current: frame.current, next_reset: frame.next_reset });
  state.around = null; // nobody is ranked in the new period until their next around frame
  state.board = { ...state.board, entries: [], version: -1, period: state.live.period };
  if (frame.closed) {
    const label = windowLabel(frame.window).toLowerCase();
    ui.announcer.textContent = `The ${label} period ${frame.closed} closed; a new one has started.`;
  }
  renderControls();
  if (!state.view.archive) {
    renderBoard();
    renderAround();
  }
}

/** An answer to our subscribe that the server could not serve: say so, retry when it helps. */
function applySubscriptionError(frame) {
  if (typeof frame.board !== "string" || viewKey(frame.board, frame.window) !== currentKey()) return;
  const sent = state.sub.sent;
  if (sent && viewKey(sent.board, sent.window) === currentKey()) state.sub.sent = null; // not held
  if (frame.code === "no_current_period") {
    state.live.period = null;
    state.live.unavailable = "No season is running right now.";
    scheduleSeasonStart();
  } else if (frame.code === "unavailable") {
    state.live.unavailable = "This board cannot be read right now; retrying…";
    timers.subscribe = setTimeout(syncSubscription, SUBSCRIBE_RETRY_MS);
  } else {
    state.live.unavailable = typeof frame.detail === "string" ? frame.detail : "This board is not available.";
  }
  if (!state.view.archive) renderBoard();
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
  const stale = phase !== "live" && state.board.rendered && !state.view.archive;
  ui.board.closest("table").classList.toggle("is-stale", stale);
}

function announceConnection(previous, phase, message) {
  if (phase === "error") ui.announcer.textContent = `Live updates stopped: ${message}.`;
  else if (phase === "live" && previous !== "live") ui.announcer.textContent = "Live updates connected.";
  else if (previous === "live") ui.announcer.textContent = "Connection lost. Reconnecting…";
}

/** What the board card shows now: the live top or a page of a closed period. */
function shownBoard() {
  const { archive } = state.view;
  if (archive) return { id: `${currentKey()}@${archive.period}#${archive.page}`, entries: archive.entries };
  return { id: currentKey(), entries: state.board.key === currentKey() ? state.board.entries : [] };
}

/**
 * Render the top 10, reusing each player's row so it can animate: a FLIP slide to its new
 * position, plus a flash for a new entry, a rank change or a score change. Another window,
 * period or page starts from empty rows (nothing to animate from).
 */
function renderBoard() {
  const { id, entries } = shownBoard();
  if (ui.board.dataset.shown !== id) {
    ui.board.replaceChildren();
    ui.board.dataset.shown = id;
    state.board.rendered = false;
  }
  const existing = new Map(Array.from(ui.board.rows, (row) => [row.dataset.userId, row]));
  const animate = state.board.rendered;
  const slide = animate && !reducedMotion.matches;
  const before = slide ? new Map(Array.from(existing, ([userId, row]) => [userId, topOf(row)])) : null;

  const rows = entries.map((entry) => {
    const row = existing.get(entry.user_id) ?? createRow(entry.user_id);
    const change = updateRow(row, entry, existing.has(entry.user_id));
    if (animate && change) flash(row, `flash-${change}`);
    return row;
  });
  ui.board.replaceChildren(...rows);
  if (before) slideRows(rows, before);

  state.board.rendered = shownIsLoaded();
  ui.boardNote.hidden = entries.length > 0;
  ui.boardNote.textContent = boardNote();
  renderConnection();
}

function shownIsLoaded() {
  const { archive } = state.view;
  return archive ? archive.loaded : state.board.key === currentKey();
}

function boardNote() {
  const { archive } = state.view;
  if (archive) {
    if (archive.error) return archive.error;
    return archive.loaded ? "Nobody scored in this period." : "Loading the final standings…";
  }
  if (state.live.unavailable) return state.live.unavailable;
  if (state.board.key !== currentKey()) return "Loading the board…";
  if (state.view.window === DEFAULT_WINDOW) return "No scores yet. Complete an action to be the first!";
  return "No scores yet in this period. Complete an action to be the first!";
}

/** The switchers, the period picker, the period line, the closed-period banner, the countdown. */
function renderControls() {
  const { board, window: windowId, archive } = state.view;
  const boards = state.boards.size ? [...state.boards.values()] : [{ board, title: boardTitle(board) }];
  // Rebuilt only when the lists change, so a focused control keeps its focus.
  if (changedList(ui.boardSelect, boards.map((b) => `${b.board}:${b.title}`))) {
    ui.boardSelect.replaceChildren(...boards.map((b) => option(b.board, b.title ?? b.board)));
  }
  ui.boardSelect.value = board;

  const windows = state.boards.get(board)?.windows.map((w) => w.window) ?? [windowId];
  if (changedList(ui.windowSwitch, windows)) {
    ui.windowSwitch.replaceChildren(...windows.map((w) => windowOption(w, w === windowId)));
  }
  for (const input of ui.windowSwitch.querySelectorAll("input")) input.checked = input.value === windowId;

  const past = pastPeriods(board, windowId, state.live.period);
  if (archive && !past.includes(archive.period)) past.unshift(archive.period);
  const periods = [option("", windowId === "all-time" ? "All-time (never resets)" : "Live (current)")];
  periods.push(...past.map((id) => option(id, `${id} (closed)`)));
  ui.periodSelect.replaceChildren(...periods);
  ui.periodSelect.value = archive?.period ?? "";
  ui.periodSelect.disabled = past.length === 0;

  const scope = `${boardTitle(board)} · ${windowLabel(windowId)}`;
  if (archive) {
    ui.periodLabel.textContent = `${scope} · ${archive.period}`;
    ui.archiveText.textContent = `Final standings of ${archive.period}. This period has ended; nothing here changes.`;
    ui.boardCaption.textContent = `Final standings of ${scope}, period ${archive.period} (closed)`;
  } else {
    const period = state.live.period && windowId !== "all-time" ? ` · ${state.live.period}` : "";
    ui.periodLabel.textContent = `${scope}${period}`;
    ui.boardCaption.textContent = `The ten highest scores of ${scope}${period}, updated live`;
  }
  ui.archiveBanner.hidden = !archive;
  ui.boardControls.dataset.mode = archive ? "archive" : "live";
  ui.boardHeading.textContent = archive ? "Final standings" : "Top 10";
  renderPager();
  renderCountdown();
}

/** True (and remembered) when `items` differ from what `element` was last built from. */
function changedList(element, items) {
  const signature = JSON.stringify(items);
  if (element.dataset.items === signature) return false;
  element.dataset.items = signature;
  return true;
}

function option(value, text) {
  const element = document.createElement("option");
  element.value = value;
  element.textContent = text;
  return element;
}

function windowOption(windowId, checked) {
  const label = document.createElement("label");
  label.className = "windows__option";
  const input = document.createElement("input");
  input.type = "radio";
  input.name = "window";
  input.value = windowId;
  input.checked = checked;
  const text = document.createElement("span");
  text.textContent = windowLabel(windowId);
  label.append(input, text);
  return label;
}

function renderPager() {
  const { archive } = state.view;
  const pages = archive && (archive.page > 0 || archive.nextCursor);
  ui.pager.hidden = !pages;
  if (!pages) return;
  ui.pagePrev.disabled = archive.page === 0;
  ui.pageNext.disabled = !archive.nextCursor;
  const first = archive.page * BOARD_SIZE + 1;
  const last = archive.page * BOARD_SIZE + archive.entries.length;
  const [from, to, of] = [first, last, archive.players].map((n) => numberFormat.format(n));
  ui.pageInfo.textContent = `${from}–${to} of ${of}`;
}

/** The time to the viewed window's next reset, once a second (not live for screen readers). */
function renderCountdown() {
  const { archive, window: windowId } = state.view;
  const { nextReset } = state.live;
  ui.reset.hidden = Boolean(archive);
  if (archive) return;
  if (windowId === "all-time") {
    setCountdown("Resets", "never", "");
    return;
  }
  if (nextReset === null) {
    const starts = windowId === "season" && state.live.period === null ? nextSeasonStart() : null;
    const left = starts === null ? 0 : starts - (Date.now() + state.clockOffsetMs);
    if (left > 0) setCountdown("Next season in", formatCountdown(left), isoDuration(left));
    else setCountdown("Next reset", windowId === "season" ? "no season planned" : "–", "");
    return;
  }
  const left = nextReset - (Date.now() + state.clockOffsetMs);
  ui.countdown.title = `Resets at ${new Date(nextReset).toLocaleString()}`;
  if (left > 0) {
    setCountdown("Next reset in", formatCountdown(left), isoDuration(left));
    return;
  }
  setCountdown("Next reset", "now…", "PT0S");
  // The rollover frame brings the next reset; without one (socket down) ask the catalog.
  if (left < -RESET_GRACE_MS && Date.now() >= state.live.refreshAfter) {
    state.live.refreshAfter = Date.now() + CATALOG_RETRY_MS;
    void loadBoards();
  }
}

function setCountdown(label, text, duration) {
  if (ui.resetLabel.textContent !== label) ui.resetLabel.textContent = label;
  if (ui.countdown.textContent !== text) ui.countdown.textContent = text;
  if (duration) ui.countdown.setAttribute("datetime", duration);
  else ui.countdown.removeAttribute("datetime");
  if (!duration) ui.countdown.removeAttribute("title");
}

/** "3 d 04:05:06" or "04:05:06". */
function formatCountdown(ms) {
  const total = Math.ceil(ms / 1000);
  const days = Math.floor(total / 86_400);
  const clock = [Math.floor(total / 3_600) % 24, Math.floor(total / 60) % 60, total % 60]
    .map((n) => String(n).padStart(2, "0"))
    .join(":");
  return days ? `${days} d ${clock}` : clock;
}

/** An ISO 8601 duration for <time datetime>. */
function isoDuration(ms) {
  const total = Math.ceil(ms / 1000);
  const days = Math.floor(total / 86_400);
  const rest = `T${Math.floor(total / 3_600) % 24}H${Math.floor(total / 60) % 60}M${total % 60}S`;
  return `P${days ? `${days}D` : ""}${rest}`;
}

/** "Your rank" on the viewed window: rank, players, top percent, and the players around. */
function renderAround() {
  const { archive, board, window: windowId } = state.view;
  const data = archive ? archive.around : state.around;
  const closed = archive ? ` · ${archive.period} (closed)` : "";
  ui.aroundScope.textContent = `${boardTitle(board)} · ${windowLabel(windowId)}${closed}`;
  let summary;
  if (!state.session) summary = "–";
  else if (!data) summary = "Loading your rank…";
  else if (data.rank === null) {
    summary = archive ? "You have no score in this period." : "Not on this board yet: complete an action to join it.";
  } else {
    const of = data.players ? ` of ${numberFormat.format(data.players)}` : "";
    // As the API's top_percent: 100 × rank / players (rank 1 of 200 is the top 0.5 %).
    const percent = data.players ? ` · top ${percentFormat.format((100 * data.rank) / data.players)} %` : "";
    summary = `${archive ? "Final rank" : "Rank"} ${numberFormat.format(data.rank)}${of}${percent}`;
  }
  if (ui.aroundSummary.textContent !== summary) ui.aroundSummary.textContent = summary;

  const entries = data?.entries ?? [];
  const existing = new Map(Array.from(ui.aroundList.rows, (row) => [row.dataset.userId, row]));
  const sameScope = ui.aroundList.dataset.shown === shownBoard().id;
  ui.aroundList.dataset.shown = shownBoard().id;
  const rows = entries.map((entry) => {
    const known = sameScope && existing.has(entry.user_id);
    const row = known ? existing.get(entry.user_id) : createRow(entry.user_id);
    const change = updateRow(row, entry, known);
    if (known && change) flash(row, `flash-${change}`);
    return row;
  });
  ui.aroundList.replaceChildren(...rows);
  ui.aroundList.closest("table").hidden = entries.length === 0;
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

const feed = new LiveFeed({ onFrame: handleFrame, onPhase: setConnection, onReady: syncSubscription });

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
  ui.boardSelect.addEventListener("change", () => selectView(ui.boardSelect.value, state.view.window));
  ui.windowSwitch.addEventListener("change", (event) => {
    if (event.target.name === "window") selectView(state.view.board, event.target.value);
  });
  ui.periodSelect.addEventListener("change", () => {
    if (ui.periodSelect.value) void openArchive(ui.periodSelect.value);
    else backToLive();
  });
  ui.boardControls.addEventListener("submit", (event) => event.preventDefault());
  ui.backLive.addEventListener("click", () => {
    backToLive();
    ui.periodSelect.focus();
  });
  ui.pagePrev.addEventListener("click", () => {
    const { archive } = state.view;
    if (archive && archive.page > 0) void loadArchivePage(archive.page - 1);
  });
  ui.pageNext.addEventListener("click", () => {
    const { archive } = state.view;
    if (archive?.nextCursor) void loadArchivePage(archive.page + 1);
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
  const linked = viewFromAddress();
  if (linked) state.view = { board: linked.board, window: linked.window, archive: null };
  wireEvents();
  renderAccount();
  renderMe();
  renderControls();
  renderBoard();
  renderAround();
  renderConnection();
  void loadActionTypes();
  void loadBoards();
  timers.resetClock = setInterval(renderCountdown, 1_000);
  if (linked?.period) void openArchive(linked.period);
  timers.offlinePoll = setTimeout(function poll() {
    void pollTopWhileOffline();
    timers.offlinePoll = setTimeout(poll, OFFLINE_POLL_MS);
  }, FIRST_OFFLINE_POLL_MS);
  await restoreSession();
  feed.start();
}

void boot();
