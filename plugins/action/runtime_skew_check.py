# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
from __future__ import annotations

from ansible.plugins.action import ActionBase

from ansible_collections.llmserve.cluster.plugins.module_utils._runtime_versions import find_version_skew
from ansible_collections.llmserve.cluster.plugins.plugin_utils._play_facts import collect_fact


class ActionModule(ActionBase):
    """Compare ``llmserve_runtime`` facts of the play's hosts on the controller."""

    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("distributions", "hosts"))

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        _unused, args = self.validate_argument_spec(
            argument_spec=dict(
                distributions=dict(type="list", elements="str", default=["python", "ray", "vllm", "torch"]),
                hosts=dict(type="list", elements="str"),
            )
        )
        versions = collect_fact(task_vars, "llmserve_runtime", args["hosts"])
        missing = sorted(host for host, found in versions.items() if found is None)
        if missing:
            result.update(
                failed=True,
                msg="No runtime facts for {}: run llmserve.cluster.runtime_facts on every node first.".format(
                    ", ".join(missing)
                ),
            )
            return result
        problems = find_version_skew(versions, args["distributions"])
        result.update(changed=False, versions=versions, skew=problems)
        if problems:
            result.update(failed=True, msg=" ".join(problems))
        return result
