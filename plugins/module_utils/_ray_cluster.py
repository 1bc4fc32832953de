# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What Ray's GCS says about the cluster, compared with the nodes the inventory expects."""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence

# Run with the runtime venv's interpreter on the head. ray.nodes() asks the GCS directly, so it
# works with the dashboard bound to localhost; the auth token comes from the environment.
RAY_NODES_SCRIPT = """
import json, sys
import ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
print(json.dumps(ray.nodes()))
"""


def summarize_nodes(ray_nodes: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """Alive nodes by address with their CPU/GPU resources, and the totals."""
    alive: Dict[str, Dict[str, float]] = {}
    dead: List[str] = []
    for node in ray_nodes:
        address = str(node.get("NodeManagerAddress", ""))
        if node.get("Alive"):
            resources = node.get("Resources") or {}
            alive[address] = {"CPU": float(resources.get("CPU", 0)), "GPU": float(resources.get("GPU", 0))}
        else:
            dead.append(address)
    return {
        "alive": alive,
        "dead": sorted(set(dead) - set(alive)),
        "gpus": sum(resources["GPU"] for resources in alive.values()),
        "cpus": sum(resources["CPU"] for resources in alive.values()),
    }


def missing_nodes(summary: Mapping[str, Any], expected: Mapping[str, str]) -> List[str]:
    """Inventory names (from ``{name: address}``) whose address Ray does not list as alive."""
    alive = summary["alive"]
    return sorted(name for name, address in expected.items() if address not in alive)


def readiness_message(summary: Mapping[str, Any], expected: Mapping[str, str], expected_gpus: int) -> str:
    """Empty when every expected node is alive with enough GPUs, else what is missing and why."""
    problems = []
    missing = missing_nodes(summary, expected)
    if missing:
        problems.append(
            "Ray does not list {} as alive (expected addresses {}). Check `journalctl -u ray-worker` on them, "
            "that their --node-ip-address is their VLLM_HOST_IP, and that the head's ports are reachable.".format(
                ", ".join(missing), ", ".join(expected[name] for name in missing)
            )
        )
    if expected_gpus and summary["gpus"] < expected_gpus:
        problems.append(
            "Ray sees {:g} GPUs, the plan needs {}. Check that the driver is loaded on every node.".format(
                summary["gpus"], expected_gpus
            )
        )
    return " ".join(problems)
