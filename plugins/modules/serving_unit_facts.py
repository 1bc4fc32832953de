#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
from __future__ import annotations

DOCUMENTATION = r"""
module: serving_unit_facts
short_description: Read a node's serving units, service account, secret and recorded plan in one call
version_added: 0.1.0
author: llmserve.cluster contributors (@llmserve)
description:
  - Reads the node without changing it, so that the serving roles (C(llmserve.cluster.vllm_serve),
    C(llmserve.cluster.ray_node), C(llmserve.cluster.llama_cpp)) skip what a re-run finds done.
  - The units' C(LoadState), C(ActiveState), C(SubState), C(UnitFileState), C(ActiveEnterTimestamp) and
    C(NRestarts) come from one C(systemctl show); whether each unit's file is in O(unit_dir).
  - The service account from the passwd database, the configuration directory's owner and mode, whether the
    secret file exists, and the plan the node last served with (O(plan_file), parsed).
options:
  units:
    description: Unit names to read, for example C(vllm.service).
    type: list
    elements: str
    default: []
  user:
    description: The service account the units run as.
    type: str
    required: true
  home:
    description: The account's expected home. Default C(/var/lib/<user>).
    type: path
  config_dir:
    description: The configuration directory to read.
    type: path
    required: true
  config_dir_owner:
    description: Owner the roles give O(config_dir).
    type: str
    default: root
  config_dir_group:
    description: Group the roles give O(config_dir).
    type: str
    default: root
  config_dir_mode:
    description: Mode the roles give O(config_dir), as an octal string.
    type: str
    default: "0755"
  secret_file:
    description: A secret (API key or token) whose presence is read; its content is never read.
    type: path
  plan_file:
    description: The plan the node last served with (JSON), returned parsed.
    type: path
  unit_dir:
    description: Where the roles write unit files.
    type: path
    default: /etc/systemd/system
  checksums:
    description:
      - Files whose SHA-1 to return (the unit and environment that serve, and the copies kept to roll back to), so
        that the role can tell whether a new configuration differs without reading any secret into the play.
    type: list
    elements: path
    default: []
attributes:
  check_mode:
    support: full
    description: Only reads; runs the same in check mode.
  diff_mode:
    support: none
    description: Changes nothing, so there is nothing to diff.
"""

EXAMPLES = r"""
- name: Read this node's vLLM unit, account, API key file and recorded plan
  llmserve.cluster.serving_unit_facts:
    units: [vllm.service]
    user: llmserve
    config_dir: /etc/llmserve
    secret_file: /etc/llmserve/api-key
    plan_file: /etc/llmserve/plan.json

- name: Start vLLM when it is not running
  ansible.builtin.systemd_service:
    name: vllm.service
    state: started
  when: not ansible_facts.llmserve_serving_unit.units['vllm.service'].running
"""

RETURN = r"""
ansible_facts:
  description: Facts to add to C(ansible_facts).
  returned: always
  type: complex
  contains:
    llmserve_serving_unit:
      description: What the node shows.
      returned: always
      type: dict
      contains:
        units:
          description:
            - Each unit of O(units) by name, with C(load_state), C(active_state), C(sub_state), C(unit_file_state),
              C(active_enter_timestamp) and C(restarts) as systemd reports them.
            - C(loaded) (systemd knows the unit), C(running) (SubState running), C(enabled) and C(file_present)
              (its file is in O(unit_dir)).
          type: dict
        account:
          description:
            - C(name), C(exists), C(uid), C(home), C(shell), C(home_present).
            - C(ready) when it exists with the expected home (present) and C(/usr/sbin/nologin) as shell.
          type: dict
        config_dir:
          description: C(path), C(exists), C(owner), C(group), C(mode) (octal string) and C(ready) (as expected).
          type: dict
        secret_file:
          description: C(path) and C(present); both null without O(secret_file).
          type: dict
        plan:
          description: The recorded plan parsed; null when the file is missing or not a JSON object.
          type: dict
        plan_error:
          description: Why a present O(plan_file) gave no plan; null otherwise.
          type: str
        checksums:
          description: Each path of O(checksums) with its SHA-1, null when missing.
          type: dict
      sample:
        units:
          vllm.service: {name: vllm.service, load_state: loaded, active_state: active, sub_state: running,
                         unit_file_state: enabled, active_enter_timestamp: "Thu 2026-12-03 15:21:21 UTC", restarts: 0,
                         loaded: true, running: true, enabled: true, file_present: true}
        account: {name: llmserve, exists: true, uid: 999, home: /var/lib/llmserve, shell: /usr/sbin/nologin,
                  home_present: true, ready: true}
        config_dir: {path: /etc/llmserve, exists: true, owner: root, group: root, mode: "0755", ready: true}
        secret_file: {path: /etc/llmserve/api-key, present: true}
        plan: {nodes: [{name: node1}], vllm_args: [--tensor-parallel-size, "2"]}
        plan_error: null
        checksums:
          /etc/systemd/system/vllm.service: 9d7f41c2e0b8a3f6a7d04c3b1e5a2f7c8d9e0a1b
          /etc/llmserve/last-good/vllm.service: null
"""

import grp
import os
import pwd

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.llmserve.cluster.plugins.module_utils._serving_unit import (
    account_facts,
    directory_facts,
    parse_systemctl_show,
    recorded_plan,
    show_command,
    unit_facts,
)


def _name_of(lookup, number):
    try:
        return lookup(number)[0]
    except KeyError:
        return str(number)


def _read_units(module, units, unit_dir):
    if not units:
        return {}
    systemctl = module.get_bin_path("systemctl", required=True)
    rc, out, err = module.run_command(show_command(systemctl, units))
    if rc != 0:
        module.fail_json(msg=f"systemctl show failed ({rc}): {err.strip() or out.strip()}")
    try:
        shown = parse_systemctl_show(out, units)
    except ValueError as error:
        module.fail_json(msg=str(error), stdout=out)
    return {name: unit_facts(name, shown[name], os.path.exists(os.path.join(unit_dir, name))) for name in units}


def _read_directory(params):
    path = params["config_dir"]
    try:
        status = os.stat(path)
    except FileNotFoundError:
        owner = group = mode = None
    else:
        owner = _name_of(pwd.getpwuid, status.st_uid)
        group = _name_of(grp.getgrgid, status.st_gid)
        mode = status.st_mode
    return directory_facts(
        path, owner, group, mode, params["config_dir_owner"], params["config_dir_group"], params["config_dir_mode"]
    )


def _read_plan(path):
    if not path:
        return recorded_plan(None)
    try:
        with open(path, encoding="utf-8") as handle:
            return recorded_plan(handle.read())
    except FileNotFoundError:
        return recorded_plan(None)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            units=dict(type="list", elements="str", default=[]),
            user=dict(type="str", required=True),
            home=dict(type="path"),
            config_dir=dict(type="path", required=True),
            config_dir_owner=dict(type="str", default="root"),
            config_dir_group=dict(type="str", default="root"),
            config_dir_mode=dict(type="str", default="0755"),
            secret_file=dict(type="path", no_log=False),
            plan_file=dict(type="path"),
            unit_dir=dict(type="path", default="/etc/systemd/system"),
            checksums=dict(type="list", elements="path", default=[]),
        ),
        supports_check_mode=True,
    )
    params = module.params
    user = params["user"]
    home = params["home"] or f"/var/lib/{user}"
    try:
        entry = tuple(pwd.getpwnam(user))
    except KeyError:
        entry = None
    secret = params["secret_file"]
    plan = _read_plan(params["plan_file"])
    facts = {
        "units": _read_units(module, params["units"], params["unit_dir"]),
        "account": account_facts(user, entry, os.path.isdir(entry[5] if entry else home), home),
        "config_dir": _read_directory(params),
        "secret_file": {"path": secret, "present": os.path.exists(secret) if secret else None},
        "plan": plan["plan"],
        "plan_error": plan["error"],
        "checksums": {path: module.sha1(path) if os.path.isfile(path) else None for path in params["checksums"]},
    }
    module.exit_json(changed=False, ansible_facts={"llmserve_serving_unit": facts})


if __name__ == "__main__":
    main()
