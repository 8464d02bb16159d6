// s3flow web: what every page shares. Plain ES module, no libraries, nothing from another origin.
//
// api(path, init)  fetch() with the tab's API token as "Authorization: Bearer": when the
//                  server answers 401 the page asks for the token (once), keeps it in
//                  sessionStorage (this tab only) and sends the request again.
// errorMessage(r)  the {"error": ...} text of a refused request.

const TOKEN_KEY = "s3flow.token";

/** The token kept for this tab, or null. */
export function getToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

function setToken(value) {
  try {
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // storage disabled: the token lives as long as the page
  }
  memoryToken = value || null;
}

let memoryToken = null;
let pendingAsk = null;

function currentToken() {
  return getToken() || memoryToken;
}

/** Create an element: el("li", {class: "x", dataset: {seq: 1}}, child, "text"...). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "dataset") Object.assign(node.dataset, value);
    else if (name === "text") node.textContent = value;
    else if (name === "class") node.className = value;
    else if (name === "hidden") node.hidden = Boolean(value);
    else if (name in node && typeof value !== "string") node[name] = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** "1.5 KB", "12 B", "3.2 MB" (powers of 1024, like the server's limits). */
export function formatBytes(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return "";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = Number(n);
  let i = 0;
  while (value >= 1024 && i < units.length - 1) {
    value /= 1024;
    i += 1;
  }
  return `${i === 0 ? value : value.toFixed(value < 10 ? 1 : 0)} ${units[i]}`;
}

/** The {"error": "..."} text of a response, or its status line. */
export async function errorMessage(response) {
  let text = "";
  try {
    text = await response.text();
    const body = JSON.parse(text);
    if (body && typeof body.error === "string") return body.error;
  } catch {
    // not JSON: fall through
  }
  const status = `${response.status} ${response.statusText || ""}`.trim();
  return text && text.length < 300 ? `${status}: ${text}` : status;
}

/** Ask for the API token in a small labelled form under the page's heading; resolves when given. */
function askToken(reason) {
  if (pendingAsk) return pendingAsk;
  pendingAsk = new Promise((resolve) => {
    const main = document.querySelector("main") || document.body;
    const input = el("input", {
      id: "api-token",
      name: "api-token",
      type: "password",
      autocomplete: "off",
      required: true,
      "aria-describedby": "api-token-help",
    });
    const form = el(
      "form",
      { id: "token-form", class: "token-form", "aria-labelledby": "token-title" },
      el("h2", { id: "token-title", text: "API token" }),
      el("p", { id: "api-token-help", class: "help", role: "alert", text: reason }),
      el(
        "div",
        { class: "field" },
        el("label", { for: "api-token", text: "Token" }),
        input,
      ),
      el("button", { type: "submit", text: "Use this token" }),
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const value = input.value.trim();
      if (!value) return;
      setToken(value);
      form.remove();
      pendingAsk = null;
      resolve(value);
    });
    const heading = main.querySelector("h1");
    if (heading) heading.after(form);
    else main.prepend(form);
    input.focus();
  });
  return pendingAsk;
}

/**
 * fetch() against this server's API with the tab's token. A 401 asks for the token (the
 * refused one is forgotten) and retries; every other answer is returned as is.
 */
export async function api(path, init = {}) {
  for (;;) {
    const headers = new Headers(init.headers || {});
    const token = currentToken();
    if (token) headers.set("Authorization", `Bearer ${token}`);
    const response = await fetch(path, { ...init, headers });
    if (response.status !== 401) return response;
    const message = await errorMessage(response);
    setToken(null);
    await askToken(
      token
        ? `The token was not accepted (${message}). Enter the token you were given.`
        : "This server needs an API token. It is kept for this browser tab only.",
    );
  }
}

/** The URL of a job's event stream, with the token (EventSource cannot send headers). */
export function eventsUrl(jobId, lastEventId) {
  const params = new URLSearchParams();
  if (lastEventId > 0) params.set("last_event_id", String(lastEventId));
  const token = currentToken();
  if (token) params.set("token", token);
  const query = params.toString();
  return `/api/jobs/${encodeURIComponent(jobId)}/events${query ? `?${query}` : ""}`;
}
