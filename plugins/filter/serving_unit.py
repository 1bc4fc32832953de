# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Filters over what serving_unit_facts and serving_rank_watch read.

runs_vllm_unit, serving_group_restart and plan_needs_recording (logic in module_utils/_serving_unit.py), and
serving_group_readiness, serving_ready_timeout and serving_unit_endpoint (module_utils/_serving_ready.py); each
is documented in the .yml file of its name.
"""

from __future__ import annotations

from ansible_collections.llmserve.cluster.plugins.module_utils._serving_ready import (
    group_readiness,
    ready_timeout,
    unit_endpoint,
)
from ansible_collections.llmserve.cluster.plugins.module_utils._serving_unit import (
    group_restart,
    plan_needs_recording,
    runs_vllm_unit,
)


class FilterModule:
    def filters(self):
        return {
            "runs_vllm_unit": runs_vllm_unit,
            "serving_group_restart": group_restart,
            "plan_needs_recording": plan_needs_recording,
            "serving_group_readiness": group_readiness,
            "serving_ready_timeout": ready_timeout,
            "serving_unit_endpoint": unit_endpoint,
        }
