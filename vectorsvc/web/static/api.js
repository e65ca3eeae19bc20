// Talking to the service as a signed-in user.
//
// The access token lives only in this module's memory; the refresh token in
// sessionStorage, so a reload of this tab can get a new access token without asking for
// the password again. The page never sees an API key.

const REFRESH_KEY = "vectorsvc.refresh_token";

let accessToken = null;
let currentSession = null; // {user, workspace} from the last token response
let refreshing = null; // the refresh in flight, shared so a rotated token is used once
let onSessionEnded = () => {};

export class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field;
  }
}

// Raised when the session cannot be renewed: the user must sign in again.
export class SessionEnded extends ApiError {}

export function setSessionEndedHandler(handler) {
  onSessionEnded = handler;
}

export function hasSession() {
  return accessToken !== null || sessionStorage.getItem(REFRESH_KEY) !== null;
}

export function sessionInfo() {
  return currentSession;
}

function keep(pair) {
  accessToken = pair.access_token;
  currentSession = { user: pair.user, workspace: pair.workspace };
  sessionStorage.setItem(REFRESH_KEY, pair.refresh_token);
}

function forget() {
  accessToken = null;
  currentSession = null;
  sessionStorage.removeItem(REFRESH_KEY);
}

async function errorFrom(response) {
  // Every error of the service is {"error": {"code", "message", "field"?}}.
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: fall through to a generic message
  }
  const error = body && body.error;
  if (error && typeof error.message === "string") {
    return new ApiError(response.status, error.code, error.message, error.field);
  }
  return new ApiError(
    response.status,
    "http_error",
    `The service answered ${response.status} ${response.statusText || ""}`.trim(),
  );
}

async function send(url, options) {
  try {
    return await fetch(url, options);
  } catch {
    throw new ApiError(
      0,
      "network_error",
      "Could not reach the service. Check the connection and try again.",
    );
  }
}

async function postJson(path, body) {
  return send(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
}

export async function signIn(email, password, workspace) {
  const body = { email, password };
  if (workspace) body.workspace = workspace;
  const response = await postJson("/api/auth/sign-in", body);
  if (!response.ok) throw await errorFrom(response);
  keep(await response.json());
  return currentSession;
}

async function doRefresh() {
  const refreshToken = sessionStorage.getItem(REFRESH_KEY);
  if (refreshToken === null) {
    throw new SessionEnded(401, "signed_out", "You are signed out. Sign in to continue.");
  }
  const response = await postJson("/api/auth/refresh", { refresh_token: refreshToken });
  if (!response.ok) {
    const error = await errorFrom(response);
    if (response.status === 401) {
      forget();
      const ended = new SessionEnded(401, error.code, `Your session ended: ${error.message}`);
      onSessionEnded(ended);
      throw ended;
    }
    throw error;
  }
  keep(await response.json());
}

// One refresh at a time: a second caller waits for the first instead of presenting the
// same (then rotated) refresh token, which the service would treat as theft.
export function refreshSession() {
  if (refreshing === null) {
    refreshing = doRefresh().finally(() => {
      refreshing = null;
    });
  }
  return refreshing;
}

function sameOrigin(url) {
  return new URL(url, window.location.href).origin === window.location.origin;
}

// A request with the bearer token; on 401 it refreshes once and retries.
export async function authorizedFetch(url, options = {}) {
  if (!sameOrigin(url)) {
    // Never hand the access token to another origin.
    throw new ApiError(0, "cross_origin", `Refusing to send credentials to ${url}`);
  }
  if (accessToken === null) await refreshSession();
  for (let attempt = 0; ; attempt += 1) {
    const tokenUsed = accessToken;
    const headers = { ...(options.headers || {}), Authorization: `Bearer ${tokenUsed}` };
    const response = await send(url, { ...options, headers });
    if (response.status !== 401 || attempt > 0) return response;
    // Another call may have renewed the token meanwhile; refresh only if it did not.
    if (accessToken === tokenUsed) await refreshSession();
  }
}

export async function api(path, { method = "GET", body, query } = {}) {
  let url = path;
  if (query) {
    const params = new URLSearchParams();
    for (const [key, value] of Object.entries(query)) {
      if (value !== null && value !== undefined && value !== "") params.set(key, String(value));
    }
    const text = params.toString();
    if (text) url += `?${text}`;
  }
  const options = { method };
  if (body !== undefined) {
    options.headers = { "Content-Type": "application/json" };
    options.body = JSON.stringify(body);
  }
  const response = await authorizedFetch(url, options);
  if (!response.ok) {
    const error = await errorFrom(response);
    if (response.status === 401) {
      forget();
      const ended = new SessionEnded(401, error.code, `Your session ended: ${error.message}`);
      onSessionEnded(ended);
      throw ended;
    }
    throw error;
  }
  if (response.status === 204) return null;
  return response.json();
}

// An image the API serves behind authentication, as a blob: URL for an <img>.
export async function fetchImageUrl(url) {
  const response = await authorizedFetch(url);
  if (!response.ok) throw await errorFrom(response);
  return URL.createObjectURL(await response.blob());
}

// Ends the session on the service (its tokens stop working everywhere), then here.
export async function signOut() {
  try {
    if (!hasSession()) return;
    const response = await authorizedFetch("/api/auth/sign-out", { method: "POST" });
    if (!response.ok && response.status !== 401) throw await errorFrom(response);
  } catch (error) {
    if (!(error instanceof SessionEnded)) throw error; // already over: nothing to end
  } finally {
    forget();
  }
}
