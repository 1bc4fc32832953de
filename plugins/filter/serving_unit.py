# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Filters over what serving_unit_facts read: runs_vllm_unit, serving_group_restart and plan_needs_recording.

Documented in runs_vllm_unit.yml, serving_group_restart.yml and plan_needs_recording.yml; the logic is in
module_utils/_serving_unit.py.
"""

from __future__ import annotations

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
        }
