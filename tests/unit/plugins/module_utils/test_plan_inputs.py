# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The planner's cluster input: every entry validated, with its index and name in the message."""

from __future__ import annotations

import pytest

from ansible_collections.llmserve.cluster.plugins.module_utils._plan_inputs import PlanError, parse_cluster


def test_cluster_entries_are_validated_with_their_index():
    with pytest.raises(PlanError, match=r"cluster\[1\] \(b\)\.gpus must be a positive integer, got 'eight'"):
        parse_cluster(
            [{"name": "a", "gpus": 8, "gpu_memory_mib": 81559}, {"name": "b", "gpus": "eight", "gpu_memory_mib": 81559}]
        )
    with pytest.raises(PlanError, match="gpu_memory_mib"):
        parse_cluster([{"name": "a", "gpus": 8, "gpu_memory_mib": 0}])
    with pytest.raises(PlanError, match="unique"):
        parse_cluster([{"name": "a", "gpus": 1, "gpu_memory_mib": 1}, {"name": "a", "gpus": 1, "gpu_memory_mib": 1}])
    with pytest.raises(PlanError, match="non-empty list"):
        parse_cluster([])
    assert parse_cluster([{"name": "a", "gpus": "8", "gpu_memory_mib": 81559}])[0].gpus == 8
