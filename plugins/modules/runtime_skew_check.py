#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
from __future__ import annotations

DOCUMENTATION = r"""
---
module: runtime_skew_check
short_description: Fail when Python, Ray, vLLM or torch versions differ across nodes
version_added: 0.1.0
description:
  - Runs on the controller and compares the C(llmserve_runtime) facts that
    M(llmserve.cluster.runtime_facts) set on each host of the play.
  - Ray refuses workers whose Ray or Python version differs from the head's; mixed vLLM or torch
    versions fail later and less clearly. The message names each version and the nodes that run it.
  - This is an action plugin; this file documents it.
author: llmserve.cluster contributors (@llmserve)
attributes:
  check_mode:
    support: full
    description: Only compares facts.
  diff_mode:
    support: none
    description: Changes nothing.
options:
  distributions:
    description: Names to compare, as reported by M(llmserve.cluster.runtime_facts).
    type: list
    elements: str
    default: [python, ray, vllm, torch]
  hosts:
    description: Hosts to compare. Defaults to the play's active hosts.
    type: list
    elements: str
"""

EXAMPLES = r"""
- name: Fail on version skew across nodes
  llmserve.cluster.runtime_skew_check:
  run_once: true
"""

RETURN = r"""
versions:
  description: Versions by host.
  returned: always
  type: dict
skew:
  description: One message per name whose version differs.
  returned: always
  type: list
  elements: str
"""
