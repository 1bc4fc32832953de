#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
from __future__ import annotations

DOCUMENTATION = r"""
---
module: completion_probe
short_description: Send one real completion to an OpenAI-compatible endpoint and report the state of its unit
version_added: 0.1.0
description:
  - POSTs C(/v1/completions) once with O(max_tokens) tokens and reports whether text came back, and how long it took.
  - C(/health) is not enough, since vLLM keeps answering it after its workers died (vllm#16259).
  - With O(unit), also reports that systemd unit's state, so a readiness loop can stop at once when the
    service has failed instead of waiting out its timeout, and shows the unit's last log lines.
  - Loop it with C(until) for readiness; each retry line is the progress shown while a model loads.
author: llmserve.cluster contributors (@llmserve)
attributes:
  check_mode:
    support: full
    description: Sends a request but changes nothing.
  diff_mode:
    support: none
    description: Changes nothing.
options:
  url:
    description: Base URL of the server, without C(/v1).
    type: str
    required: true
  model:
    description: >-
      The served model name the completion asks for (vLLM's C(--served-model-name), llama-server's C(--alias)).
    type: str
    required: true
  api_key:
    description: Bearer token for C(/v1) routes.
    type: str
  prompt:
    description: Prompt of the completion; any short text proves that the engine generates.
    type: str
    default: Hello
  max_tokens:
    description: >-
      Tokens to generate, greedily (temperature 0). One token already needs a forward pass through every rank.
    type: int
    default: 1
  timeout:
    description: Seconds to wait for the answer.
    type: float
    default: 60
  unit:
    description: A systemd unit whose state to report with the answer (for example C(vllm.service)).
    type: str
  journal_lines:
    description: How many of the unit's last log lines to return when the completion failed.
    type: int
    default: 30
"""

EXAMPLES = r"""
- name: Wait until vLLM answers a one-token completion
  llmserve.cluster.completion_probe:
    url: http://10.0.0.11:8000
    model: tiny-llama
    api_key: "{{ api_key }}"
    unit: vllm.service
  register: ready
  until: ready.ok or ready.unit_state == 'failed'
  retries: 180
  delay: 10
  no_log: true
"""

RETURN = r"""
ok:
  description: Whether a completion with text came back.
  returned: always
  type: bool
status:
  description: HTTP status, null when no answer came.
  returned: always
  type: int
seconds:
  description: Time the request took.
  returned: always
  type: float
text:
  description: The text the completion generated; null when it failed.
  returned: always
  type: str
error:
  description: Why it failed, null on success.
  returned: always
  type: str
unit_state:
  description: C(systemctl is-active) of O(unit) (active, activating, failed, inactive), null without O(unit).
  returned: always
  type: str
journal:
  description: The unit's last log lines when the completion failed.
  returned: when O(unit) is set and the completion failed
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.llmserve.cluster.plugins.module_utils._endpoint_probe import send_completion


def main():
    module = AnsibleModule(
        argument_spec=dict(
            url=dict(type="str", required=True),
            model=dict(type="str", required=True),
            api_key=dict(type="str", no_log=True),
            prompt=dict(type="str", default="Hello"),
            max_tokens=dict(type="int", default=1, no_log=False),
            timeout=dict(type="float", default=60),
            unit=dict(type="str"),
            journal_lines=dict(type="int", default=30),
        ),
        supports_check_mode=True,
    )
    params = module.params
    outcome = send_completion(
        params["url"], params["model"], params["api_key"], params["prompt"], params["max_tokens"], params["timeout"]
    )
    outcome["unit_state"] = None
    if params["unit"]:
        _unused, state, _unused = module.run_command(["systemctl", "is-active", params["unit"]])
        outcome["unit_state"] = state.strip() or None
        if not outcome["ok"]:
            _unused, journal, _unused = module.run_command(
                ["journalctl", "-u", params["unit"], "-n", str(params["journal_lines"]), "--no-pager", "-o", "cat"]
            )
            outcome["journal"] = journal.splitlines()
    module.exit_json(changed=False, **outcome)


if __name__ == "__main__":
    main()
