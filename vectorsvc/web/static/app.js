// The Knowledge Bases page: sign in, list knowledge bases, open a scope, page through its
// items, search it, delete it. Plain DOM; every value from the API goes in as text, never
// as HTML.

import {
  ApiError,
  SessionEnded,
  api,
  fetchImageUrl,
  hasSession,
  refreshSession,
  sessionInfo,
  setSessionEndedHandler,
  signIn,
  signOut,
} from "./api.js";

const $ = (id) => document.getElementById(id);
const views = ["sign-in-view", "kb-view", "scope-view"];
const numberFormat = new Intl.NumberFormat();

// The open scope: its catalog entry and where we are in its items.
const scopeState = {
  kb: null,
  cursor: null,
  previous: [], // cursors of the pages before this one
  nextCursor: null,
};
let blobUrls = [];
let viewToken = 0; // bumps on every navigation so late answers of an old view are dropped
let itemsRequest = 0;

// -- small helpers ---------------------------------------------------------------------

function el(tag, { text, className, attrs } = {}, children = []) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  for (const child of children) if (child) node.append(child);
  return node;
}

function showView(id) {
  for (const view of views) $(view).hidden = view !== id;
  const signedIn = id !== "sign-in-view";
  $("session-nav").hidden = !signedIn;
  const info = sessionInfo();
  $("who").textContent = signedIn && info ? `${info.user.email} · ${info.workspace.name}` : "";
}

function setStatus(message) {
  $("status").textContent = message || "";
}

function showError(error) {
  const box = $("error");
  if (!error) {
    box.hidden = true;
    box.textContent = "";
    return;
  }
  box.textContent =
    error instanceof ApiError || error instanceof Error
      ? error.message
      : "Something went wrong.";
  box.hidden = false;
}

function setLoading(on) {
  $("loading").hidden = !on;
}

function formatBytes(bytes) {
  if (!Number.isFinite(bytes)) return "";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value < 10 && unit > 0 ? value.toFixed(1) : Math.round(value)} ${units[unit]}`;
}

function formatDate(text) {
  if (!text) return "";
  const date = new Date(text);
  return Number.isNaN(date.getTime()) ? String(text) : date.toLocaleString();
}

function plural(count, word) {
  return `${numberFormat.format(count)} ${word}${count === 1 ? "" : "s"}`;
}

function releaseBlobs() {
  for (const url of blobUrls) URL.revokeObjectURL(url);
  blobUrls = [];
}

function scopeHref(kb) {
  const params = new URLSearchParams({ model: kb.model, scope: kb.scope });
  return `/knowledge-bases?${params}`;
}

async function guarded(task) {
  showError(null);
  try {
    await task();
  } catch (error) {
    if (error instanceof SessionEnded) return; // the handler already shows sign-in
    showError(error);
  } finally {
    setLoading(false);
  }
}

// -- navigation ------------------------------------------------------------------------

function navigate(url, { replace = false } = {}) {
  if (replace) window.history.replaceState(null, "", url);
  else window.history.pushState(null, "", url);
  return route();
}

async function route() {
  viewToken += 1;
  releaseBlobs();
  if (!hasSession()) {
    showSignIn();
    return;
  }
  if (sessionInfo() === null) {
    // A reload: trade the stored refresh token for a fresh access token.
    await guarded(refreshSession);
    if (sessionInfo() === null) return;
  }
  const url = new URL(window.location.href);
  if (url.pathname !== "/knowledge-bases") {
    window.history.replaceState(null, "", "/knowledge-bases");
  }
  const model = url.searchParams.get("model");
  const scope = url.searchParams.get("scope");
  if (model && scope) await openScope(model, scope);
  else await showKnowledgeBases();
}

function showSignIn(message) {
  showView("sign-in-view");
  if (message) setStatus(message);
  $("password").value = "";
  $("email").focus();
}

// -- sign in and out -------------------------------------------------------------------

async function onSignIn(event) {
  event.preventDefault();
  const email = $("email").value.trim();
  const password = $("password").value;
  if (!email || !password) {
    showError(new Error("Enter your email and your password."));
    (email ? $("password") : $("email")).focus();
    return;
  }
  const button = $("sign-in-button");
  button.disabled = true;
  setStatus("Signing in…");
  await guarded(async () => {
    try {
      await signIn(email, password, $("workspace").value.trim());
    } finally {
      button.disabled = false;
      $("password").value = "";
    }
    setStatus("");
    await route();
  });
  if (!hasSession()) setStatus("");
}

async function onSignOut() {
  await guarded(async () => {
    try {
      await signOut();
    } finally {
      window.history.replaceState(null, "", "/");
      showSignIn("You are signed out.");
    }
  });
}

// -- the list of knowledge bases -------------------------------------------------------

async function fetchAllKnowledgeBases(query) {
  const all = [];
  let cursor = null;
  let count = 0;
  // A workspace has tens, maybe hundreds of scopes: fetching every page is fine here.
  for (let page = 0; page < 50; page += 1) {
    const answer = await api("/api/knowledge-bases", { query: { ...query, cursor, limit: 200 } });
    all.push(...answer.data);
    count = answer.count;
    cursor = answer.next_cursor;
    if (!cursor) break;
  }
  return { data: all, count };
}

function groupKnowledgeBases(entries) {
  // model -> collection -> scopes, in the order the API returned them.
  const models = new Map();
  for (const kb of entries) {
    if (!models.has(kb.model)) models.set(kb.model, { name: kb.model_name, collections: new Map() });
    const collections = models.get(kb.model).collections;
    if (!collections.has(kb.collection)) collections.set(kb.collection, []);
    collections.get(kb.collection).push(kb);
  }
  return models;
}

// The model's live release, and the new one filling in the background (searches stay on
// the live one until it holds everything).
function releaseNote(kb) {
  if (!kb || kb.release === null || kb.release === undefined) return null;
  const parts = [` · release ${kb.release}`];
  const migration = kb.migration;
  if (migration) {
    const share = migration.total > 0 ? Math.floor((100 * migration.done) / migration.total) : 100;
    parts.push(
      ` · release ${migration.to_release} filling: ${numberFormat.format(migration.done)} of ` +
        `${numberFormat.format(migration.total)} (${share}%)`,
    );
  }
  return el("span", { text: parts.join(""), className: "release", attrs: { "data-release": kb.release } });
}

function kbTable(collection, scopes) {
  const total = scopes.reduce((sum, kb) => sum + kb.point_count, 0);
  const caption = el("caption", {}, [
    el("span", { text: "Collection " }),
    el("code", { text: collection }),
    el("span", { text: ` · ${plural(scopes.length, "scope")} · ${plural(total, "item")}` }),
    releaseNote(scopes[0]),
  ]);
  const head = el("thead", {}, [
    el(
      "tr",
      {},
      ["Scope", "Modality", "Items", "Approx. size", "Last write"].map((label) =>
        el("th", { text: label, attrs: { scope: "col" } }),
      ),
    ),
  ]);
  const body = el(
    "tbody",
    {},
    scopes.map((kb) => {
      const link = el("a", {
        text: kb.scope,
        attrs: { href: scopeHref(kb), "aria-label": `Open scope ${kb.scope} (${kb.model})` },
      });
      link.addEventListener("click", (event) => {
        if (event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
        event.preventDefault();
        navigate(scopeHref(kb));
      });
      return el("tr", { attrs: { "data-scope": kb.scope } }, [
        el("th", { attrs: { scope: "row" } }, [link]),
        el("td", { text: kb.modality }),
        el("td", { text: numberFormat.format(kb.point_count), className: "num" }),
        el("td", { text: formatBytes(kb.approx_bytes), className: "num" }),
        el("td", { text: formatDate(kb.last_write_at) }),
      ]);
    }),
  );
  return el("table", { className: "kb-table" }, [caption, head, body]);
}

async function showKnowledgeBases() {
  const token = viewToken;
  showView("kb-view");
  setLoading(true);
  await guarded(async () => {
    const prefix = $("scope-prefix").value.trim();
    const { data, count } = await fetchAllKnowledgeBases({ scope_prefix: prefix });
    if (token !== viewToken) return;
    const groups = $("kb-groups");
    groups.replaceChildren();
    for (const [model, group] of groupKnowledgeBases(data)) {
      const section = el("section", { className: "kb-model" }, [
        el("h2", {}, [
          el("span", { text: group.name }),
          el("span", { text: " " }),
          el("code", { text: model, className: "slug" }),
        ]),
      ]);
      for (const [collection, scopes] of group.collections) {
        section.append(kbTable(collection, scopes));
      }
      groups.append(section);
    }
    $("kb-empty").hidden = data.length > 0;
    $("kb-summary").textContent =
      data.length > 0 ? `${plural(count, "knowledge base")}${prefix ? ` starting with “${prefix}”` : ""}` : "";
  });
}

// -- one scope ---------------------------------------------------------------------------

async function findKnowledgeBase(model, scope) {
  const { data } = await fetchAllKnowledgeBases({ model, scope_prefix: scope });
  return data.find((kb) => kb.model === model && kb.scope === scope) || null;
}

async function openScope(model, scope) {
  const token = viewToken;
  showView("scope-view");
  $("scope-title").textContent = `Scope ${scope}`;
  $("scope-meta").textContent = "";
  $("items").replaceChildren();
  $("search-results").hidden = true;
  $("query").value = "";
  setLoading(true);
  await guarded(async () => {
    const kb = await findKnowledgeBase(model, scope);
    if (token !== viewToken) return;
    if (kb === null) {
      scopeState.kb = null;
      throw new Error(`There is no scope “${scope}” for model ${model} in this workspace.`);
    }
    scopeState.kb = kb;
    $("scope-meta").replaceChildren(
      el("span", { text: `${kb.model_name} (` }),
      el("code", { text: kb.model }),
      el("span", { text: ") · collection " }),
      el("code", { text: kb.collection }),
      el("span", { text: ` · ${kb.modality} · ${plural(kb.point_count, "item")}` }),
    );
    scopeState.cursor = null;
    scopeState.previous = [];
    await loadItems();
    $("scope-title").focus();
  });
}

function thumbnail(url, label) {
  const img = el("img", { className: "thumb", attrs: { alt: label, width: "96", height: "96" } });
  fetchImageUrl(url)
    .then((blobUrl) => {
      blobUrls.push(blobUrl);
      img.src = blobUrl;
    })
    .catch(() => {
      img.replaceWith(el("span", { className: "thumb missing", text: "No preview" }));
    });
  return img;
}

function metadataList(metadata) {
  const entries = Object.entries(metadata || {});
  if (entries.length === 0) return null;
  return el(
    "dl",
    { className: "metadata" },
    entries.flatMap(([key, value]) => [
      el("dt", { text: key }),
      el("dd", { text: typeof value === "string" ? value : JSON.stringify(value) }),
    ]),
  );
}

function itemCard(item, { score } = {}) {
  const text = item.text_snippet ?? item.text ?? null;
  const children = [];
  if (item.thumbnail_url) children.push(thumbnail(item.thumbnail_url, `Image ${item.id}`));
  const body = el("div", { className: "card-body" }, [
    el("p", { className: "card-title" }, [
      el("code", { text: item.id }),
      score !== undefined ? el("span", { className: "score", text: ` score ${score.toFixed(3)}` }) : null,
    ]),
    text !== null ? el("p", { className: "snippet", text }) : null,
    !text && item.media_ref ? el("p", { className: "media-ref", text: item.media_ref }) : null,
    metadataList(item.metadata),
    item.indexed_at ? el("p", { className: "when", text: `Indexed ${formatDate(item.indexed_at)}` }) : null,
  ]);
  children.push(body);
  return el("li", { className: "card" }, children);
}

function pageSize() {
  return Number.parseInt($("page-size").value, 10) || 20;
}

async function loadItems() {
  const kb = scopeState.kb;
  if (kb === null) return;
  // Only the newest request may draw: a page-size change can overtake an earlier load.
  itemsRequest += 1;
  const request = itemsRequest;
  const token = viewToken;
  setLoading(true);
  const path = `/api/knowledge-bases/${encodeURIComponent(kb.model)}/${encodeURIComponent(kb.scope)}/items`;
  const answer = await api(path, { query: { cursor: scopeState.cursor, limit: pageSize() } });
  if (token !== viewToken || request !== itemsRequest) return;
  releaseBlobs();
  scopeState.nextCursor = answer.next_cursor;
  $("items").replaceChildren(...answer.data.map((item) => itemCard(item)));
  $("items-empty").hidden = answer.data.length > 0 || scopeState.previous.length > 0;
  const first = scopeState.previous.length * pageSize() + 1;
  const last = first + answer.data.length - 1;
  const page = scopeState.previous.length + 1;
  $("page-label").textContent =
    answer.data.length > 0 ? `Page ${page} · items ${first}–${last} of ${numberFormat.format(kb.point_count)}` : `Page ${page}`;
  $("prev-page").disabled = scopeState.previous.length === 0;
  $("next-page").disabled = !answer.next_cursor;
}

function movePage(step) {
  return guarded(async () => {
    if (step > 0 && scopeState.nextCursor) {
      scopeState.previous.push(scopeState.cursor);
      scopeState.cursor = scopeState.nextCursor;
    } else if (step < 0 && scopeState.previous.length > 0) {
      scopeState.cursor = scopeState.previous.pop();
    } else {
      return;
    }
    await loadItems();
  });
}

async function onSearch(event) {
  event.preventDefault();
  const kb = scopeState.kb;
  const query = $("query").value.trim();
  if (kb === null) return;
  if (!query) {
    showError(new Error("Type something to search for."));
    $("query").focus();
    return;
  }
  const token = viewToken;
  setLoading(true);
  await guarded(async () => {
    const answer = await api("/api/runs", {
      method: "POST",
      body: { model: kb.model, mode: "search", scope: kb.scope, input: { text: query }, params: { top_k: 10 } },
    });
    if (token !== viewToken) return;
    const hits = answer.output.hits || [];
    $("hits").replaceChildren(...hits.map((hit) => itemCard(hit, { score: hit.score })));
    $("hits-empty").hidden = hits.length > 0;
    $("search-results").hidden = false;
    setStatus(`${plural(hits.length, "result")} for “${query}”.`);
  });
}

async function onDeleteScope() {
  const kb = scopeState.kb;
  if (kb === null) return;
  const path = `/api/knowledge-bases/${encodeURIComponent(kb.model)}/${encodeURIComponent(kb.scope)}`;
  await guarded(async () => {
    // A dry run first, so the dialog states exactly what will go.
    const dry = await api(path, { method: "DELETE", query: { dry_run: "true" } });
    const count = dry.count;
    $("confirm-title").textContent = `Delete scope ${kb.scope}?`;
    $("confirm-text").textContent =
      `This permanently deletes ${plural(count, "item")} in scope “${kb.scope}” ` +
      `of model ${kb.model}. It cannot be undone.`;
    $("confirm-ok").textContent = `Delete ${plural(count, "item")}`;
    const dialog = $("confirm-delete");
    dialog.returnValue = "";
    const closed = new Promise((resolve) => dialog.addEventListener("close", resolve, { once: true }));
    dialog.showModal();
    $("confirm-cancel").focus();
    await closed;
    if (dialog.returnValue !== "confirm") {
      $("delete-scope").focus();
      return;
    }
    const done = await api(path, { method: "DELETE" });
    const deleted = done.deleted ?? done.count ?? count;
    await navigate("/knowledge-bases");
    setStatus(`Deleted ${plural(deleted, "item")} from scope ${kb.scope}.`);
  });
}

// -- wiring ----------------------------------------------------------------------------

function start() {
  setSessionEndedHandler((error) => {
    // Stay on this URL: signing in again comes back to the same view.
    showSignIn();
    showError(error);
  });
  $("sign-in-form").addEventListener("submit", onSignIn);
  $("sign-out").addEventListener("click", onSignOut);
  $("kb-filter").addEventListener("submit", (event) => {
    event.preventDefault();
    setStatus("");
    showKnowledgeBases();
  });
  $("back-link").addEventListener("click", (event) => {
    if (event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
    event.preventDefault();
    setStatus("");
    navigate("/knowledge-bases");
  });
  $("search-form").addEventListener("submit", onSearch);
  $("prev-page").addEventListener("click", () => movePage(-1));
  $("next-page").addEventListener("click", () => movePage(1));
  $("page-size").addEventListener("change", () =>
    guarded(async () => {
      scopeState.cursor = null;
      scopeState.previous = [];
      await loadItems();
    }),
  );
  $("delete-scope").addEventListener("click", onDeleteScope);
  window.addEventListener("popstate", () => {
    setStatus("");
    showError(null);
    route();
  });
  route();
}

start();
