# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Compare the plan in effect on the cluster with a new one, and show both side by side.

A re-run after the inventory changed (a node added or decommissioned) re-plans. Serving restarts
only when what vLLM is started with changes, so the comparison separates the fields that restart
vLLM (nodes in rank order, the parallel sizes, the command line and environment) from the ones
that only inform (KV capacity follows from the others).
"""

from __future__ import annotations

from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple

from ansible_collections.llmserve.cluster.plugins.module_utils._plan_table import render_box

Row = Tuple[str, Callable[[Mapping[str, Any]], str], bool]


def _node_names(plan: Mapping[str, Any]) -> str:
    return ", ".join(str(node.get("name")) for node in plan.get("nodes") or [])


def _plain(key: str) -> Callable[[Mapping[str, Any]], str]:
    def read(plan: Mapping[str, Any]) -> str:
        value = plan.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return f"{value:,}"
        return "-" if value is None else str(value)

    return read


def _environment(plan: Mapping[str, Any]) -> str:
    return " ".join(f"{name}={value}" for name, value in sorted((plan.get("env") or {}).items())) or "-"


# (label, how to read it, whether a difference restarts vLLM)
ROWS: Sequence[Row] = (
    ("nodes (rank order)", _node_names, True),
    ("tensor_parallel_size", _plain("tensor_parallel_size"), True),
    ("pipeline_parallel_size", _plain("pipeline_parallel_size"), True),
    ("data_parallel_size", _plain("data_parallel_size"), True),
    ("max_model_len", _plain("max_model_len"), True),
    ("vllm args", lambda plan: " ".join(str(arg) for arg in plan.get("vllm_args") or []) or "-", True),
    ("environment", _environment, True),
    ("kv cache tokens", _plain("kv_cache_tokens"), False),
    ("max concurrency", _plain("max_concurrency"), False),
)


def compare_plans(previous: Optional[Mapping[str, Any]], current: Mapping[str, Any]) -> dict:
    """``{changed, first, differences, table}``; ``first`` when no plan was in effect yet.

    ``changed`` is true when a field that vLLM is started with differs; ``differences`` names every
    differing field, informative ones included.
    """
    if not previous:
        rows = [[label, "(none)", read(current)] for label, read, _restarts in ROWS]
        return {
            "changed": True,
            "first": True,
            "differences": [label for label, _read, _restarts in ROWS],
            "table": render_box("PLAN  first deployment", ["field", "in effect", "new"], rows),
        }
    rows: List[List[str]] = []
    differences: List[str] = []
    changed = False
    for label, read, restarts in ROWS:
        old, new = read(previous), read(current)
        marker = ""
        if old != new:
            differences.append(label)
            changed = changed or restarts
            marker = " *"
        rows.append([label + marker, old, new])
    title = "PLAN  changed: vLLM restarts" if changed else "PLAN  unchanged: nothing that serves restarts"
    return {
        "changed": changed,
        "first": False,
        "differences": differences,
        "table": render_box(title + "  (* = differs)", ["field", "in effect", "new"], rows),
    }
