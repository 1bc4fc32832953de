#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
from __future__ import annotations

DOCUMENTATION = r"""
---
module: cluster_status
short_description: Turn what every node answered into one status report, its problems, and a placement picture
version_added: 0.1.0
description:
  - Runs on the controller (delegated to C(localhost), with C(run_once)) after each node reported its serving units,
    its GPUs and its C(/etc/llmserve/plan.json); see C(playbooks/status.yml).
  - Works out the plan in effect (the nodes' plan files must agree), which units each node must run for the
    backend, and lists every problem it sees, among them a unit that is not active, an unreachable node, Ray
    missing a node, and an endpoint that does not answer a one-token completion.
  - Renders a text report (boxes for nodes, devices with their pipeline stage and tensor-parallel rank, Ray,
    the endpoint) and, with O(html_path), a self-contained HTML page of the placement.
author: llmserve.cluster contributors (@llmserve)
attributes:
  check_mode:
    support: full
    description: Reports the same; the HTML page is not written in check mode.
  diff_mode:
    support: none
    description: No diff is shown.
options:
  backend:
    description: The deployment's backend (C(llmserve_backend)).
    type: str
    required: true
    choices: [native, ray, llama_cpp]
  head:
    description: The head node (the one host of the C(ray_head) group), rank 0 when no plan is known.
    type: str
    required: true
  nodes:
    description:
      - Per inventory host, what it answered, with keys C(reachable) (bool), C(address), C(error),
        C(gpu) (the C(llmserve_gpu) fact), C(devices) (C(llmserve_node_devices)), C(units) (the results of
        M(ansible.builtin.systemd_service) looped over the unit names, each with C(item) and C(status)) and
        C(plan) (the decoded C(/etc/llmserve/plan.json), null when absent).
      - C(reboot_pending) is the decoded record of a reboot the node's new NVIDIA driver waits for (written by
        C(llmserve.cluster.nvidia_driver) at C(llmserve_reboot_pending_path)), null when none. The report shows it per
        node ("reboot pending - driver X installed, Y loaded") as a note, not a problem, because the node still serves.
    type: dict
    required: true
  endpoint:
    description:
      - The endpoint's answers, with keys C(node), C(url), C(health_status), C(models_status), C(models)
        (served model ids) and C(completion) (the result of M(llmserve.cluster.completion_probe)).
    type: dict
    default: {}
  ray:
    description: The result of M(llmserve.cluster.ray_cluster_facts) on the head; used with the C(ray) backend.
    type: dict
    default: {}
  served_model_name:
    description: The model name clients use; a problem when C(/v1/models) does not list it.
    type: str
    default: ""
  group_endpoints:
    description:
      - With data-parallel replicas on several nodes, every serving group's first node mapped to its endpoint's
        answers (as O(endpoint); V({}) when it was not probed), in group order. Each group that does not answer is a
        problem, and the report lists every group's endpoint.
    type: dict
    default: {}
  html_path:
    description: Where to write the HTML placement page on the controller; nothing is written when unset.
    type: path
"""

EXAMPLES = r"""
- name: Build the report on the controller
  llmserve.cluster.cluster_status:
    backend: native
    head: node1
    nodes: "{{ dict(ansible_play_hosts_all | zip(ansible_play_hosts_all | map('extract', hostvars, 'node_status'))) }}"
    endpoint: "{{ endpoint_status }}"
    served_model_name: tiny-llama
    html_path: /tmp/status.html
  delegate_to: localhost
  run_once: true
  register: status

- name: Print it
  ansible.builtin.debug:
    msg: "{{ status.report }}"
  run_once: true
"""

RETURN = r"""
healthy:
  description: Whether no problem was found.
  returned: always
  type: bool
problems:
  description: Every problem, each naming the node or unit and what to do.
  returned: always
  type: list
  elements: str
warnings_found:
  description: Things worth knowing that are not problems (for example an unknown plan).
  returned: always
  type: list
  elements: str
report:
  description: >-
    The text report for the whole cluster (nodes, GPUs, Ray, endpoints, plan, problems), as the play prints it.
  returned: always
  type: str
plan:
  description: The plan in effect (as C(llmserve.cluster.parallel_plan) returned it), null when unknown.
  returned: always
  type: dict
placement:
  description: Per plan node in rank order, its node rank and per GPU the global rank, DP replica, PP stage and TP rank.
  returned: always
  type: list
  elements: dict
  sample: [{name: node1, node_rank: 0, gpus: [{index: 0, rank: 0, replica: 0, stage: 0, tensor_parallel_rank: 0,
            first_layer: 0, last_layer: 3}]}]
groups:
  description: Per serving group (with O(group_endpoints) given) its C(index), C(node), C(url), C(health_status),
    C(ok) (a one-token completion came back), C(seconds) and C(error).
  returned: always
  type: list
  elements: dict
html_path:
  description: The HTML page written, null when none.
  returned: always
  type: str
"""

import os
import tempfile

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.llmserve.cluster.plugins.module_utils._placement_view import placement, render_html
from ansible_collections.llmserve.cluster.plugins.module_utils._status_report import cluster_status, render_status


def write_if_changed(path, content):
    """Write CONTENT to PATH atomically; False when the file already holds it."""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as current:
            if current.read() == content:
                return False
    handle, temporary = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".tmp")
    with os.fdopen(handle, "w", encoding="utf-8") as output:
        output.write(content)
    os.chmod(temporary, 0o644)
    os.replace(temporary, path)
    return True


def main():
    module = AnsibleModule(
        argument_spec=dict(
            backend=dict(type="str", required=True, choices=["native", "ray", "llama_cpp"]),
            head=dict(type="str", required=True),
            nodes=dict(type="dict", required=True),
            endpoint=dict(type="dict", default={}),
            ray=dict(type="dict", default={}),
            served_model_name=dict(type="str", default=""),
            group_endpoints=dict(type="dict", default={}),
            html_path=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    status = cluster_status(
        params["backend"],
        params["head"],
        params["nodes"],
        params["endpoint"],
        params["ray"],
        params["served_model_name"],
        params["group_endpoints"],
    )
    changed = False
    if params["html_path"]:
        page = render_html(
            status["plan"],
            [
                {
                    "name": row["name"],
                    "address": row.get("address"),
                    "reachable": row["reachable"],
                    "devices": row["devices"],
                    "units": {state["unit"]: state["state"] for state in row["units"] if state["present"]},
                }
                for row in status["nodes"]
            ],
            endpoint={
                "url": params["endpoint"].get("url"),
                "health": params["endpoint"].get("health_status"),
                "completion": (params["endpoint"].get("completion") or {}).get("ok"),
                "seconds": (params["endpoint"].get("completion") or {}).get("seconds"),
            },
            problems=status["problems"],
        )
        if not module.check_mode:
            changed = write_if_changed(params["html_path"], page)
    module.exit_json(
        changed=changed,
        healthy=status["healthy"],
        problems=status["problems"],
        warnings_found=status["warnings"],
        report=render_status(status),
        plan=status["plan"],
        placement=placement(status["plan"]) if status["plan"] else [],
        groups=status["groups"],
        html_path=params["html_path"],
    )


if __name__ == "__main__":
    main()
