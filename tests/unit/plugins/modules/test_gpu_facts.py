# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
from __future__ import annotations

import json

import pytest
from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.testing import patch_module_args

from ansible_collections.llmserve.cluster.plugins.modules import gpu_facts


def run_module(capsys):
    with patch_module_args({}), pytest.raises(SystemExit) as exited:
        gpu_facts.main()
    return exited.value.code, json.loads(capsys.readouterr().out)


def fake_commands(monkeypatch, responses):
    """Answer the two fabric manager commands the way a host would; record what ran."""
    ran = []

    def get_bin_path(self, name, required=False, opt_dirs=None):
        return {"systemctl": "/usr/bin/systemctl", "nv-fabricmanager": "/usr/bin/nv-fabricmanager"}.get(name)

    def run_command(self, args, **kwargs):
        ran.append(args)
        return responses[args[0]]

    monkeypatch.setattr(AnsibleModule, "get_bin_path", get_bin_path)
    monkeypatch.setattr(AnsibleModule, "run_command", run_command)
    return ran


def test_nvswitch_host_reports_fabric_manager_state(monkeypatch, capsys, nvml_replay):
    monkeypatch.setattr(gpu_facts, "pynvml", nvml_replay("h100_sxm_8x.json"))
    ran = fake_commands(
        monkeypatch,
        {
            "/usr/bin/systemctl": (0, "active\n", ""),
            "/usr/bin/nv-fabricmanager": (0, "Fabric Manager version is : 550.54.15\n", ""),
        },
    )

    rc, result = run_module(capsys)

    assert rc == 0
    assert result["changed"] is False
    facts = result["ansible_facts"]["llmserve_gpu"]
    assert facts["gpu_count"] == 8
    assert facts["fabric_manager_active"] is True
    assert facts["fabric_manager_version"] == "550.54.15"
    assert ran == [
        ["/usr/bin/systemctl", "is-active", "nvidia-fabricmanager"],
        ["/usr/bin/nv-fabricmanager", "--version"],
    ]


def test_host_without_nvswitch_runs_no_command(monkeypatch, capsys, nvml_replay):
    monkeypatch.setattr(gpu_facts, "pynvml", nvml_replay("a10_1x.json"))
    ran = fake_commands(monkeypatch, {})

    rc, result = run_module(capsys)

    assert rc == 0
    facts = result["ansible_facts"]["llmserve_gpu"]
    assert facts["gpus"][0]["name"] == "NVIDIA A10"
    assert facts["fabric_manager_active"] is None
    assert ran == []


def test_host_without_the_driver_succeeds_with_a_reason(monkeypatch, capsys, nvml_replay):
    monkeypatch.setattr(gpu_facts, "pynvml", nvml_replay("no_library.json"))

    rc, result = run_module(capsys)

    assert rc == 0
    facts = result["ansible_facts"]["llmserve_gpu"]
    assert facts["available"] is False
    assert "libnvidia-ml.so.1" in facts["reason"]


def test_host_without_pynvml_succeeds_with_a_reason(monkeypatch, capsys):
    monkeypatch.setattr(gpu_facts, "pynvml", None)

    rc, result = run_module(capsys)

    assert rc == 0
    assert "nvidia-ml-py" in result["ansible_facts"]["llmserve_gpu"]["reason"]
