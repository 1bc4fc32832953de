#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
from __future__ import annotations

DOCUMENTATION = r"""
---
module: serving_rank_watch
short_description: Watch one rank of a serving group that was just started, for up to a round of the readiness wait
version_added: 0.1.0
description:
  - Runs on every node of a serving group right after its units started. For up to O(wait) seconds it reads the
    node's unit (C(systemctl show)) and the log of its current start, and stops early when the rank failed, that
    is when the unit failed or stopped, systemd restarted it, or its log shows a start-up error vLLM does not
    recover from.
  - With O(url), it also asks for a one-token completion every O(interval) seconds and stops when one comes back.
    Give O(url) on the group's rank 0 only.
  - The playbook runs it in rounds and judges the whole group after each (filter
    R(llmserve.cluster.serving_group_readiness,ansible_collections.llmserve.cluster.serving_group_readiness_filter)),
    so the wait ends within a round when any rank fails, not only rank 0.
author: llmserve.cluster contributors (@llmserve)
attributes:
  check_mode:
    support: full
    description: Reads and asks only.
  diff_mode:
    support: none
    description: Changes nothing.
options:
  host:
    description: This node's inventory name; returned as is.
    type: str
    required: true
  unit:
    description: The systemd unit of this rank (for example C(vllm.service)).
    type: str
    required: true
  wait:
    description: Seconds to watch at most in this call.
    type: float
    default: 30
  interval:
    description: Seconds between two looks (and two completions).
    type: float
    default: 10
  url:
    description: Base URL of the group's API server, without C(/v1); only on rank 0.
    type: str
  model:
    description: The served model name the completion asks for.
    type: str
  api_key:
    description: Bearer token for C(/v1) routes.
    type: str
  request_timeout:
    description: Seconds one completion may take.
    type: float
    default: 10
  journal_lines:
    description: How many of the current start's log lines to read for start-up errors, and to return.
    type: int
    default: 200
"""

EXAMPLES = r"""
- name: Watch this rank for a round; rank 0 also asks for a completion
  llmserve.cluster.serving_rank_watch:
    host: "{{ inventory_hostname }}"
    unit: vllm.service
    wait: 30
    url: "{{ 'http://10.0.0.11:8000' if rank == 0 else omit }}"
    model: tiny-llama
    api_key: "{{ api_key }}"
  register: watch
  no_log: true
"""

RETURN = r"""
host:
  description: O(host), so that the judge of the group can tell the reports apart.
  returned: always
  type: str
state:
  description: C(starting) or C(failed).
  returned: always
  type: str
reason:
  description: Why the rank failed; null while it is starting.
  returned: always
  type: str
answered:
  description: Whether a completion came back (only with O(url)).
  returned: always
  type: bool
error:
  description: Why the last completion did not come back; null when it did or none was asked.
  returned: always
  type: str
seconds:
  description: How long this call watched.
  returned: always
  type: float
unit_properties:
  description: The unit's C(systemctl show) properties at the last look.
  returned: always
  type: dict
journal:
  description: The last log lines of the unit's current start (at most O(journal_lines)), when the rank failed.
  returned: always
  type: list
  elements: str
"""

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.llmserve.cluster.plugins.module_utils._endpoint_probe import send_completion
from ansible_collections.llmserve.cluster.plugins.module_utils._serving_ready import (
    WATCH_PROPERTIES,
    parse_show,
    rank_state,
)


def read_unit(module, unit):
    systemctl = module.get_bin_path("systemctl", required=True)
    rc, out, err = module.run_command([systemctl, "show", "--property=" + ",".join(WATCH_PROPERTIES), "--", unit])
    if rc != 0:
        module.fail_json(msg=f"systemctl show {unit} failed: {err.strip()}")
    return parse_show(out)


def read_log(module, unit, invocation, lines):
    """The log of the unit's current start (its invocation), or its last lines when systemd gave no invocation."""
    journalctl = module.get_bin_path("journalctl", required=True)
    match = [f"_SYSTEMD_INVOCATION_ID={invocation}"] if invocation else ["-u", unit]
    _rc, out, _err = module.run_command([journalctl, *match, "-n", str(lines), "--no-pager", "-o", "cat"])
    return out.splitlines()


def main():
    module = AnsibleModule(
        argument_spec=dict(
            host=dict(type="str", required=True),
            unit=dict(type="str", required=True),
            wait=dict(type="float", default=30),
            interval=dict(type="float", default=10),
            url=dict(type="str"),
            model=dict(type="str"),
            api_key=dict(type="str", no_log=True),
            request_timeout=dict(type="float", default=10),
            journal_lines=dict(type="int", default=200),
        ),
        required_by={"url": ["model"]},
        supports_check_mode=True,
    )
    params = module.params
    started = time.monotonic()
    answered, error = False, None
    while True:
        properties = read_unit(module, params["unit"])
        log = read_log(module, params["unit"], properties.get("InvocationID"), params["journal_lines"])
        state = rank_state(properties, log)
        if state["state"] == "starting" and params["url"]:
            outcome = send_completion(
                params["url"], params["model"], params["api_key"], timeout=params["request_timeout"]
            )
            answered, error = bool(outcome["ok"]), outcome["error"]
        elapsed = time.monotonic() - started
        if answered or state["state"] == "failed" or elapsed + params["interval"] > params["wait"]:
            break
        time.sleep(params["interval"])
    module.exit_json(
        changed=False,
        host=params["host"],
        state=state["state"],
        reason=state["reason"],
        answered=answered,
        error=error,
        seconds=round(time.monotonic() - started, 3),
        unit_properties=properties,
        journal=log if state["state"] == "failed" else [],
    )


if __name__ == "__main__":
    main()
