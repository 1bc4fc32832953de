# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The Jobs API client (with the module's open_url sender) against a recorded Ray 2.60 session, replayed over HTTP."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ansible_collections.llmserve.cluster.plugins.module_utils._ray_jobs import (
    JOB_KEY,
    RayJobsClient,
    RayJobsError,
    is_terminal,
    job_summary,
    log_tail,
    new_output,
    progress_lines,
    read_token,
    unfinished_job,
)
from ansible_collections.llmserve.cluster.plugins.modules.ray_job import open_url_request

SESSION = json.loads(
    (Path(__file__).resolve().parents[2] / "fixtures" / "ray_jobs" / "ray-2.60-jobs-api.json").read_text()
)["calls"]
TOKEN = "3f" * 32


def recorded(method, path, status=None, index=0, prefix=False):
    """The INDEX-th recorded answer to METHOD PATH (with PREFIX, PATH may be the start of the recorded one)."""
    matches = [
        call
        for call in SESSION
        if call["method"] == method
        and (call["path"].startswith(path) if prefix else call["path"] == path)
        and (status is None or call["status"] == status)
    ]
    return matches[index]


class Replay(BaseHTTPRequestHandler):
    """Answers each request with the next recorded answer for its method and path; 401 without the token."""

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        self.server.requests.append(
            {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body}
        )
        if self.headers.get("Authorization") != "Bearer " + TOKEN:
            answer = recorded("GET", "/api/jobs/", 401 if "Authorization" not in self.headers else 403)
        else:
            queue = self.server.script.get((self.command, self.path)) or []
            answer = queue.pop(0) if len(queue) > 1 else queue[0]
        payload = answer["text"].encode()
        self.send_response(answer["status"])
        self.send_header("Content-Type", "application/json" if answer["text"][:1] in "[{" else "text/plain")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _answer

    def log_message(self, *arguments):
        pass


@pytest.fixture
def dashboard():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Replay)
    server.requests = []
    server.script = {}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def url(server):
    return f"http://127.0.0.1:{server.server_address[1]}"


def test_submit_sends_the_token_and_string_env_vars_and_returns_the_id(dashboard):
    submitted = recorded("POST", "/api/jobs/", 200)
    dashboard.script[("POST", "/api/jobs/")] = [submitted]
    client = RayJobsClient(url(dashboard), open_url_request, TOKEN)
    job = client.submit(
        submitted["request"]["entrypoint"],
        submitted["request"]["submission_id"],
        {"env_vars": {"VLLM_CPU_KVCACHE_SPACE": 1}},
        {JOB_KEY: "batch-capture"},
    )
    assert job == submitted["request"]["submission_id"]
    sent = dashboard.requests[0]
    assert sent["headers"]["Authorization"] == "Bearer " + TOKEN
    # Exactly the request that Ray 2.60 accepted in the recording.
    assert json.loads(sent["body"]) == submitted["request"]


def test_without_or_with_a_wrong_token_the_dashboard_refusal_names_the_token(dashboard):
    for token, status in (("", 401), ("deadbeef", 403)):
        with pytest.raises(RayJobsError) as error:
            RayJobsClient(url(dashboard), open_url_request, token).jobs()
        assert error.value.status == status
        assert "token" in str(error.value)


def test_a_reused_submission_id_is_an_error_with_rays_reason(dashboard):
    dashboard.script[("POST", "/api/jobs/")] = [recorded("POST", "/api/jobs/", 500)]
    with pytest.raises(RayJobsError, match="already exists") as error:
        RayJobsClient(url(dashboard), open_url_request, TOKEN).submit("true", "capture-ok-1795275334")
    assert error.value.status == 500


def test_details_logs_and_an_unknown_job(dashboard):
    ok = recorded("POST", "/api/jobs/", 200)["request"]["submission_id"]
    dashboard.script[("GET", f"/api/jobs/{ok}")] = [recorded("GET", f"/api/jobs/{ok}", index=-1)]
    dashboard.script[("GET", f"/api/jobs/{ok}/logs")] = [recorded("GET", f"/api/jobs/{ok}/logs")]
    dashboard.script[("GET", "/api/jobs/nope")] = [recorded("GET", "/api/jobs/nope")]
    client = RayJobsClient(url(dashboard), open_url_request, TOKEN)
    summary = job_summary(client.details(ok))
    assert summary["status"] == "SUCCEEDED" and summary["driver_exit_code"] == 0
    assert summary["metadata"] == {JOB_KEY: "batch-capture"}
    assert 0 < summary["duration_seconds"] < 60
    assert progress_lines(client.logs(ok), "[llmserve-batch]") == [
        "[llmserve-batch] 1/2 prompts done",
        "[llmserve-batch] 2/2 prompts done",
    ]
    assert client.details("nope") is None


def test_a_failed_job_reports_its_exit_code_and_its_log_tail(dashboard):
    failed = next(
        call for call in SESSION if call["path"].startswith("/api/jobs/capture-fail") and '"FAILED"' in call["text"]
    )
    details = json.loads(failed["text"])
    summary = job_summary(details)
    assert is_terminal(summary["status"]) and summary["driver_exit_code"] == 3
    assert "exit code 3" in summary["message"]
    logs = json.loads(recorded("GET", "/api/jobs/capture-fail", index=-1, prefix=True)["text"])["logs"]
    assert log_tail(logs, 1) == ["Traceback: boom"]


def test_stop_answers_stopped_and_the_job_ends_stopped(dashboard):
    stop = recorded("POST", "/api/jobs/capture-stop", prefix=True)
    dashboard.script[("POST", stop["path"])] = [stop]
    job = stop["path"].split("/")[3]
    assert RayJobsClient(url(dashboard), open_url_request, TOKEN).stop(job) is True
    assert json.loads(recorded("GET", f"/api/jobs/{job}", index=-1)["text"])["status"] == "STOPPED"


def test_a_running_job_with_the_same_key_is_found_again():
    listed = json.loads(recorded("GET", "/api/jobs/", 200)["text"])
    running = unfinished_job(listed, "batch-capture")
    assert running is not None and running["status"] == "RUNNING"
    assert unfinished_job(listed, "batch-other") is None
    finished = [dict(job, status="SUCCEEDED") for job in listed]
    assert unfinished_job(finished, "batch-capture") is None


def test_new_output_returns_complete_lines_once():
    logs = "line one\nline two\npartial"
    text, offset = new_output(logs, 0)
    assert text == "line one\nline two\n"
    text, offset = new_output(logs + " now whole\n", offset)
    assert text == "partial now whole\n"
    # A log that got shorter was restarted: read it from the start.
    assert new_output("fresh\n", offset) == ("fresh\n", 6)


def test_progress_bars_keep_only_their_last_state():
    text = "Running 0:   0%|  | 0/6\rRunning 0:  50%|##| 3/6\r[llmserve-batch] 12/24 prompts done\nnoise\n"
    assert progress_lines(text, "[llmserve-batch]") == ["[llmserve-batch] 12/24 prompts done"]
    assert progress_lines(text, "") == ["[llmserve-batch] 12/24 prompts done", "noise"]


def test_an_empty_token_file_is_refused(tmp_path):
    path = tmp_path / "token"
    path.write_text("\n")
    with pytest.raises(RayJobsError, match="empty"):
        read_token(str(path))
    path.write_text(TOKEN + "\n")
    assert read_token(str(path)) == TOKEN


def test_a_dashboard_that_is_not_there_says_so():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Replay)
    port = server.server_address[1]
    server.server_close()
    with pytest.raises(RayJobsError, match="Is Ray running"):
        open_url_request("GET", f"http://127.0.0.1:{port}/api/jobs/", {}, None, 5)
