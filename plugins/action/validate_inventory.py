# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
from __future__ import annotations

import os
from collections import ChainMap

from ansible.errors import AnsibleError, AnsibleUndefinedVariable
from ansible.plugins.action import ActionBase
from ansible.template import Templar

from ansible_collections.llmserve.cluster.plugins.module_utils._inventory_checks import (
    BIND_VARIABLES,
    CHECKED_VARIABLES,
    check_inventory,
)
from ansible_collections.llmserve.cluster.plugins.plugin_utils._play_facts import play_hosts

# Roles whose defaults the checked variables come from, lowest precedence first.
ROLES = ("llmserve", "python_runtime", "model_weights", "ray_node", "vllm_serve", "llama_cpp")
ROLES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "roles")


class ActionModule(ActionBase):
    """Check the inventory's groups and llmserve settings on the controller before any host changes."""

    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("hosts",))

    def _role_defaults(self):
        """The roles' defaults as written (templates unrendered): hostvars never hold role defaults."""
        defaults = {}
        for role in ROLES:
            path = os.path.join(ROLES_DIR, role, "defaults", "main.yml")
            if os.path.isfile(path):
                defaults.update(self._loader.load_from_file(path, trusted_as_template=True) or {})
        return defaults

    def _host_settings(self, host, hostvars, defaults, problems):
        """The checked variables as HOST's tasks would see them: role defaults under the inventory and -e."""
        variables = ChainMap(dict(hostvars.raw_get(host)), defaults)
        templar = Templar(loader=self._loader, variables=variables)
        settings = {}
        for name in CHECKED_VARIABLES:
            if name not in variables:
                continue
            try:
                settings[name] = templar.template(variables[name])
            except AnsibleError as error:
                if name in BIND_VARIABLES and isinstance(error, AnsibleUndefinedVariable):
                    continue  # the node's cluster address, known once the probes ran
                problems.append(f"{name} on {host} cannot be evaluated: {error.message}; fix its value or template.")
        return settings

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        _unused, args = self.validate_argument_spec(argument_spec=dict(hosts=dict(type="list", elements="str")))
        hosts = play_hosts(task_vars, args["hosts"])
        hostvars = task_vars.get("hostvars") or {}
        defaults = self._role_defaults()
        problems = []
        settings = {host: self._host_settings(host, hostvars, defaults, problems) for host in hosts}
        report = check_inventory(task_vars.get("groups") or {}, settings)
        report["errors"] = problems + report["errors"]
        # Ansible prints a result's warnings itself, once.
        result.update(report, changed=False)
        if report["errors"]:
            result.update(
                failed=True,
                msg="The inventory has {} problem(s); nothing was changed:\n- {}".format(
                    len(report["errors"]), "\n- ".join(report["errors"])
                ),
            )
        else:
            result["msg"] = f"Inventory checks passed for {len(hosts)} host(s)."
        return result
