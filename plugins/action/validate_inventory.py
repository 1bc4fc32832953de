# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
from __future__ import annotations

from ansible.plugins.action import ActionBase

from ansible_collections.llmserve.cluster.plugins.module_utils._inventory_checks import check_inventory
from ansible_collections.llmserve.cluster.plugins.plugin_utils._play_facts import play_hosts


class ActionModule(ActionBase):
    """Check the inventory's groups and llmserve settings on the controller before any host changes."""

    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("hosts",))

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        _unused, args = self.validate_argument_spec(argument_spec=dict(hosts=dict(type="list", elements="str")))
        hosts = play_hosts(task_vars, args["hosts"])
        hostvars = task_vars.get("hostvars") or {}
        report = check_inventory(task_vars.get("groups") or {}, {host: hostvars[host] for host in hosts})
        for warning in report["warnings"]:
            self._display.warning(warning)
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
