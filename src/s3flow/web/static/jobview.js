// The job view: a job's files, steps (live status and progress), outputs and event log.
//
// The state comes from GET /api/jobs/{id}, then from the job's event stream (EventSource).
// Every event received is kept in sessionStorage, so a reload shows the history at once
// and resumes the stream after the last event it has (?last_event_id=N); a dropped
// connection resumes the same way (the browser sends Last-Event-ID itself, and when it
// gives up the view reconnects with ?last_event_id=). Events are applied once, in order:
// an id at or below the last one applied is a duplicate and ignored.
//
// A step's status only moves forward within one attempt of the job (pending, running,
// then completed or failed); a step.started of a later attempt starts the step over,
// as the job record does. A hidden tab closes its stream (a browser opens at most six
// HTTP/1.1 connections per host, and each open stream holds one) and resumes after the
// last event it has when it is shown again.

import { api, el, errorMessage, eventsUrl, formatBytes } from "./common.js";

const EVENT_TYPES = [
  "job.created",
  "file.received",
  "job.queued",
  "step.started",
  "step.progress",
  "step.completed",
  "job.completed",
  "job.failed",
  "job.expired",
];
const TERMINAL = new Set(["completed", "failed", "expired"]);
const TERMINAL_EVENTS = new Set(["job.completed", "job.failed", "job.expired"]);
const STATUS_RANK = {
  waiting_for_files: 0,
  queued: 1,
  running: 2,
  completed: 3,
  failed: 3,
  expired: 3,
};
/** The job status an event moves the job to (other events leave it as it is). */
const STATUS_OF_EVENT = new Map([
  ["job.queued", "queued"],
  ["step.started", "running"],
  ["job.completed", "completed"],
  ["job.failed", "failed"],
  ["job.expired", "expired"],
]);
const STEP_RANK = { pending: 0, running: 1, completed: 2, failed: 2, stopped: 2 };
const MAX_RETRY_MS = 15000;
const STATUS_TEXT = {
  waiting_for_files: "waiting for files",
  queued: "queued",
  running: "running",
  completed: "completed",
  failed: "failed",
  expired: "expired",
};
const CACHE_PREFIX = "s3flow.events.";
const MAX_CACHED = 5000;

function loadCache(jobId) {
  try {
    const raw = sessionStorage.getItem(CACHE_PREFIX + jobId);
    if (!raw) return [];
    const events = JSON.parse(raw);
    if (!Array.isArray(events)) return [];
    // Only a gapless 1, 2, 3... prefix is usable; anything else starts from event 1.
    for (let i = 0; i < events.length; i += 1) {
      if (!events[i] || events[i].seq !== i + 1 || typeof events[i].type !== "string") return [];
    }
    return events;
  } catch {
    return [];
  }
}

function saveCache(jobId, events) {
  try {
    if (events.length > MAX_CACHED) {
      sessionStorage.removeItem(CACHE_PREFIX + jobId);
      return;
    }
    sessionStorage.setItem(CACHE_PREFIX + jobId, JSON.stringify(events));
  } catch {
    // full or disabled: a reload then replays from event 1 (still shown once)
  }
}

function describe(type, data, stepNames) {
  const stepName = (i) => `step ${Number(i) + 1}${stepNames[i] ? ` (${stepNames[i]})` : ""}`;
  switch (type) {
    case "job.created":
      return `job created: template ${data.template}, ${(data.files || []).length} file(s)`;
    case "file.received":
      return `received ${data.name} (${formatBytes(data.size)})`;
    case "job.queued":
      return "every file is here: job queued";
    case "step.started":
      return `${stepName(data.step)} started on ${data.inputs} input(s)${
        data.attempt > 1 ? `, attempt ${data.attempt}` : ""
      }`;
    case "step.progress":
      return `${stepName(data.step)}: ${formatBytes(data.bytes_done)} of ${formatBytes(
        data.bytes_total,
      )}, ${data.files_done} file(s) done`;
    case "step.completed":
      return `${stepName(data.step)} completed: ${data.outputs} output(s)`;
    case "job.completed":
      return `job completed: ${(data.outputs || []).length} output(s)`;
    case "job.failed":
      return `job failed: ${data.error}`;
    case "job.expired":
      return `job expired: ${data.error || ""}`;
    default:
      return type;
  }
}

/**
 * Render the job `jobId` into `root` and keep it live; `level` is the heading level of its
 * title (its sections get the next one). Returns the view (close() stops the stream).
 */
export function mountJobView(root, jobId, { level = 2 } = {}) {
  const view = new JobView(root, jobId, level);
  view.start();
  return view;
}

class JobView {
  constructor(root, jobId, level) {
    this.root = root;
    this.level = level;
    this.jobId = jobId;
    this.events = [];
    this.lastSeq = 0;
    this.status = null;
    this.stepNames = [];
    this.source = null;
    this.retryMs = 1000;
    this.retryTimer = null;
    this.closed = false;
    this.saveTimer = null;
    this.outputsShown = false;
    this.streaming = false; // start() got the job and may open the stream
    this.paused = false; // the stream is closed while the tab is hidden
    this.onVisibility = () => this.visibilityChanged();
    this.onPageHide = () => this.flush();
    this.build();
    window.addEventListener("pagehide", this.onPageHide);
    document.addEventListener("visibilitychange", this.onVisibility);
  }

  build() {
    const id = this.jobId;
    const title = `h${Math.min(6, this.level)}`;
    const sub = `h${Math.min(6, this.level + 1)}`;
    this.statusEl = el("span", {
      class: "status",
      id: "job-status",
      role: "status",
      dataset: { status: "loading" },
      text: "loading…",
    });
    this.templateEl = el("span", { id: "job-template" });
    this.connEl = el("span", { id: "job-connection", class: "muted", text: "not connected" });
    this.errorEl = el("p", { class: "error", id: "job-error", role: "alert", hidden: true });
    this.filesEl = el("ul", { class: "files", id: "job-files" });
    this.stepsEl = el("ol", { class: "steps", id: "job-steps" });
    this.outputsEl = el("ul", { class: "outputs", id: "job-outputs" });
    this.outputsNote = el("p", {
      class: "muted",
      id: "job-outputs-note",
      text: "The outputs appear here when the job completes.",
    });
    // Scrollable, so focusable: keyboard users can scroll the log too.
    this.eventsEl = el("ol", { class: "events", id: "job-events", tabindex: 0 });
    const section = el(
      "section",
      { class: "job", "aria-labelledby": "job-title", dataset: { jobId: id } },
      el(title, { id: "job-title" }, "Job ", el("code", { text: id })),
      el(
        "dl",
        { class: "summary" },
        el("dt", { text: "Status" }),
        el("dd", {}, this.statusEl),
        el("dt", { text: "Template" }),
        el("dd", {}, this.templateEl),
        el("dt", { text: "Live updates" }),
        el("dd", {}, this.connEl),
      ),
      this.errorEl,
      el(sub, { text: "Files" }),
      this.filesEl,
      el(sub, { text: "Steps" }),
      this.stepsEl,
      el(sub, { text: "Outputs" }),
      this.outputsNote,
      this.outputsEl,
      el(sub, { id: "events-title", text: "Events" }),
      this.eventsEl,
    );
    this.eventsEl.setAttribute("aria-labelledby", "events-title");
    this.root.replaceChildren(section);
  }

  /**
   * Load the job, then follow its stream. A 404 (or another refusal) is final; a server
   * that does not answer or answers 5xx is asked again after 1 s, 2 s, 4 s… (at most 15 s).
   */
  async start() {
    let job = null;
    while (!job) {
      if (this.closed) return;
      let response = null;
      let problem = "";
      try {
        response = await api(`/api/jobs/${encodeURIComponent(this.jobId)}`);
        if (response.ok) {
          job = await response.json();
          break;
        }
        problem = await errorMessage(response);
      } catch (err) {
        problem = `the server did not answer: ${err}`;
      }
      if (response && !response.ok && !retryable(response.status)) {
        this.showError(problem);
        this.setStatus("unknown", response.status === 404 ? "not found" : "unavailable");
        this.connEl.textContent = "not connected";
        return;
      }
      const wait = this.retryMs;
      this.retryMs = Math.min(this.retryMs * 2, MAX_RETRY_MS);
      this.showError(`Could not load the job (${problem}); trying again in ${wait / 1000} s.`);
      this.connEl.textContent = "waiting for the server…";
      await new Promise((resolve) => {
        this.retryTimer = setTimeout(resolve, wait);
      });
    }
    if (this.closed) return;
    this.retryMs = 1000;
    this.errorEl.hidden = true;
    this.errorEl.textContent = "";
    this.applySnapshot(job);
    for (const event of loadCache(this.jobId)) this.apply(event.seq, event.type, event.data);
    if (TERMINAL.has(job.status) && this.lastSeq >= job.last_seq) {
      this.finish();
      return;
    }
    this.streaming = true;
    this.connect();
  }

  applySnapshot(job) {
    this.templateEl.textContent = job.template;
    this.stepNames = job.steps.map((s) => s.name);
    this.filesEl.replaceChildren(
      ...job.files.map((f, i) =>
        el(
          "li",
          { dataset: { index: i, received: f.received ? "yes" : "no" } },
          el("span", { class: "file-name", text: f.name }),
          " ",
          el("span", { class: "muted", text: formatBytes(f.size) }),
          " ",
          el("span", { class: "file-state", text: f.received ? "received" : "waiting" }),
        ),
      ),
    );
    this.stepsEl.replaceChildren(
      ...job.steps.map((s, i) => {
        const bar = el("progress", {
          max: 100,
          value: 0,
          "aria-label": `Step ${i + 1} (${s.name}) progress`,
        });
        return el(
          "li",
          { class: "step", dataset: { step: i, status: "pending" } },
          el("span", { class: "step-name", text: s.name }),
          " ",
          el("span", { class: "step-status", text: "pending" }),
          bar,
          el("span", { class: "step-detail muted" }),
        );
      }),
    );
    job.steps.forEach((s, i) => this.setStep(i, s.status, s.progress));
    this.setStatus(job.status);
    if (job.error) this.showError(job.error);
    if (job.outputs && job.outputs.length) this.showOutputs(job.outputs);
  }

  setStatus(status, text) {
    if (this.status && STATUS_RANK[status] !== undefined) {
      if (STATUS_RANK[status] < STATUS_RANK[this.status]) return; // status only moves forward
    }
    this.status = status;
    this.statusEl.dataset.status = status;
    this.statusEl.textContent = text || STATUS_TEXT[status] || status;
  }

  setStep(index, status, progress) {
    const li = this.stepsEl.children[index];
    if (!li) return;
    const current = li.dataset.status;
    if (status && STEP_RANK[status] !== undefined && STEP_RANK[status] >= STEP_RANK[current]) {
      li.dataset.status = status;
      li.querySelector(".step-status").textContent = status;
    }
    const bar = li.querySelector("progress");
    const detail = li.querySelector(".step-detail");
    const p = progress || {};
    if (li.dataset.status === "completed") {
      bar.value = 100;
    } else if (p.bytes_total > 0) {
      bar.value = Math.min(100, Math.floor((100 * p.bytes_done) / p.bytes_total));
    } else if (li.dataset.status === "running") {
      bar.removeAttribute("value"); // indeterminate until the first progress figures
    }
    if (li.dataset.status !== "running" && !bar.hasAttribute("value")) {
      bar.value = 0; // a step that ended without figures: no endless animation
    }
    if (p.bytes_total !== undefined) {
      detail.textContent = `${formatBytes(p.bytes_done)} of ${formatBytes(p.bytes_total)}${
        p.files_done !== undefined ? `, ${p.files_done} file(s) done` : ""
      }`;
    }
  }

  /**
   * step.started of `attempt`: a later attempt than the step's (0 for a step known only
   * from the job's snapshot) starts it over, and the later steps it ran before are
   * pending again (steps run in order), as in the job record; within one attempt a
   * step's status only moves on.
   */
  startStep(index, attempt) {
    const steps = [...this.stepsEl.children];
    const li = steps[index];
    if (!li) return;
    if (attempt > Number(li.dataset.attempt || 0)) {
      steps.forEach((other, i) => {
        if (i === index || (i > index && Number(other.dataset.attempt || 0) < attempt)) {
          other.dataset.status = "pending";
          other.querySelector(".step-status").textContent = "pending";
          other.querySelector(".step-detail").textContent = "";
          other.querySelector("progress").value = 0;
        }
      });
      li.dataset.attempt = String(attempt);
    }
    this.setStep(index, "running", {});
  }

  /**
   * Whether a step event comes from an attempt older than the newest one seen (a worker
   * that lost its message and kept running, maybe into the next steps).
   */
  stale(data) {
    const attempt = Number(data.attempt);
    if (!Number.isInteger(attempt)) return false;
    const attempts = [...this.stepsEl.children].map((li) => Number(li.dataset.attempt || 0));
    return attempt < Math.max(0, ...attempts);
  }

  /** The job ended while steps ran: they end `status` (failed, stopped), and so does `named`. */
  endSteps(status, named) {
    [...this.stepsEl.children].forEach((li, i) => {
      if (i === named || li.dataset.status === "running") this.setStep(i, status, {});
    });
  }

  showError(message) {
    this.errorEl.hidden = false;
    this.errorEl.textContent = message;
  }

  showOutputs(outputs) {
    this.outputsShown = true;
    this.outputsNote.hidden = true;
    this.outputsEl.replaceChildren(
      ...outputs.map((o) =>
        el(
          "li",
          {},
          o.url
            ? el("a", { href: o.url, download: o.name, class: "download", text: o.name })
            : el("span", { text: o.name }),
          " ",
          el("span", { class: "muted", text: formatBytes(o.size) }),
        ),
      ),
    );
  }

  /**
   * After job.completed: the outputs with their download links. A server that does not
   * answer or answers 5xx is asked again (1 s, 2 s, 4 s…, five times), then the page says so.
   */
  async refreshOutputs() {
    let wait = 1000;
    for (let attempt = 1; ; attempt += 1) {
      let response = null;
      let problem = "";
      try {
        response = await api(`/api/jobs/${encodeURIComponent(this.jobId)}`);
        if (response.ok) {
          const job = await response.json();
          if (job.outputs && job.outputs.length) this.showOutputs(job.outputs);
          else {
            this.outputsNote.hidden = false;
            this.outputsNote.textContent = "This job has no outputs.";
          }
          return;
        }
        problem = await errorMessage(response);
      } catch (err) {
        problem = `the server did not answer: ${err}`;
      }
      if ((response && !response.ok && !retryable(response.status)) || attempt >= 5) {
        this.showError(`The outputs could not be loaded (${problem}). Reload the page to try again.`);
        this.outputsNote.hidden = false;
        this.outputsNote.textContent = "The outputs could not be loaded: reload the page.";
        return;
      }
      this.outputsNote.hidden = false;
      this.outputsNote.textContent = `Loading the outputs… (${problem}; trying again in ${
        wait / 1000
      } s)`;
      await new Promise((resolve) => setTimeout(resolve, wait));
      wait = Math.min(wait * 2, MAX_RETRY_MS);
    }
  }

  /** Apply one event (seq > last applied; the caller checks) to the view and the log. */
  apply(seq, type, data) {
    this.lastSeq = seq;
    this.events.push({ seq, type, data });
    this.eventsEl.append(
      el(
        "li",
        { dataset: { seq, type } },
        el("span", { class: "seq", text: `#${seq}` }),
        " ",
        el("span", { class: "type", text: type }),
        " ",
        el("span", { class: "desc", text: describe(type, data, this.stepNames) }),
      ),
    );
    const status = STATUS_OF_EVENT.get(type);
    if (status) this.setStatus(status);
    switch (type) {
      case "file.received": {
        const li = this.filesEl.children[data.index];
        if (li) {
          li.dataset.received = "yes";
          li.querySelector(".file-state").textContent = "received";
        }
        break;
      }
      case "step.started":
        if (!this.stale(data)) this.startStep(data.step, Number(data.attempt) || 1);
        break;
      case "step.progress":
        if (!this.stale(data)) this.setStep(data.step, "running", data);
        break;
      case "step.completed":
        if (!this.stale(data)) this.setStep(data.step, "completed", data);
        break;
      case "job.failed":
        this.showError(data.error || "the job failed");
        this.endSteps("failed", data.step);
        break;
      case "job.expired":
        this.showError(data.error || "the job expired");
        this.endSteps("stopped");
        break;
      default:
        break;
    }
  }

  onEvent(message) {
    const seq = Number(message.lastEventId);
    if (!Number.isInteger(seq) || seq <= this.lastSeq) return; // a duplicate: already shown
    if (seq !== this.lastSeq + 1) {
      // A gap should not happen (the server replays in order); resume from what we have.
      this.reconnect(0);
      return;
    }
    let data = {};
    try {
      data = JSON.parse(message.data);
    } catch {
      data = { raw: message.data };
    }
    this.apply(seq, message.type, data);
    this.retryMs = 1000;
    this.scheduleSave();
    if (TERMINAL_EVENTS.has(message.type)) {
      this.finish();
      if (message.type === "job.completed") this.refreshOutputs();
    }
  }

  connect() {
    if (this.closed) return;
    if (this.source) this.source.close();
    this.source = null;
    if (document.hidden) {
      this.pause();
      return;
    }
    this.connEl.textContent = "connecting…";
    const source = new EventSource(eventsUrl(this.jobId, this.lastSeq));
    this.source = source;
    source.onopen = () => {
      this.connEl.textContent = "live";
    };
    for (const type of EVENT_TYPES) source.addEventListener(type, (m) => this.onEvent(m));
    source.onerror = () => {
      if (this.closed || this.source !== source) return;
      if (source.readyState === EventSource.CONNECTING) {
        this.connEl.textContent = "reconnecting…"; // the browser retries with Last-Event-ID
        return;
      }
      // The browser gave up (an error status, 204, or a refused connection): check the
      // job (this also asks for a token after a 401) and reconnect from the last event.
      this.reconnect(this.retryMs);
      this.retryMs = Math.min(this.retryMs * 2, MAX_RETRY_MS);
    };
  }

  reconnect(delayMs) {
    if (this.source) this.source.close();
    this.source = null;
    if (this.closed) return;
    this.connEl.textContent = "reconnecting…";
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(async () => {
      try {
        const response = await api(`/api/jobs/${encodeURIComponent(this.jobId)}`);
        if (this.closed || this.paused) return;
        if (response.status === 404) {
          this.gone(await errorMessage(response));
          return;
        }
        if (response.ok) {
          const job = await response.json();
          if (TERMINAL.has(job.status) && this.lastSeq >= job.last_seq) {
            this.finish();
            return;
          }
        }
      } catch {
        // the server is away: try again later
      }
      this.connect();
    }, delayMs);
  }

  finish() {
    this.stop();
    this.connEl.textContent = "ended (the job is finished)";
  }

  /** The job is gone (a 404 while reconnecting: removed after its retention): stop for good. */
  gone(message) {
    this.stop();
    this.connEl.textContent = "ended (this job no longer exists)";
    this.showError(`This job no longer exists (${message}).`);
  }

  /** The tab is hidden: close the stream (it holds one of the host's few connections). */
  pause() {
    if (this.source) this.source.close();
    this.source = null;
    clearTimeout(this.retryTimer);
    this.paused = true;
    this.connEl.textContent = "paused while this tab is hidden";
  }

  visibilityChanged() {
    if (this.closed || !this.streaming) return; // start() connects (or pauses) itself
    if (document.hidden) this.pause();
    else if (this.paused) {
      this.paused = false;
      this.reconnect(0); // checks the job, then resumes after the last event shown
    }
  }

  /** No more stream, timers nor listeners; the history is saved. */
  stop() {
    this.closed = true;
    if (this.source) this.source.close();
    this.source = null;
    clearTimeout(this.retryTimer);
    document.removeEventListener("visibilitychange", this.onVisibility);
    this.flush();
  }

  scheduleSave() {
    if (this.saveTimer) return;
    this.saveTimer = setTimeout(() => this.flush(), 300);
  }

  flush() {
    clearTimeout(this.saveTimer);
    this.saveTimer = null;
    saveCache(this.jobId, this.events);
  }

  close() {
    this.stop();
    window.removeEventListener("pagehide", this.onPageHide);
  }
}

/** A status worth asking again for: the server is busy, restarting or behind a proxy's 5xx. */
function retryable(status) {
  return status >= 500 || status === 429 || status === 408;
}
