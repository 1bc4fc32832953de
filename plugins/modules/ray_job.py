#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
from __future__ import annotations

DOCUMENTATION = r"""
---
module: ray_job
short_description: Submit a job to a Ray cluster through the Jobs API and follow it to the end
version_added: 0.1.0
description:
  - Talks to the Ray dashboard's Jobs REST API (C(/api/jobs/)) on the host it runs on, with the cluster's
    auth token in an C(Authorization) bearer header.
  - With O(operation=submit) and O(wait=true), the action plugin submits the job, then asks for its status
    and new log lines every O(poll_interval) seconds, prints the lines that carry O(progress_marker) while
    the job runs, and fails with the job's log tail when it fails, is stopped or outlives O(timeout).
  - A job submitted with O(job_key) is found again while it is still pending or running, so re-running an
    interrupted play follows the job instead of starting a second one.
author: llmserve.cluster contributors (@llmserve)
attributes:
  check_mode:
    support: full
    description: In check mode nothing is submitted or stopped; O(operation=status) still reads.
  diff_mode:
    support: none
    description: No diff.
options:
  dashboard_url:
    description: The Ray dashboard, on the head's localhost by default.
    type: str
    default: http://127.0.0.1:8265
  auth_token_path:
    description: The Ray token file (C(RAY_AUTH_TOKEN_PATH)); empty when token authentication is off.
    type: path
    default: ""
  operation:
    description: Submit a job (and follow it with O(wait)), read one job's status and new logs, or stop it.
    type: str
    choices: [submit, status, stop]
    default: submit
  entrypoint:
    description: The shell command Ray runs on the head, for example C(python /path/job.py).
    type: str
  submission_id:
    description: The job's id; required for O(operation=status) and O(operation=stop). Ray picks one for a
      submission when it is left out.
    type: str
  job_key:
    description: What the job is (for example a hash of its inputs), stored in its metadata. A pending or
      running job with the same key is followed instead of submitting another.
    type: str
  runtime_env:
    description:
      - Ray runtime environment of the job, for example C(env_vars), the environment of the job and its actors.
      - Values under C(env_vars) are sent as strings.
    type: dict
    default: {}
  metadata:
    description: String metadata stored with the job.
    type: dict
    default: {}
  log_offset:
    description: With O(operation=status), return only the log text after this many characters.
    type: int
    default: 0
  log_tail_lines:
    description: Lines of the log returned as RV(log_tail).
    type: int
    default: 40
  wait:
    description: After submitting, follow the job until it ends.
    type: bool
    default: true
  timeout:
    description: Seconds to wait for the job to end.
    type: int
    default: 3600
  poll_interval:
    description: Seconds between two status reads while waiting.
    type: int
    default: 10
  progress_marker:
    description: While waiting, print the job's new log lines that start with this text; empty prints every line.
    type: str
    default: ""
  stop_on_timeout:
    description: Stop the job when O(timeout) passes, rather than leaving it running.
    type: bool
    default: true
notes:
  - The job's entrypoint runs on the head, with the raylet's C(PATH); put the runtime venv first there.
"""

EXAMPLES = r"""
- name: Run the batch job and show its progress
  llmserve.cluster.ray_job:
    entrypoint: python /var/lib/llmserve/batch/batch_job.py --config /var/lib/llmserve/batch/job.json
    auth_token_path: /etc/llmserve/ray/token
    job_key: "{{ batch_fingerprint }}"
    runtime_env:
      env_vars:
        VLLM_CPU_KVCACHE_SPACE: "1"
    progress_marker: "[llmserve-batch]"
    timeout: 7200
  delegate_to: "{{ groups['ray_head'][0] }}"
  run_once: true

- name: Read a job's status
  llmserve.cluster.ray_job:
    operation: status
    submission_id: llmserve-batch-0a1b2c3d4e5f-1767225600
    auth_token_path: /etc/llmserve/ray/token
"""

RETURN = r"""
job:
  description: The job as Ray reports it.
  returned: success
  type: dict
  sample:
    submission_id: llmserve-batch-0a1b2c3d4e5f-1767225600
    job_id: "02000000"
    status: SUCCEEDED
    message: Job finished successfully.
    entrypoint: python /var/lib/llmserve/batch/batch_job.py --config /var/lib/llmserve/batch/job.json
    metadata: {llmserve_job_key: 0a1b2c3d4e5f}
    driver_exit_code: 0
    duration_seconds: 131.4
attached:
  description: Whether a pending or running job with the same O(job_key) was followed instead of submitting.
  returned: operation is submit
  type: bool
logs:
  description: With O(operation=status), the log text after O(log_offset) (complete lines only).
  returned: operation is status
  type: str
log_offset:
  description: The offset to pass as O(log_offset) next time.
  returned: operation is status
  type: int
log_tail:
  description: The last O(log_tail_lines) lines of the job's log.
  returned: success
  type: list
  elements: str
progress:
  description: The progress lines printed while waiting.
  returned: operation is submit and wait is true
  type: list
  elements: str
"""

import time
from urllib.error import HTTPError

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.urls import open_url

from ansible_collections.llmserve.cluster.plugins.module_utils._ray_jobs import (
    JOB_KEY,
    RayJobsClient,
    RayJobsError,
    job_summary,
    log_tail,
    new_output,
    read_token,
    unfinished_job,
    unreachable,
)

ARGUMENT_SPEC = dict(
    dashboard_url=dict(type="str", default="http://127.0.0.1:8265"),
    auth_token_path=dict(type="path", default=""),
    operation=dict(type="str", choices=["submit", "status", "stop"], default="submit"),
    entrypoint=dict(type="str"),
    submission_id=dict(type="str"),
    job_key=dict(type="str", no_log=False),
    runtime_env=dict(type="dict", default={}),
    metadata=dict(type="dict", default={}),
    log_offset=dict(type="int", default=0),
    log_tail_lines=dict(type="int", default=40),
    wait=dict(type="bool", default=True),
    timeout=dict(type="int", default=3600),
    poll_interval=dict(type="int", default=10),
    progress_marker=dict(type="str", default=""),
    stop_on_timeout=dict(type="bool", default=True),
)
REQUIRED_IF = [
    ("operation", "submit", ("entrypoint",)),
    ("operation", "status", ("submission_id",)),
    ("operation", "stop", ("submission_id",)),
]


def open_url_request(method, url, headers, body, timeout):
    """One HTTP exchange with the dashboard: (status, text), HTTP errors included; no answer raises."""
    try:
        response = open_url(url, data=body, headers=dict(headers), method=method, timeout=timeout)
        return response.getcode(), response.read().decode("utf-8", "replace")
    except HTTPError as error:
        return error.code, error.read().decode("utf-8", "replace")
    except Exception as error:  # URLError, refused or reset connections, timeouts: the dashboard did not answer
        raise unreachable(url, getattr(error, "reason", error)) from error


def client_from_params(params) -> RayJobsClient:
    token = read_token(params["auth_token_path"]) if params["auth_token_path"] else ""
    return RayJobsClient(params["dashboard_url"], open_url_request, token)


def submit(client: RayJobsClient, params, check_mode: bool):
    """Follow an unfinished job with the same key, else submit a new one (not in check mode)."""
    if params["job_key"]:
        running = unfinished_job(client.jobs(), params["job_key"])
        if running:
            return dict(changed=True, attached=True, job=job_summary(running), log_tail=[])
    if check_mode:
        return dict(changed=True, attached=False, job={}, log_tail=[])
    metadata = dict(params["metadata"])
    submission_id = params["submission_id"]
    if params["job_key"]:
        metadata[JOB_KEY] = params["job_key"]
        # A new id per submission: Ray refuses an id it has seen, and a finished job may be run again.
        submission_id = submission_id or "llmserve-{}-{}".format(params["job_key"][:16], int(time.time()))
    submission_id = client.submit(params["entrypoint"], submission_id, params["runtime_env"], metadata)
    details = client.details(submission_id) or {"submission_id": submission_id, "status": "PENDING"}
    return dict(changed=True, attached=False, job=job_summary(details), log_tail=[])


def status(client: RayJobsClient, params):
    details = client.details(params["submission_id"])
    if details is None:
        raise RayJobsError("Ray knows no job {}.".format(params["submission_id"]), 404)
    logs = client.logs(params["submission_id"])
    text, offset = new_output(logs, params["log_offset"])
    return dict(
        changed=False,
        job=job_summary(details),
        logs=text,
        log_offset=offset,
        log_tail=log_tail(logs, params["log_tail_lines"]),
    )


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, required_if=REQUIRED_IF, supports_check_mode=True)
    params = module.params
    try:
        client = client_from_params(params)
        if params["operation"] == "submit":
            result = submit(client, params, module.check_mode)
        elif params["operation"] == "status":
            result = status(client, params)
        else:
            stopped = False if module.check_mode else client.stop(params["submission_id"])
            result = dict(
                changed=stopped or module.check_mode,
                job=job_summary(client.details(params["submission_id"]) or {}),
                log_tail=log_tail(client.logs(params["submission_id"]), params["log_tail_lines"]),
            )
    except RayJobsError as error:
        module.fail_json(msg=str(error), http_status=error.status)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
