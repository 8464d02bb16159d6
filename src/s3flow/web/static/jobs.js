// The jobs page (/jobs): recent jobs, newest first, filtered by ?status=, each linking to
// its job view. The filter is a plain GET form, so the address can be bookmarked. A page
// holds ?limit= jobs (100 unless said); "Older jobs" follows the API's next_cursor.

import { api, el, errorMessage } from "./common.js";

const STATUSES = ["waiting_for_files", "queued", "running", "completed", "failed", "expired"];
const $ = (id) => document.getElementById(id);

function when(seconds) {
  if (!seconds) return "";
  return new Date(seconds * 1000).toLocaleString();
}

async function load() {
  const params = new URLSearchParams(location.search);
  const status = params.get("status") || "";
  const select = $("status");
  select.replaceChildren(
    el("option", { value: "", text: "All" }),
    ...STATUSES.map((s) => el("option", { value: s, text: s.replaceAll("_", " ") })),
  );
  select.value = STATUSES.includes(status) ? status : "";
  select.addEventListener("change", () => $("filter").requestSubmit());
  const query = new URLSearchParams({ limit: params.get("limit") || "100" });
  if (select.value) query.set("status", select.value);
  if (params.get("cursor")) query.set("cursor", params.get("cursor"));
  const response = await api(`/api/jobs?${query}`);
  const message = $("jobs-message");
  if (!response.ok) {
    message.textContent = await errorMessage(response);
    message.classList.add("error-text");
    return;
  }
  const { jobs, next_cursor: nextCursor } = await response.json();
  // This page's address with another cursor (none: the newest jobs).
  const pageHref = (cursor) => {
    const page = new URLSearchParams(query);
    if (cursor) page.set("cursor", cursor);
    else page.delete("cursor");
    if (!params.get("limit")) page.delete("limit");
    return page.toString() ? `/jobs?${page}` : "/jobs";
  };
  const older = $("jobs-older");
  older.hidden = !nextCursor;
  if (nextCursor) older.href = pageHref(nextCursor);
  const newest = $("jobs-newest");
  newest.hidden = !params.get("cursor");
  newest.href = pageHref(null);
  $("jobs-body").replaceChildren(
    ...jobs.map((job) =>
      el(
        "tr",
        { dataset: { jobId: job.job_id, status: job.status } },
        el(
          "td",
          {},
          el("a", { href: `/jobs/${encodeURIComponent(job.job_id)}` }, el("code", { text: job.job_id })),
        ),
        el("td", { text: job.template }),
        el(
          "td",
          {},
          el("span", { class: "status", dataset: { status: job.status }, text: job.status.replaceAll("_", " ") }),
        ),
        el("td", { text: `${job.files.filter((f) => f.received).length} of ${job.files.length}` }),
        el("td", { text: when(job.created_at) }),
      ),
    ),
  );
  $("jobs-table").hidden = jobs.length === 0;
  const which = select.value ? ` ${select.value.replaceAll("_", " ")}` : "";
  const past = params.get("cursor") ? " older than the previous page" : "";
  message.textContent = jobs.length
    ? `${jobs.length} job${jobs.length === 1 ? "" : "s"}${which}${past}, newest first.`
    : `No jobs${which}${past}.`;
}

load().catch((err) => {
  $("jobs-message").textContent = `The server did not answer: ${err}`;
});
