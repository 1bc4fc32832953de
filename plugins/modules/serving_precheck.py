#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
from __future__ import annotations

DOCUMENTATION = r"""
---
module: serving_precheck
short_description: Check a new serving unit on its node before the running one stops
version_added: 0.1.0
description:
  - Part of the transactional serving change (role C(vllm_serve)); runs on each node of a serving group whose
    configuration changed, while the old group still serves.
  - Checks that every path in O(paths) exists (the model, devices), that no process outside O(unit) listens on
    O(ports), and with O(parse_vllm_args) that the installed vLLM accepts the new unit's whole C(vllm serve)
    command line (its own argument parser and the checks it runs on the parsed arguments, without starting
    anything).
  - Fails with every problem found, so nothing stops for a configuration that cannot start.
author: llmserve.cluster contributors (@llmserve)
attributes:
  check_mode:
    support: full
    description: Reads and runs the argument parser only.
  diff_mode:
    support: none
    description: Changes nothing.
options:
  unit_file:
    description: The new unit file, as written beside the running one.
    type: path
    required: true
  unit:
    description: The unit that runs now; processes in its control group may hold O(ports).
    type: str
    required: true
  ports:
    description: TCP ports the new unit listens on.
    type: list
    elements: int
    default: []
  paths:
    description: Paths the new unit needs (model directory, device nodes).
    type: list
    elements: path
    default: []
  parse_vllm_args:
    description: Whether to have the installed vLLM parse the unit's command line (C(ExecStart=), C(vllm serve ...)).
    type: bool
    default: false
  parse_timeout:
    description: Seconds the argument parser may take (importing vLLM takes a while).
    type: int
    default: 300
"""

EXAMPLES = r"""
- name: Check the new vLLM unit before the running group stops
  llmserve.cluster.serving_precheck:
    unit_file: /etc/llmserve/staged/vllm.service
    unit: vllm.service
    ports: [8000, 29555]
    paths: [/srv/models/tiny-llama]
    parse_vllm_args: true
"""

RETURN = r"""
argv:
  description: The new unit's command line.
  returned: always
  type: list
  elements: str
problems:
  description: What would stop the new unit from starting; empty when none.
  returned: always
  type: list
  elements: str
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.llmserve.cluster.plugins.module_utils._serving_ready import (
    VLLM_PARSE_SCRIPT,
    exec_start_argv,
    foreign_holders,
    in_unit,
    parse_failure,
    port_holders,
    unit_environment,
)


def unit_pids(pids, unit):
    """Those of ``pids`` whose process runs in ``unit`` (read from /proc; a process gone meanwhile is not)."""
    own = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cgroup", encoding="ascii") as handle:
                if in_unit(handle.read(), unit):
                    own.add(pid)
        except OSError:
            continue
    return own


def check_ports(module, unit, ports):
    if not ports:
        return []
    ss = module.get_bin_path("ss", required=True)
    _rc, out, _err = module.run_command([ss, "-Hltnp"])
    problems = []
    for port in ports:
        holders = port_holders(out, port)
        own = unit_pids({holder["pid"] for holder in holders if holder.get("pid")}, unit)
        for holder in foreign_holders(holders, own):
            problems.append(
                f"port {port} is held by {holder.get('name') or 'a process'} (pid {holder.get('pid') or '?'}) "
                f"on {holder['address']}, outside {unit}"
            )
    return problems


def parse_args(module, argv, environment, timeout):
    """Run the installed vLLM's parser on ``argv`` (``.../bin/vllm serve ...``); a problem or None."""
    python = os.path.join(os.path.dirname(argv[0]), "python")
    if not os.access(python, os.X_OK):
        return f"{python} (the interpreter next to {argv[0]}) does not exist"
    command = ["timeout", str(timeout), python, "-c", VLLM_PARSE_SCRIPT, *argv[1:]]
    rc, out, err = module.run_command(command, environ_update=environment)
    return parse_failure(rc, out, err)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            unit_file=dict(type="path", required=True),
            unit=dict(type="str", required=True),
            ports=dict(type="list", elements="int", default=[]),
            paths=dict(type="list", elements="path", default=[]),
            parse_vllm_args=dict(type="bool", default=False),
            parse_timeout=dict(type="int", default=300),
        ),
        supports_check_mode=True,
    )
    params = module.params
    try:
        with open(params["unit_file"], encoding="utf-8") as handle:
            text = handle.read()
        argv = exec_start_argv(text)
    except (OSError, ValueError) as error:
        module.fail_json(msg=f"cannot read the new unit {params['unit_file']}: {error}", argv=[], problems=[str(error)])
    problems = [f"{path} does not exist" for path in params["paths"] if not os.path.exists(path)]
    problems += check_ports(module, params["unit"], params["ports"])
    if params["parse_vllm_args"]:
        problem = parse_args(module, argv, unit_environment(text), params["parse_timeout"])
        if problem:
            problems.append(problem)
    if problems:
        module.fail_json(msg="; ".join(problems), argv=argv, problems=problems)
    module.exit_json(changed=False, argv=argv, problems=[])


if __name__ == "__main__":
    main()
