# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The cluster_status module through ansible-core: the report it returns and the HTML page it writes."""

from __future__ import annotations

from adhoc import run_module
from status_shapes import answered_endpoint, sandbox_node


def arguments(nvml_replay, html_path=None) -> dict:
    nodes = {"node1": sandbox_node("10.77.6.11", nvml_replay), "node2": sandbox_node("10.77.6.12", nvml_replay)}
    for node in nodes.values():
        # Only the properties the report reads travel in this test; the playbook passes systemd_service's whole result.
        for unit in node["units"]:
            unit["status"] = {
                key: unit["status"][key] for key in ("Id", "LoadState", "ActiveState", "SubState", "NRestarts")
            }
    result = {
        "backend": "native",
        "head": "node1",
        "nodes": nodes,
        "endpoint": answered_endpoint(),
        "served_model_name": "tiny-llama",
    }
    if html_path:
        result["html_path"] = str(html_path)
    return result


def test_report_and_placement_come_back_healthy(nvml_replay):
    result = run_module("cluster_status", arguments(nvml_replay))
    assert not result["_failed"], result
    assert result["healthy"] and result["problems"] == []
    assert not result["changed"] and result["html_path"] is None
    assert [node["name"] for node in result["placement"]] == ["node1", "node2"]
    assert result["placement"][1]["gpus"][0]["tensor_parallel_rank"] == 1
    assert "vllm active (running)" in result["report"]


def test_html_page_is_written_once_and_never_in_check_mode(nvml_replay, tmp_path):
    page = tmp_path / "status.html"
    checked = run_module("cluster_status", arguments(nvml_replay, page), check=True)
    assert not checked["_failed"] and not checked["changed"] and not page.exists()
    written = run_module("cluster_status", arguments(nvml_replay, page))
    assert written["changed"] and page.read_text().startswith("<!DOCTYPE html>")
    # Each card lists the units the node has, not every unit the collection knows.
    assert page.read_text().count('<span class="ok">vllm.service active</span>') == 2
    assert "ray-head.service" not in page.read_text()
    assert oct(page.stat().st_mode & 0o777) == "0o644"
    again = run_module("cluster_status", arguments(nvml_replay, page))
    assert not again["changed"]


def test_a_recorded_driver_reboot_comes_back_as_a_note_and_the_cluster_stays_healthy(nvml_replay):
    # What status.yml passes for node1 when nvidia_driver recorded a reboot (the file's JSON, decoded).
    record = {
        "action": "pending",
        "consent": False,
        "host": "node1",
        "installed_driver_version": "580.142",
        "loaded_driver_version": "570.195.03",
        "reason": "it serves (vllm.service is active; the plan in effect has it as node rank 0), so it reboots only "
        "with consent: deploy.yml -e llmserve_allow_reboot=true stops its serving group, reboots node by node and "
        "brings the group back",
        "serving": ["vllm.service is active", "the plan in effect has it as node rank 0"],
    }
    args = arguments(nvml_replay)
    args["nodes"]["node1"]["reboot_pending"] = record
    result = run_module("cluster_status", args)
    assert not result["_failed"], result
    assert result["healthy"]
    assert result["warnings_found"] == [
        "node1: reboot pending: driver 580.142 installed, 570.195.03 loaded; " + record["reason"] + "."
    ]
    assert "NOTE: node1: reboot pending: driver 580.142 installed, 570.195.03 loaded;" in result["report"]
