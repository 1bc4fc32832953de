# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
from __future__ import annotations

import time

from ansible.plugins.action import ActionBase

from ansible_collections.llmserve.cluster.plugins.module_utils._ray_jobs import is_terminal, progress_lines
from ansible_collections.llmserve.cluster.plugins.modules.ray_job import ARGUMENT_SPEC, REQUIRED_IF

MODULE = "llmserve.cluster.ray_job"


class ActionModule(ActionBase):
    """Submit on the target host, then poll it there and print progress on the controller while the job runs.

    A module cannot print while it runs; this loop can, because each status read is a short module call.
    """

    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(ARGUMENT_SPEC)

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        _validation, params = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC, required_if=REQUIRED_IF)
        params = dict(params)
        if params["operation"] != "submit" or not params["wait"]:
            result.update(self._module(params, task_vars))
            return result

        submitted = self._module(params, task_vars)
        if submitted.get("failed") or self._task.check_mode:
            result.update(submitted)
            return result
        job = submitted["job"]
        self._show(
            "{} job {} ({})".format(
                "Following" if submitted["attached"] else "Submitted", job["submission_id"], job["status"]
            )
        )

        deadline = time.monotonic() + params["timeout"]
        offset = 0
        last_status = job["status"]
        progress = []
        while True:
            answer = self._module(
                dict(params, operation="status", submission_id=job["submission_id"], log_offset=offset), task_vars
            )
            if answer.get("failed"):
                result.update(answer)
                return result
            offset = answer["log_offset"]
            for line in progress_lines(answer["logs"], params["progress_marker"]):
                progress.append(line)
                self._show(line)
            job = answer["job"]
            if job["status"] != last_status:
                self._show("job {} is {}".format(job["submission_id"], job["status"]))
                last_status = job["status"]
            if is_terminal(job["status"]) or time.monotonic() >= deadline:
                break
            time.sleep(params["poll_interval"])

        result.update(
            changed=True, attached=submitted["attached"], job=job, progress=progress, log_tail=answer["log_tail"]
        )
        if job["status"] == "SUCCEEDED":
            return result
        if not is_terminal(job["status"]):
            if params["stop_on_timeout"]:
                self._module(dict(params, operation="stop", submission_id=job["submission_id"]), task_vars)
            result.update(
                failed=True,
                msg="Ray job {} did not finish within {} s{}. Last log lines:\n{}".format(
                    job["submission_id"],
                    params["timeout"],
                    " and was stopped" if params["stop_on_timeout"] else "",
                    "\n".join(answer["log_tail"]),
                ),
            )
            return result
        result.update(
            failed=True,
            msg="Ray job {} ended {}: {}\nLast log lines:\n{}".format(
                job["submission_id"], job["status"], job["message"], "\n".join(answer["log_tail"])
            ),
        )
        return result

    def _module(self, params, task_vars):
        return self._execute_module(module_name=MODULE, module_args=params, task_vars=task_vars)

    def _show(self, line):
        self._display.display(f"ray job | {line}")
