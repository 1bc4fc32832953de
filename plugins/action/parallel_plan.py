# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
from __future__ import annotations

from ansible.plugins.action import ActionBase

from ansible_collections.llmserve.cluster.plugins.module_utils._parallel_planner import cluster_from_gpu_facts
from ansible_collections.llmserve.cluster.plugins.module_utils._plan_inputs import PlanError
from ansible_collections.llmserve.cluster.plugins.modules.parallel_plan import (
    ARGUMENT_SPEC,
    MUTUALLY_EXCLUSIVE,
    REQUIRED_BY,
    REQUIRED_ONE_OF,
    run_plan,
)
from ansible_collections.llmserve.cluster.plugins.plugin_utils._play_facts import collect_fact, play_hosts


def host_devices(task_vars):
    """Each play host's ``llmserve_node_devices`` description, for hosts described instead of probed."""
    hostvars = task_vars.get("hostvars") or {}
    return {host: (hostvars.get(host) or {}).get("llmserve_node_devices") for host in play_hosts(task_vars)}


class ActionModule(ActionBase):
    """Plan on the controller: model_dir is a controller path and the cluster comes from every host's facts."""

    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(ARGUMENT_SPEC)

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        _validation, params = self.validate_argument_spec(
            argument_spec=ARGUMENT_SPEC,
            mutually_exclusive=MUTUALLY_EXCLUSIVE,
            required_one_of=REQUIRED_ONE_OF,
            required_by=REQUIRED_BY,
        )
        params = dict(params)
        if not params.get("cluster"):
            try:
                params["cluster"] = cluster_from_gpu_facts(
                    collect_fact(task_vars, "llmserve_gpu"), host_devices(task_vars)
                )
            except PlanError as error:
                result.update(failed=True, msg=str(error), field=error.field)
                return result

        def fail(**failure):
            result.update(failed=True, **failure)
            return result

        outcome = run_plan(params, fail)
        if outcome is not result:
            result.update(outcome)
        return result
