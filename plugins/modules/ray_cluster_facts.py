#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
from __future__ import annotations

DOCUMENTATION = r"""
---
module: ray_cluster_facts
short_description: Ask a running Ray cluster which nodes are alive and compare them with the inventory
version_added: 0.1.0
description:
  - Connects to the Ray GCS as a driver with the runtime venv's interpreter and reads C(ray.nodes()).
  - Returns the alive nodes by address with their CPUs and GPUs, and a message naming the expected
    nodes that are missing.
author: llmserve.cluster contributors (@llmserve)
attributes:
  check_mode:
    support: full
    description: Only reads.
  diff_mode:
    support: none
    description: Changes nothing.
options:
  venv:
    description: The runtime venv that has Ray.
    type: path
    required: true
  address:
    description: The head's GCS address, C(host:port).
    type: str
    required: true
  auth_token_path:
    description: The Ray token file; empty when token authentication is off.
    type: path
    default: ""
  expected_nodes:
    description: Inventory names mapped to the addresses Ray should list.
    type: dict
    default: {}
  expected_gpus:
    description: GPUs the cluster must advertise in total; 0 skips the check.
    type: int
    default: 0
"""

EXAMPLES = r"""
- name: Ask Ray for its nodes
  llmserve.cluster.ray_cluster_facts:
    venv: /opt/llmserve/venv
    address: 10.0.0.11:6379
    auth_token_path: /etc/llmserve/ray/token
    expected_nodes: {node1: 10.0.0.11, node2: 10.0.0.12}
"""

RETURN = r"""
ray_cluster:
  description: Alive nodes by address with their resources, dead addresses and totals.
  returned: success
  type: dict
  sample: {alive: {"10.0.0.11": {CPU: 2.0, GPU: 8.0}}, dead: [], gpus: 8.0, cpus: 2.0}
missing:
  description: Expected inventory names that Ray does not list as alive.
  returned: success
  type: list
  elements: str
message:
  description: Empty when the cluster is complete, else what is missing.
  returned: success
  type: str
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.llmserve.cluster.plugins.module_utils._ray_cluster import (
    RAY_NODES_SCRIPT,
    missing_nodes,
    readiness_message,
    summarize_nodes,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            venv=dict(type="path", required=True),
            address=dict(type="str", required=True),
            auth_token_path=dict(type="path", default=""),
            expected_nodes=dict(type="dict", default={}),
            expected_gpus=dict(type="int", default=0),
        ),
        supports_check_mode=True,
    )
    params = module.params
    environment = {"RAY_AUTH_MODE": "disabled"}
    if params["auth_token_path"]:
        environment = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": params["auth_token_path"]}
    python = os.path.join(params["venv"], "bin", "python")
    rc, out, err = module.run_command([python, "-c", RAY_NODES_SCRIPT, params["address"]], environ_update=environment)
    if rc != 0:
        module.fail_json(msg="Could not reach Ray at {}: {}".format(params["address"], err.strip()[-2000:]))
    summary = summarize_nodes(json.loads(out.strip().splitlines()[-1]))
    module.exit_json(
        changed=False,
        ray_cluster=summary,
        missing=missing_nodes(summary, params["expected_nodes"]),
        message=readiness_message(summary, params["expected_nodes"], params["expected_gpus"]),
    )


if __name__ == "__main__":
    main()
