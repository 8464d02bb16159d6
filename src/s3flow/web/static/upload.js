// The upload page (/): choose a template and files (picked or dropped), check them against
// GET /api/config, create the job (POST /api/uploads), send every file straight to S3 with
// its presigned POST (XHR, a progress bar per file and a total), then show the job view.

import { api, el, errorMessage, formatBytes } from "./common.js";
import { mountJobView } from "./jobview.js";

// What a browser may leave empty in File.type, by extension (the server checks again).
const TYPES_BY_EXTENSION = {
  ".txt": "text/plain",
  ".log": "text/plain",
  ".md": "text/markdown",
  ".csv": "text/csv",
  ".json": "application/json",
  ".ndjson": "application/x-ndjson",
};

const $ = (id) => document.getElementById(id);

const state = {
  config: null,
  entries: [], // {file, name, size, type, error, row, bar, pct, loaded, status}
  busy: false,
  job: null,
};

function extensionOf(name) {
  const dot = name.lastIndexOf(".");
  return dot > 0 ? name.slice(dot).toLowerCase() : "";
}

function contentTypeOf(file) {
  const declared = (file.type || "").split(";")[0].trim().toLowerCase();
  const allowed = state.config.allowed_content_types || [];
  const guessed = TYPES_BY_EXTENSION[extensionOf(file.name)];
  if (declared && (!allowed.length || allowed.includes(declared))) return declared;
  if (guessed && (!allowed.length || allowed.includes(guessed))) return guessed;
  return declared || guessed || "application/octet-stream";
}

/** Why the server would refuse this file, or "" (the same rules as POST /api/uploads). */
function checkFile(entry) {
  const cfg = state.config;
  const name = entry.name;
  if (!name || name === "." || name === "..") return "this is not a file name";
  if (/[\\/]/.test(name)) return "the name has a path separator";
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f-\u009f]/.test(name)) return "the name has a control character";
  // counted in characters (code points), as the server counts them
  const maxName = cfg.max_name_chars || 200;
  if ([...name].length > maxName) return `the name is longer than ${maxName} characters`;
  const allowedExt = cfg.allowed_extensions || [];
  const ext = extensionOf(name);
  if (allowedExt.length && !allowedExt.includes(ext)) {
    return `extension ${ext ? `"${ext}"` : "(none)"} is not allowed; allowed: ${allowedExt.join(", ")}`;
  }
  const allowedTypes = cfg.allowed_content_types || [];
  if (allowedTypes.length && !allowedTypes.includes(entry.type)) {
    return `content type "${entry.type}" is not allowed; allowed: ${allowedTypes.join(", ")}`;
  }
  if (entry.size < 1) return "the file is empty: empty files cannot be uploaded";
  if (cfg.max_file_bytes && entry.size > cfg.max_file_bytes) {
    const n = (v) => v.toLocaleString("en");
    return `${n(entry.size)} bytes is more than the ${n(cfg.max_file_bytes)} bytes allowed per file`;
  }
  return "";
}

function showError(message) {
  const box = $("upload-error");
  box.textContent = message;
  box.hidden = !message;
}

function setStatus(message) {
  $("upload-status").textContent = message;
}

function renderEntry(entry) {
  entry.bar = el("progress", {
    max: 100,
    value: 0,
    "aria-label": `Upload of ${entry.name}`,
    class: "file-bar",
  });
  entry.pct = el("span", { class: "pct", text: "0 %" });
  entry.reasonEl = el("span", { class: "reason", id: `reason-${entry.id}` });
  entry.stateEl = el("span", { class: "file-state muted" });
  const remove = el(
    "button",
    { type: "button", class: "remove link", "aria-label": `Remove ${entry.name}` },
    "Remove",
  );
  remove.addEventListener("click", () => {
    if (state.busy) return;
    state.entries = state.entries.filter((e) => e !== entry);
    entry.row.remove();
    validate();
    $("files").focus();
  });
  entry.removeButton = remove;
  entry.row = el(
    "li",
    { class: "file-row", dataset: { name: entry.name } },
    el(
      "div",
      { class: "file-head" },
      el("span", { class: "file-name", text: entry.name }),
      el("span", { class: "muted", text: formatBytes(entry.size) }),
      entry.stateEl,
      remove,
    ),
    el("div", { class: "file-progress" }, entry.bar, entry.pct),
    entry.reasonEl,
  );
  entry.bar.setAttribute("aria-describedby", entry.reasonEl.id);
  return entry.row;
}

let nextId = 1;

function addFiles(fileList) {
  if (state.busy || !state.config) return;
  if (state.job) resetForm();
  for (const file of Array.from(fileList)) {
    // The same name again replaces the earlier pick (a job's file names are unique).
    const existing = state.entries.find((e) => e.name === file.name);
    if (existing) {
      existing.row.remove();
      state.entries = state.entries.filter((e) => e !== existing);
    }
    const entry = {
      id: nextId++,
      file,
      name: file.name,
      size: file.size,
      type: contentTypeOf(file),
      loaded: 0,
      status: "ready",
    };
    state.entries.push(entry);
    $("file-list").append(renderEntry(entry));
  }
  validate();
}

/** Check every chosen file; returns the number that cannot be uploaded. */
function validate() {
  let bad = 0;
  for (const entry of state.entries) {
    entry.error = checkFile(entry);
    entry.reasonEl.textContent = entry.error;
    entry.row.classList.toggle("invalid", Boolean(entry.error));
    entry.stateEl.textContent = entry.error ? "cannot be uploaded" : "ready";
    if (entry.error) bad += 1;
  }
  const max = state.config.max_files;
  const count = state.entries.length;
  const tooMany = max && count > max;
  $("count-note").textContent = count
    ? `${count} file${count === 1 ? "" : "s"} chosen, ${formatBytes(
        state.entries.reduce((n, e) => n + e.size, 0),
      )}${tooMany ? ` — more than the ${max} one upload may have: remove ${count - max}` : ""}`
    : "";
  $("count-note").classList.toggle("error-text", Boolean(tooMany));
  $("total-row").hidden = count === 0;
  updateTotal();
  showError("");
  return bad + (tooMany ? 1 : 0);
}

function updateTotal() {
  const total = state.entries.reduce((n, e) => n + e.size, 0);
  const loaded = state.entries.reduce((n, e) => n + e.loaded, 0);
  const pct = total ? Math.floor((100 * loaded) / total) : 0;
  $("total").value = pct;
  $("total-text").textContent = `${pct} % (${formatBytes(loaded)} of ${formatBytes(total)})`;
}

function setProgress(entry, fraction) {
  entry.loaded = Math.round(entry.size * Math.min(1, fraction));
  const pct = Math.floor(100 * Math.min(1, fraction));
  entry.bar.value = pct;
  entry.pct.textContent = `${pct} %`;
  updateTotal();
}

/** The <Message> of an S3 XML error, or the status line. */
function storageError(xhr) {
  const text = xhr.responseText || "";
  const match = /<Message>([^<]*)<\/Message>/.exec(text);
  return `storage refused the file (${xhr.status}${match ? `: ${match[1]}` : ""})`;
}

/** POST one file to S3 with its presigned POST; resolves with "" or the reason it failed
 * (``expired`` is true when storage refused the POST's policy as expired). */
function sendFile(entry, post) {
  return new Promise((resolve) => {
    const form = new FormData();
    for (const [name, value] of Object.entries(post.fields)) form.append(name, value);
    form.append("file", entry.file, entry.name); // S3 wants the file last
    const xhr = new XMLHttpRequest();
    xhr.open("POST", post.url);
    xhr.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable && e.total > 0) setProgress(entry, e.loaded / e.total);
    });
    xhr.addEventListener("load", () => {
      if (xhr.status >= 200 && xhr.status < 300) {
        setProgress(entry, 1);
        resolve({ reason: "" });
      } else {
        setProgress(entry, 0);
        resolve({
          reason: storageError(xhr),
          expired: xhr.status === 403 && /expired/i.test(xhr.responseText || ""),
        });
      }
    });
    xhr.addEventListener("error", () =>
      resolve({
        reason:
          "the storage endpoint did not answer (or refused this page's origin: check the " +
          "bucket's CORS, [jobs] cors_origins)",
      }),
    );
    xhr.addEventListener("abort", () => resolve({ reason: "the upload was cancelled" }));
    entry.status = "uploading";
    entry.stateEl.textContent = "uploading…";
    xhr.send(form);
  });
}

// Files sent at once; the rest wait their turn (so each starts with a URL still good).
const PARALLEL_UPLOADS = 4;

/**
 * The job's upload URLs. They live ``expires_in_s`` (``[jobs] presign_expiry_s``); a file
 * that starts with less than a quarter of that (at most a minute) left gets fresh ones
 * first (POST /api/jobs/{id}/uploads), as does a file storage refused as expired.
 * Times are this page's clock, counted from when the URLs were asked for.
 */
class UploadUrls {
  constructor(jobId, created, askedAt) {
    this.jobId = jobId;
    this.fresh = null; // the request for new URLs under way, shared by every file
    this.take(created, askedAt);
  }

  take(body, askedAt) {
    this.posts = new Map(body.files.map((post) => [post.key, post]));
    const lifeMs = 1000 * body.expires_in_s;
    this.deadline = askedAt + lifeMs;
    this.marginMs = Math.min(60_000, lifeMs / 4);
  }

  /** The POST for ``key``, signed again first when its life is nearly over (or ``force``). */
  async postFor(key, force = false) {
    if (force || Date.now() > this.deadline - this.marginMs) {
      try {
        await this.renew();
      } catch (err) {
        if (force || Date.now() >= this.deadline) throw err;
        // renewed early: the URLs in hand still live, so this file goes with them
      }
    }
    return this.posts.get(key);
  }

  renew() {
    if (!this.fresh) {
      const askedAt = Date.now();
      this.fresh = (async () => {
        const path = `/api/jobs/${encodeURIComponent(this.jobId)}/uploads`;
        const response = await api(path, { method: "POST" });
        if (!response.ok) {
          throw new Error(`new upload URLs were refused: ${await errorMessage(response)}`);
        }
        this.take(await response.json(), askedAt);
      })().finally(() => {
        this.fresh = null;
      });
    }
    return this.fresh;
  }
}

/** Send one chosen file with a live URL; "" or the reason it did not reach storage. */
async function sendEntry(urls, entry, key) {
  try {
    let post = await urls.postFor(key);
    if (!post) return ""; // the job has it already
    let result = await sendFile(entry, post);
    if (result.expired) {
      post = await urls.postFor(key, true);
      if (post) result = await sendFile(entry, post);
    }
    return result.reason;
  } catch (err) {
    return String(err.message || err);
  }
}

/** Send every file, :data:`PARALLEL_UPLOADS` at a time; the reasons, in file order. */
async function sendAll(urls, keys) {
  const reasons = new Array(keys.length).fill("");
  let next = 0;
  const lane = async () => {
    while (next < keys.length) {
      const i = next++;
      reasons[i] = await sendEntry(urls, state.entries[i], keys[i]);
    }
  };
  await Promise.all(Array.from({ length: Math.min(PARALLEL_UPLOADS, keys.length) }, lane));
  return reasons;
}

function setBusy(busy) {
  state.busy = busy;
  $("template").disabled = busy;
  $("files").disabled = busy;
  $("upload").disabled = busy;
  for (const entry of state.entries) entry.removeButton.disabled = busy;
  $("upload-form").setAttribute("aria-busy", busy ? "true" : "false");
}

async function upload(event) {
  event.preventDefault();
  if (state.busy || !state.config) return;
  if (state.job) {
    showError("These files are uploaded. Choose new files (or press “New upload”) first.");
    return;
  }
  showError("");
  if (!state.entries.length) {
    showError("Choose at least one file first.");
    $("files").focus();
    return;
  }
  const bad = validate();
  if (bad) {
    const n = state.entries.filter((e) => e.error).length;
    showError(
      n
        ? `${n} file${n === 1 ? "" : "s"} cannot be uploaded (the reason is next to each): ` +
            "remove them, then upload. Nothing was sent."
        : `Too many files: one upload may have ${state.config.max_files}. Nothing was sent.`,
    );
    $("upload-error").focus();
    return;
  }
  setBusy(true);
  setStatus("Creating the job…");
  let created;
  const askedAt = Date.now();
  try {
    const response = await api("/api/uploads", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({
        template: $("template").value,
        files: state.entries.map((e) => ({ name: e.name, size: e.size, content_type: e.type })),
      }),
    });
    if (!response.ok) {
      const message = await errorMessage(response);
      showError(`The server refused the upload: ${message}`);
      // A refusal that names a file ('a.txt': ...) is also shown next to that file.
      for (const entry of state.entries) {
        if (message.includes(`'${entry.name}'`) || message.includes(`"${entry.name}"`)) {
          entry.reasonEl.textContent = message;
          entry.row.classList.add("invalid");
        }
      }
      setStatus("");
      setBusy(false);
      $("upload-error").focus();
      return;
    }
    created = await response.json();
  } catch (err) {
    showError(`The server did not answer: ${err}`);
    setStatus("");
    setBusy(false);
    return;
  }
  state.job = created.job_id;
  // The job's address now, not once every file is sent: a reload (or a closed tab
  // reopened) mid-upload shows the job instead of an empty form.
  history.pushState({ job: created.job_id }, "", jobPath(created.job_id));
  setStatus(`Uploading ${state.entries.length} file(s) to storage…`);
  const urls = new UploadUrls(created.job_id, created, askedAt);
  const results = await sendAll(
    urls,
    created.files.map((post) => post.key),
  );
  let failed = 0;
  results.forEach((reason, i) => {
    const entry = state.entries[i];
    entry.status = reason ? "failed" : "uploaded";
    entry.stateEl.textContent = reason ? "failed" : "uploaded";
    entry.reasonEl.textContent = reason;
    entry.row.classList.toggle("invalid", Boolean(reason));
    if (reason) failed += 1;
  });
  setBusy(false);
  for (const entry of state.entries) entry.removeButton.hidden = true; // they are in the job now
  $("upload").disabled = true;
  $("reset").hidden = false;
  if (failed) {
    showError(
      `${failed} of ${results.length} file(s) did not reach storage (the reason is next to ` +
        "each). The job waits for every file and expires if one never arrives.",
    );
  }
  setStatus(
    failed
      ? "Upload incomplete."
      : `Uploaded ${results.length} file(s). The job is below; its address is in the location bar.`,
  );
  showJob(created.job_id);
}

function jobPath(jobId) {
  return `/jobs/${encodeURIComponent(jobId)}`;
}

function showJob(jobId) {
  const slot = $("job-slot");
  slot.hidden = false;
  if (location.pathname !== jobPath(jobId)) history.pushState({ job: jobId }, "", jobPath(jobId));
  document.title = `Job ${jobId} · s3flow`;
  state.view = mountJobView(slot, jobId);
}

function resetForm() {
  if (state.view) state.view.close();
  state.view = null;
  state.job = null;
  state.entries = [];
  $("file-list").replaceChildren();
  $("job-slot").replaceChildren();
  $("job-slot").hidden = true;
  $("reset").hidden = true;
  $("upload").disabled = false;
  setStatus("");
  showError("");
  validate();
  if (location.pathname !== "/") history.pushState({}, "", "/");
  document.title = "Upload files · s3flow";
}

function renderConfig(cfg) {
  const select = $("template");
  select.replaceChildren(
    ...cfg.templates.map((t) =>
      el("option", { value: t.name, text: t.description ? `${t.name} — ${t.description}` : t.name }),
    ),
  );
  const describeTemplate = () => {
    const t = cfg.templates.find((x) => x.name === select.value);
    $("template-help").textContent = t
      ? `Steps: ${t.steps.map((s) => s.name).join(" → ")}`
      : "";
  };
  select.addEventListener("change", describeTemplate);
  describeTemplate();
  const limits = [];
  if (cfg.allowed_extensions.length) limits.push(`allowed: ${cfg.allowed_extensions.join(", ")}`);
  if (cfg.max_file_bytes) {
    const exact = cfg.max_file_bytes.toLocaleString("en");
    limits.push(`up to ${formatBytes(cfg.max_file_bytes)} (${exact} bytes) a file`);
  }
  if (cfg.max_files) limits.push(`at most ${cfg.max_files} files`);
  $("limits").textContent = limits.length ? `Files: ${limits.join("; ")}.` : "";
  if (cfg.allowed_extensions.length) $("files").accept = cfg.allowed_extensions.join(",");
}

function setupDropzone() {
  const zone = $("dropzone");
  const over = (event) => {
    event.preventDefault();
    if (event.dataTransfer) event.dataTransfer.dropEffect = state.busy ? "none" : "copy";
    zone.classList.add("over");
  };
  zone.addEventListener("dragenter", over);
  zone.addEventListener("dragover", over);
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    if (event.dataTransfer && event.dataTransfer.files.length) addFiles(event.dataTransfer.files);
  });
  // A file dropped next to the zone must not replace the page.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
}

async function init() {
  setupDropzone();
  $("files").addEventListener("change", (event) => {
    addFiles(event.target.files);
    event.target.value = ""; // choosing the same file again still fires "change"
  });
  $("upload-form").addEventListener("submit", upload);
  $("reset").addEventListener("click", () => {
    resetForm();
    $("files").focus();
  });
  window.addEventListener("popstate", () => location.reload());
  // Leaving while files are sent stops them: the job would wait for them until it expires.
  window.addEventListener("beforeunload", (event) => {
    if (state.busy && state.job) {
      event.preventDefault();
      event.returnValue = "";
    }
  });
  let response;
  try {
    response = await api("/api/config");
  } catch (err) {
    showError(`The server did not answer: ${err}`);
    return;
  }
  if (!response.ok) {
    showError(`Cannot load the server's settings: ${await errorMessage(response)}`);
    return;
  }
  const cfg = await response.json();
  state.config = cfg;
  if (!cfg.jobs_enabled || !cfg.templates.length) {
    showError(
      "Upload jobs are not configured on this server: add a [jobs] table and at least one " +
        "[[templates]] to its configuration.",
    );
    return;
  }
  renderConfig(cfg);
  $("upload-form").dataset.ready = "true";
  $("config-status").textContent = "";
}

init();
