#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
from __future__ import annotations

DOCUMENTATION = r"""
---
module: validate_inventory
short_description: Check the inventory's groups and llmserve settings before any host changes
version_added: 0.1.0
description:
  - Runs on the controller and contacts no host. Reads each host's variables as its tasks would see them (the
    collection's role defaults, overridden by the inventory and C(-e)).
  - Checks that C(ray_head) has exactly one host inside C(llmserve_cluster), that no machine is listed twice and no
    C(VLLM_HOST_IP) is forced equal on several hosts, that SSH keys exist, and that the C(llmserve_*) settings are
    valid (backend, model source, memory fraction, parallel sizes, model path, served model name, API key, ports and
    their clashes with each other and with Ray's, C(llmserve_cluster_network), C(llmserve_node_devices)).
  - Refuses version pins and other cluster-wide settings that differ between hosts.
  - For a C(controller_dir) model, reads its C(config.json) and refuses a C(tensor_parallel_size) vLLM would refuse
    for it, a C(pipeline_parallel_size) above its layer count and a C(max_model_len) above its maximum.
  - Refuses C(--trust-remote-code) in C(vllm_serve_extra_args) for a hub model whose revision is not a 40-hex
    commit SHA, unless C(llmserve_trust_remote_code_unpinned_ok) is true; warns when a hub revision is not a commit.
  - Every problem names the variable and the host, and says how to fix it. All problems are reported at once.
  - This is an action plugin; this file documents it.
author: llmserve.cluster contributors (@llmserve)
attributes:
  check_mode:
    support: full
    description: Only reads the inventory.
  diff_mode:
    support: none
    description: Changes nothing.
options:
  hosts:
    description: Hosts to check. Defaults to the play's active hosts.
    type: list
    elements: str
"""

EXAMPLES = r"""
- name: Validate the inventory before any host changes
  llmserve.cluster.validate_inventory:
  run_once: true
"""

RETURN = r"""
errors:
  description: Problems that stop the play.
  returned: always
  type: list
  elements: str
warnings:
  description: Problems worth knowing that do not stop the play.
  returned: always
  type: list
  elements: str
"""
