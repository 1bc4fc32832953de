# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Which GPU of which node holds which rank of a plan, and a self-contained HTML picture of it.

Ranks follow the plan's node order, as vllm_serve assigns them: the plan's first node is node rank
0 and holds global ranks ``first_rank .. first_rank + gpus_used - 1`` on its GPUs 0, 1, ...; global
ranks are laid out DP x PP x TP (replica-major, TP-minor), as in vLLM and the planner's ``place``.
The picture follows GPUStack's Resources page: a card per node, a tile per GPU with its memory bar,
coloured by pipeline stage.
"""

from __future__ import annotations

import html
from typing import Any, Dict, List, Mapping, Optional, Sequence

# One hue per pipeline stage (repeats after eight stages); spare GPUs are grey.
STAGE_COLOURS = ["#2f6fdf", "#1b9e77", "#d95f02", "#7570b3", "#c2185b", "#66a61e", "#a6761d", "#00838f"]
SPARE_COLOUR = "#9e9e9e"


def _plan_sizes(plan: Mapping[str, Any]) -> Dict[str, int]:
    tensor_parallel_size = int(plan.get("tensor_parallel_size") or 1)
    pipeline_parallel_size = int(plan.get("pipeline_parallel_size") or 1)
    return {
        "tensor_parallel_size": tensor_parallel_size,
        "pipeline_parallel_size": pipeline_parallel_size,
        "data_parallel_size": int(plan.get("data_parallel_size") or 1),
        "world_size": int(plan.get("world_size") or tensor_parallel_size * pipeline_parallel_size),
    }


def _stage_layers(plan: Mapping[str, Any]) -> Dict[int, Mapping[str, Any]]:
    return {int(stage["stage"]): stage for stage in plan.get("pipeline_stages") or [] if "stage" in stage}


def rank_position(rank: int, sizes: Mapping[str, int]) -> Dict[str, int]:
    """Replica, pipeline stage and TP rank of a global rank (DP x PP x TP, TP fastest)."""
    replica, within = divmod(rank, sizes["world_size"])
    stage, tensor_parallel_rank = divmod(within, sizes["tensor_parallel_size"])
    return {"rank": rank, "replica": replica, "stage": stage, "tensor_parallel_rank": tensor_parallel_rank}


def placement(plan: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """Per plan node, in rank order: its node rank and one entry per GPU (rank fields null when spare)."""
    sizes = _plan_sizes(plan)
    layers = _stage_layers(plan)
    nodes: List[Dict[str, Any]] = []
    next_rank = 0
    for node_rank, node in enumerate(plan.get("nodes") or []):
        gpus_used = int(node.get("gpus_used", node.get("gpus", 0)))
        first_rank = int(node.get("first_rank", next_rank))
        next_rank = first_rank + gpus_used
        gpus = []
        for index in range(max(int(node.get("gpus", 0)), gpus_used)):
            slot: Dict[str, Any] = {"index": index, "rank": None, "replica": None, "stage": None}
            slot.update({"tensor_parallel_rank": None, "first_layer": None, "last_layer": None})
            if index < gpus_used:
                slot.update(rank_position(first_rank + index, sizes))
                stage = layers.get(slot["stage"])
                if stage is not None:
                    slot["first_layer"] = stage.get("first_layer")
                    slot["last_layer"] = stage.get("last_layer")
            gpus.append(slot)
        nodes.append({"name": node.get("name"), "node_rank": node_rank, "gpus": gpus})
    return nodes


def slot_label(slot: Mapping[str, Any], data_parallel_size: int = 1) -> str:
    """``PP 1 · TP 3 · layers 20-39`` (with ``DP r`` first when there are replicas); ``spare`` when unplaced."""
    if slot.get("rank") is None:
        return "spare"
    parts = []
    if data_parallel_size > 1:
        parts.append("DP {}".format(slot["replica"]))
    parts.append("PP {}".format(slot["stage"]))
    parts.append("TP {}".format(slot["tensor_parallel_rank"]))
    if slot.get("first_layer") is not None:
        parts.append("layers {}-{}".format(slot["first_layer"], slot["last_layer"]))
    return " · ".join(parts)


# ---------------------------------------------------------------------------------------------------------
# HTML

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;background:#f4f6f9;color:#1f2933}
h1{font-size:20px;margin:0 0 4px}h2{font-size:15px;margin:0}
.sub{color:#52606d;font-size:13px;margin-bottom:16px}
.nodes{display:flex;flex-wrap:wrap;gap:16px}
.node{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.15);padding:14px;min-width:300px}
.node.down{border:2px solid #c62828}
.meta{color:#52606d;font-size:12px;margin:4px 0 10px}
.units span{display:inline-block;font-size:11px;padding:1px 6px;border-radius:9px;margin:0 4px 4px 0;color:#fff}
.ok{background:#2e7d32}.bad{background:#c62828}.off{background:#9e9e9e}
.gpus{display:grid;grid-template-columns:repeat(auto-fill,minmax(140px,1fr));gap:8px}
.gpu{border-radius:6px;padding:8px;color:#fff;font-size:12px}
.gpu b{font-size:13px}.gpu .name{opacity:.9;font-size:11px}
.bar{background:rgba(255,255,255,.35);height:6px;border-radius:3px;margin:6px 0 2px}
.bar i{display:block;height:6px;border-radius:3px;background:#fff}
.legend span{display:inline-block;padding:2px 8px;border-radius:4px;color:#fff;font-size:12px;margin-right:6px}
table{border-collapse:collapse;background:#fff;margin-top:16px;font-size:13px}
td,th{border:1px solid #d9e2ec;padding:4px 10px;text-align:left}
.problems{color:#c62828}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _gpu_tile(slot: Mapping[str, Any], device: Optional[Mapping[str, Any]], data_parallel_size: int) -> str:
    colour = SPARE_COLOUR if slot.get("stage") is None else STAGE_COLOURS[int(slot["stage"]) % len(STAGE_COLOURS)]
    device = device or {}
    total = device.get("memory_total_mib")
    used = device.get("memory_used_mib")
    if total and used is not None:
        percent = max(0, min(100, round(100 * float(used) / float(total))))
        memory = f'<div class="bar"><i style="width:{percent}%"></i></div>{_e(used)} / {_e(total)} MiB'
    elif total:
        memory = f'<div class="bar"></div>? / {_e(total)} MiB'
    else:
        memory = '<div class="bar"></div>memory unknown'
    utilisation = device.get("utilization_gpu_percent")
    rank = "" if slot.get("rank") is None else " · rank {}".format(_e(slot["rank"]))
    return (
        '<div class="gpu" style="background:{colour}"><b>GPU {index}</b>{rank}'
        '<div class="name">{name}</div><div>{label}</div>{memory}{utilisation}</div>'
    ).format(
        colour=colour,
        index=_e(slot.get("index")),
        rank=rank,
        name=_e(device.get("name") or "not probed"),
        label=_e(slot_label(slot, data_parallel_size)),
        memory=memory,
        utilisation="" if utilisation is None else f" · {_e(utilisation)}% util",
    )


def render_html(
    plan: Optional[Mapping[str, Any]],
    nodes: Sequence[Mapping[str, Any]],
    endpoint: Optional[Mapping[str, Any]] = None,
    problems: Sequence[str] = (),
    title: str = "llmserve cluster",
) -> str:
    """A whole HTML page: one card per node (plan order first), one tile per GPU.

    ``nodes`` are the status rows: ``{name, address, reachable, devices: [{index, name, memory_total_mib,
    memory_used_mib, utilization_gpu_percent}], units: {unit: state}}``.
    """
    sizes = _plan_sizes(plan or {})
    placed = {node["name"]: node for node in placement(plan)} if plan else {}
    ordered = sorted(nodes, key=lambda node: placed[node["name"]]["node_rank"] if node["name"] in placed else 1 << 30)
    cards = []
    for node in ordered:
        devices = {
            int(device.get("index", position)): device for position, device in enumerate(node.get("devices") or [])
        }
        slots = list(placed[node["name"]]["gpus"]) if node["name"] in placed else []
        for index in sorted(devices):
            if index >= len(slots):
                slots.append({"index": index, "rank": None, "stage": None})
        units = "".join(
            '<span class="{}">{} {}</span>'.format(
                "ok" if state == "active" else "off" if state == "absent" else "bad", _e(unit), _e(state)
            )
            for unit, state in sorted((node.get("units") or {}).items())
        )
        node_rank = placed[node["name"]]["node_rank"] if node["name"] in placed else None
        cards.append(
            '<div class="node{down}"><h2>{name}</h2><div class="meta">{address} · {rank}{reach}</div>'
            '<div class="units">{units}</div><div class="gpus">{tiles}</div></div>'.format(
                down="" if node.get("reachable", True) else " down",
                name=_e(node["name"]),
                address=_e(node.get("address") or "address unknown"),
                rank=f"node rank {node_rank}" if node_rank is not None else "not in the plan",
                reach="" if node.get("reachable", True) else " · UNREACHABLE",
                units=units,
                tiles="".join(
                    _gpu_tile(slot, devices.get(slot["index"]), sizes["data_parallel_size"]) for slot in slots
                ),
            )
        )
    if plan:
        summary = "{} · TP {} x PP {} x DP {} · {} · max_model_len {}".format(
            (plan.get("model") or {}).get("name", "model"),
            sizes["tensor_parallel_size"],
            sizes["pipeline_parallel_size"],
            sizes["data_parallel_size"],
            plan.get("strategy", ""),
            plan.get("max_model_len", "?"),
        )
        legend = "".join(
            '<span style="background:{}">PP stage {} · layers {}-{}</span>'.format(
                STAGE_COLOURS[int(stage["stage"]) % len(STAGE_COLOURS)],
                _e(stage["stage"]),
                _e(stage.get("first_layer")),
                _e(stage.get("last_layer")),
            )
            for stage in plan.get("pipeline_stages") or []
        )
    else:
        summary, legend = "plan in effect: unknown (no /etc/llmserve/plan.json on any node)", ""
    legend += f'<span style="background:{SPARE_COLOUR}">spare</span>'
    endpoint_rows = ""
    if endpoint:
        endpoint_rows = "<table><tr>{}</tr><tr>{}</tr></table>".format(
            "".join(f"<th>{_e(key)}</th>" for key in endpoint),
            "".join(f"<td>{_e(value)}</td>" for value in endpoint.values()),
        )
    problem_list = "".join(f"<li>{_e(problem)}</li>" for problem in problems)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>{css}</style>'
        '</head><body><h1>{title}</h1><div class="sub">{summary}</div><div class="legend">{legend}</div><br>'
        '<div class="nodes">{cards}</div>{endpoint}{problems}</body></html>\n'
    ).format(
        title=_e(title),
        css=_CSS,
        summary=_e(summary),
        legend=legend,
        cards="".join(cards),
        endpoint=endpoint_rows,
        problems=f'<ul class="problems">{problem_list}</ul>' if problem_list else "",
    )
