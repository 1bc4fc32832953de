# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Each node's part in a plan's serving groups: which vLLM server it belongs to and its rank there.

A plan (llmserve.cluster.parallel_plan) lists ``serving_groups``: independent vLLM servers, each either one node
holding several data-parallel replicas or one replica spanning several nodes. Node rank, ``--nnodes``, the
rendezvous (master) node and the node that serves the API are all per group. Plans written before serving
groups existed (an older /etc/llmserve/plan.json) are one group of all their nodes.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional


def plan_serving_groups(plan: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """The plan's serving groups, each with its ``index``; one group of every node for an older plan."""
    groups = plan.get("serving_groups")
    if not groups:
        names = [str(node["name"]) for node in plan.get("nodes") or []]
        data_parallel_size = int(plan.get("data_parallel_size") or 1)
        # Such a plan still carries --data-parallel-size in its own vllm_args: the group adds nothing.
        groups = [
            {
                "nodes": names,
                "replicas": list(range(data_parallel_size)),
                "data_parallel_size": data_parallel_size,
                "endpoint_node": names[0] if names else None,
                "vllm_args": [],
            }
        ]
    return [dict(group, index=index) for index, group in enumerate(groups)]


def node_role(plan: Mapping[str, Any], host: str) -> Dict[str, Any]:
    """What ``host`` runs under ``plan``.

    ``group`` is its serving group (None when the plan does not use the host), ``node_rank`` its rank within
    that group (-1 when unused), ``nnodes`` the group's node count, ``master_host`` the group's first node (the
    rendezvous and, with the Ray backend, the Ray head), ``endpoint`` whether the host serves the group's API,
    ``endpoint_host`` the node that does, and ``head_host`` the plan's first node, which keeps the API key.
    A host the plan does not use gets the first group's master and endpoint, so templates never see None.
    """
    groups = plan_serving_groups(plan)
    mine: Optional[Dict[str, Any]] = next((group for group in groups if host in group["nodes"]), None)
    reference = mine or groups[0]
    return {
        "group": mine,
        "node_rank": mine["nodes"].index(host) if mine else -1,
        "nnodes": len(mine["nodes"]) if mine else 0,
        "master_host": reference["nodes"][0] if reference["nodes"] else None,
        "endpoint": bool(mine) and mine["endpoint_node"] == host,
        "endpoint_host": reference["endpoint_node"],
        "head_host": groups[0]["nodes"][0] if groups[0]["nodes"] else None,
    }
