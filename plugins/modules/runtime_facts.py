#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
from __future__ import annotations

DOCUMENTATION = r"""
---
module: runtime_facts
short_description: Report the Python, Ray, vLLM and torch versions of a node's runtime venv
version_added: 0.1.0
description:
  - Runs the venv's interpreter and reads package metadata, without importing the packages.
  - Sets C(ansible_facts.llmserve_runtime), which M(llmserve.cluster.runtime_skew_check) compares across nodes.
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
    description: Path of the virtual environment on the node.
    type: path
    required: true
  distributions:
    description: Names to report. Unknown names are reported as null.
    type: list
    elements: str
    default: [python, ray, vllm, torch]
"""

EXAMPLES = r"""
- name: Read the runtime versions
  llmserve.cluster.runtime_facts:
    venv: /opt/llmserve/venv
"""

RETURN = r"""
ansible_facts:
  description: Facts set on the node.
  returned: always
  type: dict
  contains:
    llmserve_runtime:
      description: Versions by name, null where the package is not installed.
      type: dict
      sample: {python: "3.11.2", ray: "2.60.0", vllm: "0.32.0", torch: "2.13.0"}
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.llmserve.cluster.plugins.module_utils._runtime_versions import VERSION_PROBE_SCRIPT


def main():
    module = AnsibleModule(
        argument_spec=dict(
            venv=dict(type="path", required=True),
            distributions=dict(type="list", elements="str", default=["python", "ray", "vllm", "torch"]),
        ),
        supports_check_mode=True,
    )
    python = os.path.join(module.params["venv"], "bin", "python")
    if not os.access(python, os.X_OK):
        module.fail_json(msg=f"No Python at {python}: the runtime venv is missing; run the python_runtime role.")
    rc, out, err = module.run_command([python, "-c", VERSION_PROBE_SCRIPT])
    if rc != 0:
        module.fail_json(msg=f"Reading versions with {python} failed: {err.strip()}")
    found = json.loads(out)
    versions = {name: found.get(name) for name in module.params["distributions"]}
    module.exit_json(changed=False, ansible_facts={"llmserve_runtime": versions})


if __name__ == "__main__":
    main()
