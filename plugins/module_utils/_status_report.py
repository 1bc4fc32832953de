# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The cluster's state as the status playbook collected it, its problems, and one readable report.

Inputs are what the nodes answered: ``systemctl show`` properties of the serving units (as
``ansible.builtin.systemd_service`` returns them), the ``llmserve_gpu`` fact, the plan each node
keeps in ``/etc/llmserve/plan.json``, what Ray's GCS lists, and the endpoint's answers. Nothing
here talks to a host.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ansible_collections.llmserve.cluster.plugins.module_utils._driver_reboot import pending_reboot_text
from ansible_collections.llmserve.cluster.plugins.module_utils._placement_view import placement, slot_label
from ansible_collections.llmserve.cluster.plugins.module_utils._plan_table import render_box

# Every unit a backend of the collection may install; absent ones are simply reported absent.
SERVING_UNITS = ["vllm.service", "ray-head.service", "ray-worker.service", "llama-server.service", "llama-rpc.service"]


def unit_state(result: Mapping[str, Any]) -> Dict[str, Any]:
    """One unit's state from a ``systemd_service`` result: absent when systemd does not know it."""
    properties = result.get("status") or {}
    unit = str(result.get("item") or result.get("name") or properties.get("Id") or "")
    if not properties or properties.get("LoadState") in (None, "not-found"):
        return {"unit": unit, "present": False, "state": "absent", "since": None, "restarts": 0}
    active, sub = properties.get("ActiveState", "unknown"), properties.get("SubState", "")
    restarts = properties.get("NRestarts", "0")
    return {
        "unit": unit,
        "present": True,
        "state": active,
        "sub_state": sub,
        "since": properties.get("ActiveEnterTimestamp")
        if active == "active"
        else properties.get("InactiveEnterTimestamp"),
        "restarts": int(restarts) if str(restarts).isdigit() else 0,
    }


def unit_text(state: Mapping[str, Any]) -> str:
    """``vllm active (running)``, ``vllm failed (failed), 3 restarts``, ``vllm absent``."""
    name = state["unit"].rsplit(".service", 1)[0]
    if not state["present"]:
        return name + " absent"
    text = "{} {}".format(name, state["state"])
    if state.get("sub_state"):
        text += " ({})".format(state["sub_state"])
    if state.get("restarts"):
        text += ", {} restarts".format(state["restarts"])
    return text


def plan_in_effect(plans: Mapping[str, Optional[Mapping[str, Any]]]) -> Tuple[Optional[Dict[str, Any]], List[str]]:
    """The plan the nodes run (their plan.json files must agree), and problems when they do not."""
    present = {name: plan for name, plan in plans.items() if plan}
    if not present:
        return None, []
    # The plan's own first node (rank 0) is the reference when it wrote one.
    reference_name = sorted(present)[0]
    for name, plan in present.items():
        nodes = plan.get("nodes") or []
        if nodes and nodes[0].get("name") == name:
            reference_name = name
            break
    reference = dict(present[reference_name])
    problems = [
        f"/etc/llmserve/plan.json on {name} differs from the one on {reference_name}: "
        "the nodes were configured by different runs; re-run deploy.yml."
        for name, plan in sorted(present.items())
        if _plan_key(plan) != _plan_key(reference)
    ]
    return reference, problems


def _plan_key(plan: Mapping[str, Any]) -> Tuple[Any, ...]:
    """What must agree across nodes: the sizes, the node order and the vLLM arguments."""
    return (
        plan.get("tensor_parallel_size"),
        plan.get("pipeline_parallel_size"),
        plan.get("data_parallel_size"),
        tuple(node.get("name") for node in plan.get("nodes") or []),
        tuple(plan.get("vllm_args") or []),
    )


def expected_units(
    backend: str, plan: Optional[Mapping[str, Any]], head: str, names: Sequence[str]
) -> Dict[str, List[str]]:
    """Units that must be active per node for the backend and the plan in effect."""
    planned = [node.get("name") for node in (plan or {}).get("nodes") or []]
    rank0 = planned[0] if planned else head
    expected: Dict[str, List[str]] = {name: [] for name in names}
    for name in names:
        if backend == "native":
            if name in planned or (not planned and name == rank0):
                expected[name].append("vllm.service")
        elif backend == "ray":
            expected[name].append("ray-head.service" if name == head else "ray-worker.service")
            if name == rank0:
                expected[name].append("vllm.service")
        elif backend == "llama_cpp" and name == head:
            expected[name].append("llama-server.service")
    return expected


def device_rows(node: Mapping[str, Any]) -> Tuple[List[Dict[str, Any]], str]:
    """The node's accelerators (NVML when it answered, else the described ones) and a one-line summary."""
    gpu = node.get("gpu") or {}
    described = node.get("devices") or {}
    if gpu.get("available"):
        devices = [dict(device, source="nvml") for device in gpu.get("gpus") or []]
        names = sorted({str(device.get("name")) for device in devices})
        return devices, "{} x {} (NVML, driver {})".format(len(devices), ", ".join(names), gpu.get("driver_version"))
    if described:
        count = int(described.get("gpus") or 0)
        devices = [
            {
                "index": index,
                "name": described.get("gpu_name", "described"),
                "memory_total_mib": described.get("gpu_memory_mib"),
                "memory_used_mib": None,
                "utilization_gpu_percent": None,
                "source": "described",
            }
            for index in range(count)
        ]
        return devices, "{} x {}, {} MiB (llmserve_node_devices; no NVML)".format(
            count, described.get("gpu_name", "device"), described.get("gpu_memory_mib", "?")
        )
    return [], "none: " + str(gpu.get("reason") or "gpu_facts did not answer")


def _node_problems(
    name: str, node: Mapping[str, Any], units: List[Dict[str, Any]], expected: Sequence[str]
) -> List[str]:
    problems = []
    by_name = {state["unit"]: state for state in units}
    for unit in expected:
        state = by_name.get(unit)
        if state is None or not state["present"]:
            problems.append(f"{unit} is not installed on {name}, which the plan needs; re-run deploy.yml.")
    for state in units:
        if state["present"] and state["state"] != "active":
            since = " since {}".format(state["since"]) if state.get("since") else ""
            problems.append(
                "{unit} on {node} is {state} ({sub}){since}: `journalctl -u {unit}` on {node} says why; "
                "re-run deploy.yml to restore it.".format(
                    unit=state["unit"], node=name, state=state["state"], sub=state.get("sub_state") or "?", since=since
                )
            )
    devices, summary = device_rows(node)
    if not devices:
        problems.append(f"{name} shows no GPU ({summary}) and describes none in llmserve_node_devices.")
    return problems


def _ray_problems(ray: Mapping[str, Any]) -> List[str]:
    if not ray:
        return ["Ray was not asked: the head did not answer."]
    if ray.get("failed") or "ray_cluster" not in ray:
        return ["Ray does not answer: " + str(ray.get("msg") or ray.get("message") or "no reply")]
    return [ray["message"]] if ray.get("message") else []


def _endpoint_problems(endpoint: Mapping[str, Any], served_model: str) -> List[str]:
    if not endpoint or not endpoint.get("url"):
        return [
            "The endpoint was not probed: the node serving the API ({}) did not answer.".format(endpoint.get("node"))
        ]
    url = endpoint["url"]
    completion = endpoint.get("completion") or {}
    problems = []
    if endpoint.get("health_status") != 200:
        problems.append("{}/health answered {}.".format(url, endpoint.get("health_status") or "nothing"))
    models = endpoint.get("models") or []
    if endpoint.get("models_status") != 200:
        problems.append("{}/v1/models answered {}.".format(url, endpoint.get("models_status") or "nothing"))
    elif served_model and served_model not in models:
        problems.append("{}/v1/models lists {} but not {}.".format(url, ", ".join(models) or "nothing", served_model))
    if not completion.get("ok"):
        problems.append(
            "No one-token completion from {}: {}.".format(
                url, completion.get("error") or completion.get("msg") or "no answer"
            )
        )
    return problems


def serving_group_rows(group_endpoints: Mapping[str, Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """One row per serving group, in group order, from each group's first node and what its endpoint answered."""
    rows = []
    for index, (node, endpoint) in enumerate(group_endpoints.items()):
        completion = (endpoint or {}).get("completion") or {}
        rows.append(
            {
                "index": index,
                "node": node,
                "url": (endpoint or {}).get("url"),
                "health_status": (endpoint or {}).get("health_status"),
                "ok": bool(completion.get("ok")),
                "seconds": completion.get("seconds"),
                "error": completion.get("error") or completion.get("msg"),
            }
        )
    return rows


def cluster_status(
    backend: str,
    head: str,
    nodes: Mapping[str, Mapping[str, Any]],
    endpoint: Mapping[str, Any],
    ray: Optional[Mapping[str, Any]] = None,
    served_model: str = "",
    group_endpoints: Optional[Mapping[str, Mapping[str, Any]]] = None,
) -> Dict[str, Any]:
    """Everything the report shows: per-node rows, the plan in effect, problems, and whether all is healthy.

    ``endpoint`` is the first serving group's; ``group_endpoints`` maps every serving group's first node to its
    endpoint's answers (``{}`` when it was not probed), in group order, when the plan has more than one group.
    """
    names = list(nodes)
    plans = {name: node.get("plan") for name, node in nodes.items() if node.get("reachable", True)}
    plan, problems = plan_in_effect(plans)
    warnings: List[str] = []
    if plan is None:
        warnings.append("No node has /etc/llmserve/plan.json: the plan in effect is unknown.")
    else:
        for name in [node.get("name") for node in plan.get("nodes") or []]:
            if name not in nodes:
                problems.append(f"The plan in effect places ranks on {name}, which is not in the inventory.")
    expected = expected_units(backend, plan, head, names)
    placed = {node["name"]: node for node in placement(plan)} if plan else {}
    rows = []
    for name in names:
        node = nodes[name]
        row: Dict[str, Any] = {
            "name": name,
            "address": node.get("address"),
            "reachable": bool(node.get("reachable", True)),
        }
        row["node_rank"] = placed[name]["node_rank"] if name in placed else None
        if not row["reachable"]:
            problems.append("{} is unreachable: {}".format(name, node.get("error") or "no answer over SSH"))
            row.update(
                units=[], devices=[], devices_summary="unknown (unreachable)", plan_state="unknown", reboot_pending=None
            )
            rows.append(row)
            continue
        units = [unit_state(result) for result in node.get("units") or []]
        row["units"] = units
        # Still serving on the old driver, so a note rather than a problem.
        row["reboot_pending"] = pending_reboot_text(node.get("reboot_pending"))
        if row["reboot_pending"]:
            reason = (node.get("reboot_pending") or {}).get("reason") or "no reason recorded"
            warnings.append("{}: {}; {}.".format(name, row["reboot_pending"], reason))
        row["devices"], row["devices_summary"] = device_rows(node)
        if plan is None:
            row["plan_state"] = "unknown"
        elif not node.get("plan"):
            row["plan_state"] = "none" if name not in placed else "missing"
        else:
            row["plan_state"] = "in effect" if _plan_key(node["plan"]) == _plan_key(plan) else "differs"
        problems.extend(_node_problems(name, node, units, expected[name]))
        rows.append(row)
    if backend == "ray":
        problems.extend(_ray_problems(ray or {}))
    problems.extend(_endpoint_problems(endpoint, served_model))
    groups = serving_group_rows(group_endpoints or {})
    for node, answers in list((group_endpoints or {}).items())[1:]:
        problems.extend(_endpoint_problems(dict(answers or {}, node=node), served_model))
    return {
        "groups": groups,
        "backend": backend,
        "plan": plan,
        "nodes": rows,
        "endpoint": endpoint,
        "ray": (ray or {}).get("ray_cluster"),
        "problems": problems,
        "warnings": warnings,
        "healthy": not problems,
    }


# ---------------------------------------------------------------------------------------------------------
# The text report


def _shorten(text: str, width: int = 100) -> str:
    """One table cell stays readable; the problem list carries the whole text."""
    return text if len(text) <= width else text[: width - 3] + "..."


def _memory_text(device: Mapping[str, Any]) -> str:
    total, used = device.get("memory_total_mib"), device.get("memory_used_mib")
    return "{} / {} MiB".format("?" if used is None else used, "?" if total is None else total)


def _group_line(group: Mapping[str, Any]) -> str:
    """``Serving group 1 on node2: http://10.0.0.12:8000 /health 200, one-token completion ok in 0.08 s``."""
    answer = (
        "ok in {} s".format(group["seconds"]) if group["ok"] else "FAILED: {}".format(group["error"] or "no answer")
    )
    return "Serving group {} on {}: {} /health {}, one-token completion {}".format(
        group["index"], group["node"], group["url"] or "not probed", group["health_status"] or "no answer", answer
    )


def render_status(status: Mapping[str, Any]) -> str:
    """Boxes for nodes, devices and placement, Ray, the endpoint, the plan in effect, then the problems."""
    plan = status["plan"]
    data_parallel_size = int((plan or {}).get("data_parallel_size") or 1)
    placed = {node["name"]: node for node in placement(plan)} if plan else {}
    node_rows = []
    device_table = []
    for row in status["nodes"]:
        units = [unit_text(state) for state in row["units"] if state["present"]] or ["no serving unit"]
        node_rows.append(
            [
                row["name"],
                str(row.get("address") or "?"),
                "-" if row["node_rank"] is None else str(row["node_rank"]),
                "yes" if row["reachable"] else "NO",
                "; ".join(units) if row["reachable"] else "unknown",
                row["plan_state"],
            ]
        )
        slots = {slot["index"]: slot for slot in placed[row["name"]]["gpus"]} if row["name"] in placed else {}
        for position, device in enumerate(row["devices"]):
            index = int(device.get("index", position))
            described = device.get("source") == "described"
            utilisation = device.get("utilization_gpu_percent")
            device_table.append(
                [
                    row["name"],
                    str(index),
                    str(device.get("name")) + (" (described)" if described else ""),
                    _memory_text(device),
                    "no NVML" if described else "-" if utilisation is None else f"{utilisation}%",
                    slot_label(slots.get(index) or {}, data_parallel_size) if plan else "plan unknown",
                ]
            )
    if plan:
        title = "CLUSTER  backend {}, {} x {} x {} (TP x PP x DP), {}".format(
            status["backend"],
            plan.get("tensor_parallel_size"),
            plan.get("pipeline_parallel_size"),
            plan.get("data_parallel_size"),
            plan.get("strategy"),
        )
    else:
        title = "CLUSTER  backend {}, plan in effect unknown".format(status["backend"])
    sections = [render_box(title, ["node", "address", "node rank", "reachable", "units", "plan"], node_rows)]
    if device_table:
        sections.append(
            render_box(
                "DEVICES  and their place in the plan",
                ["node", "gpu", "model", "memory used / total", "util", "placement"],
                device_table,
            )
        )
    for row in status["nodes"]:
        if row["reachable"] and not row["devices"]:
            sections.append("{}: {}".format(row["name"], row["devices_summary"]))
    ray = status.get("ray")
    if status["backend"] == "ray" and ray:
        names = {row.get("address"): row["name"] for row in status["nodes"]}
        ray_rows = [
            [
                address,
                names.get(address, "?"),
                "alive",
                "{:g}".format(resources["CPU"]),
                "{:g}".format(resources["GPU"]),
            ]
            for address, resources in sorted(ray["alive"].items())
        ]
        ray_rows += [[address, names.get(address, "?"), "dead", "-", "-"] for address in ray.get("dead") or []]
        sections.append(render_box("RAY  nodes the GCS lists", ["address", "node", "state", "cpus", "gpus"], ray_rows))
    endpoint = status["endpoint"] or {}
    completion = endpoint.get("completion") or {}
    if completion.get("ok"):
        answer = "ok: {!r}".format(completion.get("text"))
    else:
        answer = _shorten("FAILED: {}".format(completion.get("error") or completion.get("msg") or "not probed"))
    seconds = completion.get("seconds")
    sections.append(
        render_box(
            "ENDPOINT  {}".format(endpoint.get("url") or "not probed"),
            ["health", "models", "one-token completion", "seconds"],
            [
                [
                    str(endpoint.get("health_status") or "no answer"),
                    ", ".join(endpoint.get("models") or []) or "HTTP {}".format(endpoint.get("models_status") or "-"),
                    answer,
                    "-" if seconds is None else f"{float(seconds):.3f}",
                ]
            ],
        )
    )
    if len(status.get("groups") or []) > 1:
        sections.append("\n".join(_group_line(group) for group in status["groups"]))
    if plan and plan.get("table"):
        sections.append("Plan in effect (/etc/llmserve/plan.json):\n" + plan["table"])
    for warning in status["warnings"]:
        sections.append("NOTE: " + warning)
    if status["problems"]:
        sections.append(
            "PROBLEMS ({}):\n".format(len(status["problems"])) + "\n".join("  - " + p for p in status["problems"])
        )
    else:
        sections.append("HEALTHY: every unit is active and the endpoint answered a completion.")
    return "\n".join(sections)
