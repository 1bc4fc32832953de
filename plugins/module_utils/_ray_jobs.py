# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A client for Ray's Jobs REST API (the dashboard, ``/api/jobs/``) with token authentication.

The dashboard listens on the head's localhost, so this runs on the head. With ``RAY_AUTH_MODE=token``
every request carries ``Authorization: Bearer <token>``; without it the dashboard answers 401.
Routes and shapes as in Ray 2.60's ``dashboard/modules/job/job_head.py``.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

# A job in one of these states will not change any more (ray.job_submission.JobStatus.is_terminal).
TERMINAL_STATUSES = ("SUCCEEDED", "FAILED", "STOPPED")
# Metadata key under which a job records what it is, so a re-run attaches instead of submitting twice.
JOB_KEY = "llmserve_job_key"

# request(method, url, headers, body, timeout) -> (HTTP status, response text); HTTP errors come back as their
# status and text, no answer at all raises RayJobsError (see unreachable()). The module sends with open_url.
Request = Callable[[str, str, Mapping[str, str], Optional[bytes], float], Tuple[int, str]]


class RayJobsError(RuntimeError):
    """The Jobs API refused or could not be reached; ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def unreachable(url: str, reason: object) -> RayJobsError:
    return RayJobsError(
        f"Cannot reach the Ray dashboard at {url}: {reason}. Is Ray running on this host (llmserve_backend=ray)?"
    )


def read_token(path: str) -> str:
    """The token file's content without surrounding whitespace; empty or unreadable is an error."""
    try:
        with open(path, encoding="utf-8") as handle:
            token = handle.read().strip()
    except OSError as error:
        raise RayJobsError(f"Cannot read the Ray auth token {path}: {error}") from error
    if not token:
        raise RayJobsError(f"The Ray auth token file {path} is empty.")
    return token


class RayJobsClient:
    """Submit, inspect, read the logs of and stop jobs through one dashboard."""

    def __init__(self, base_url: str, request: Request, token: str = "", timeout: float = 30) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.request = request
        self.timeout = timeout

    def _call(self, method: str, path: str, payload: Optional[Mapping[str, Any]] = None) -> Tuple[int, str]:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = "Bearer " + self.token
        body = None
        if payload is not None:
            headers["Content-Type"] = "application/json"
            body = json.dumps(payload).encode("utf-8")
        status, text = self.request(method, self.base_url + path, headers, body, self.timeout)
        if status in (401, 403):
            raise RayJobsError(
                f"The Ray dashboard refused the request ({status}): {text.strip()[:300]}. "
                "Check the token file and that the cluster runs with RAY_AUTH_MODE=token.",
                status,
            )
        return status, text

    def _json(self, method: str, path: str, payload: Optional[Mapping[str, Any]] = None) -> Any:
        status, text = self._call(method, path, payload)
        if status != 200:
            raise RayJobsError(f"{method} {path} answered {status}: {text.strip()[-2000:]}", status)
        return json.loads(text)

    def submit(
        self,
        entrypoint: str,
        submission_id: Optional[str] = None,
        runtime_env: Optional[Mapping[str, Any]] = None,
        metadata: Optional[Mapping[str, str]] = None,
    ) -> str:
        """Submit a job; returns its submission id."""
        payload: Dict[str, Any] = {"entrypoint": entrypoint}
        if submission_id:
            payload["submission_id"] = submission_id
        if runtime_env:
            payload["runtime_env"] = dict(runtime_env)
            if "env_vars" in runtime_env:
                # Ray refuses anything but strings there; YAML turns 1 into an integer.
                payload["runtime_env"]["env_vars"] = {
                    str(name): str(value) for name, value in (runtime_env["env_vars"] or {}).items()
                }
        if metadata:
            payload["metadata"] = {str(key): str(value) for key, value in metadata.items()}
        answer = self._json("POST", "/api/jobs/", payload)
        return str(answer["submission_id"])

    def details(self, submission_id: str) -> Optional[Dict[str, Any]]:
        """The job's details (status, message, times, ...), or None when Ray does not know it."""
        status, text = self._call("GET", f"/api/jobs/{submission_id}")
        if status == 404:
            return None
        if status != 200:
            raise RayJobsError(f"GET job {submission_id} answered {status}: {text.strip()[-2000:]}", status)
        return json.loads(text)

    def jobs(self) -> List[Dict[str, Any]]:
        return list(self._json("GET", "/api/jobs/"))

    def logs(self, submission_id: str) -> str:
        """Everything the job's entrypoint printed so far."""
        return str(self._json("GET", f"/api/jobs/{submission_id}/logs").get("logs") or "")

    def stop(self, submission_id: str) -> bool:
        return bool(self._json("POST", f"/api/jobs/{submission_id}/stop").get("stopped"))


def is_terminal(status: Optional[str]) -> bool:
    return status in TERMINAL_STATUSES


def unfinished_job(jobs: Sequence[Mapping[str, Any]], job_key: str) -> Optional[Dict[str, Any]]:
    """The newest submission job with this key that is still pending or running."""
    candidates = [
        dict(job)
        for job in jobs
        if job.get("type") == "SUBMISSION"
        and (job.get("metadata") or {}).get(JOB_KEY) == job_key
        and not is_terminal(job.get("status"))
    ]
    if not candidates:
        return None
    return max(candidates, key=lambda job: job.get("start_time") or 0)


def new_output(logs: str, offset: int) -> Tuple[str, int]:
    """Complete lines printed since OFFSET (characters), and the offset to ask from next time.

    A line still being written stays for the next call. A log shorter than OFFSET was restarted: read it whole.
    """
    if offset > len(logs):
        offset = 0
    fresh = logs[offset:]
    complete = fresh.rfind("\n") + 1
    return fresh[:complete], offset + complete


def progress_lines(text: str, marker: str) -> List[str]:
    """Lines that start with MARKER (all non-empty lines when MARKER is empty), without progress bars' redraws."""
    lines = []
    # split("\n"), not splitlines(): a carriage return redraws a progress bar, it does not end a line.
    for raw in text.split("\n"):
        line = raw.rsplit("\r", 1)[-1].rstrip()
        # At the start only: Ray's "Running entrypoint for job ..." line quotes the command, marker and all.
        if line and line.startswith(marker):
            lines.append(line)
    return lines


def log_tail(logs: str, lines: int) -> List[str]:
    """The last LINES non-empty lines of the log."""
    return [line for line in (raw.rsplit("\r", 1)[-1].rstrip() for raw in logs.split("\n")) if line][-lines:]


def job_summary(details: Mapping[str, Any]) -> Dict[str, Any]:
    """The fields a play needs from Ray's job details."""
    start, end = details.get("start_time"), details.get("end_time")
    return {
        "submission_id": details.get("submission_id"),
        "job_id": details.get("job_id"),
        "status": details.get("status"),
        "message": details.get("message") or "",
        "entrypoint": details.get("entrypoint"),
        "metadata": dict(details.get("metadata") or {}),
        "driver_exit_code": details.get("driver_exit_code"),
        # Ray reports milliseconds since the epoch.
        "duration_seconds": round((end - start) / 1000.0, 1) if start and end else None,
    }
