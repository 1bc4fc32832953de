#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
from __future__ import annotations

DOCUMENTATION = r"""
---
module: plan_diff
short_description: Compare the parallel plan in effect with a new one, side by side
version_added: 0.1.0
author: llmserve.cluster contributors (@llmserve)
description:
  - Compares two plans made by M(llmserve.cluster.parallel_plan), the one vLLM runs with now and the one a
    re-run made, and renders them side by side with the differing fields marked.
  - Reports O(ignore:changed) only when a field vLLM is started with differs (the nodes in rank order, the
    parallel sizes, O(ignore:max_model_len), the command line or the environment), so a node that only adds a
    spare leaves serving alone.
  - Pure computation; runs anywhere, usually on the controller.
attributes:
  check_mode:
    support: full
    description: The module only computes; it behaves the same in check mode.
  diff_mode:
    support: none
    description: Nothing is changed, so there is nothing to diff.
options:
  previous:
    description:
      - The plan in effect, as the C(vllm_serve) role stores it in C(/etc/llmserve/plan.json).
      - Empty or omitted when nothing was deployed yet.
    type: dict
  current:
    description: The plan the run just made (the C(plan) that M(llmserve.cluster.parallel_plan) returns).
    type: dict
    required: true
"""

EXAMPLES = r"""
- name: Compare with the plan in effect
  llmserve.cluster.plan_diff:
    previous: "{{ (plan_file.content | b64decode | from_json) if plan_file.content is defined else {} }}"
    current: "{{ llmserve_plan }}"
  delegate_to: localhost
  register: plan_comparison

- name: Show both plans
  ansible.builtin.debug:
    msg: "{{ plan_comparison.table }}"
"""

RETURN = r"""
plan_changed:
  description: True when vLLM must restart for the new plan (always true when nothing was in effect).
  returned: always
  type: bool
first:
  description: True when no plan was in effect.
  returned: always
  type: bool
differences:
  description: The fields that differ, informative ones included.
  returned: always
  type: list
  elements: str
  sample: ["nodes (rank order)", "kv cache tokens"]
table:
  description: The two plans side by side, one row per field, differing rows marked with C(*).
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.llmserve.cluster.plugins.module_utils._plan_diff import compare_plans


def main():
    module = AnsibleModule(
        argument_spec=dict(previous=dict(type="dict"), current=dict(type="dict", required=True)),
        supports_check_mode=True,
    )
    comparison = compare_plans(module.params["previous"], module.params["current"])
    module.exit_json(
        changed=False,
        plan_changed=comparison["changed"],
        first=comparison["first"],
        differences=comparison["differences"],
        table=comparison["table"],
    )


if __name__ == "__main__":
    main()
