# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
from __future__ import annotations

from ansible.plugins.action import ActionBase

from ansible_collections.llmserve.cluster.plugins.action.parallel_plan import host_devices
from ansible_collections.llmserve.cluster.plugins.module_utils._parallel_planner import cluster_from_gpu_facts
from ansible_collections.llmserve.cluster.plugins.module_utils._plan_inputs import PlanError
from ansible_collections.llmserve.cluster.plugins.modules.batch_plan import ARGUMENT_SPEC, run_batch_plan
from ansible_collections.llmserve.cluster.plugins.plugin_utils._play_facts import collect_fact

CLUSTER_GROUP = "llmserve_cluster"


class ActionModule(ActionBase):
    """Plan on the controller: the cluster is every node's facts, not only the hosts of the play (the head)."""

    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(ARGUMENT_SPEC)

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        _validation, params = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        params = dict(params)
        if not params.get("cluster"):
            hosts = params.get("hosts") or list((task_vars.get("groups") or {}).get(CLUSTER_GROUP) or [])
            scoped_vars = dict(task_vars, ansible_play_hosts=hosts)
            try:
                params["cluster"] = cluster_from_gpu_facts(
                    collect_fact(task_vars, "llmserve_gpu", hosts), host_devices(scoped_vars)
                )
            except PlanError as error:
                result.update(failed=True, msg=str(error), field=error.field)
                return result
        outcome = run_batch_plan(params)
        for warning in outcome.pop("warnings", []):
            self._display.warning(warning)
        result.update(outcome)
        return result
