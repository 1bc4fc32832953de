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
  - Runs on the controller. Checks that C(ray_head) has exactly one host inside C(llmserve_cluster),
    that no machine is listed twice, that SSH keys exist, and that the C(llmserve_*) settings are valid
    (backend, memory fraction, parallel sizes, model path, API key, ports and their clashes with Ray's,
    C(trust_remote_code) without a pinned revision).
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
