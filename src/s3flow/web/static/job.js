// The job page (/jobs/{job_id}): the job view for the id in the address.

import { mountJobView } from "./jobview.js";

const parts = location.pathname.split("/").filter(Boolean); // ["jobs", "<id>"]
const jobId = decodeURIComponent(parts[1] || "");
document.title = `Job ${jobId} · s3flow`;
mountJobView(document.getElementById("job-slot"), jobId, { level: 1 });
