# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""validate_inventory through ansible-playbook: it sees role defaults, the inventory and -e as the tasks would.

The play only runs the action on the controller (delegate_to localhost), so the hosts need not exist.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[4]
PLAYBOOK = """
- name: Validate
  hosts: llmserve_cluster
  gather_facts: false
  roles:
    - role: llmserve.cluster.llmserve
  tasks:
    - name: Check groups and llmserve settings
      llmserve.cluster.validate_inventory:
      run_once: true
      delegate_to: localhost
      register: report

    - name: Show the report
      ansible.builtin.debug:
        msg: "REPORT {{ report | to_json }}"
      run_once: true
"""


def validate(tmp_path: Path, host_vars: dict, *extra: str) -> tuple[int, dict | None, str]:
    inventory = {
        "llmserve_cluster": {
            "vars": {"llmserve_model_source": "shared_path"},
            "children": {
                "ray_head": {"hosts": {"node1": {"ansible_host": "192.0.2.11", **host_vars.get("node1", {})}}},
                "ray_workers": {"hosts": {"node2": {"ansible_host": "192.0.2.12", **host_vars.get("node2", {})}}},
            },
        }
    }
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(inventory))
    (tmp_path / "validate.yml").write_text(PLAYBOOK)
    environment = dict(
        os.environ,
        ANSIBLE_COLLECTIONS_PATH=str(REPO_ROOT / ".build" / "collections"),
        ANSIBLE_LOCALHOST_WARNING="false",
        ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default",
        ANSIBLE_CALLBACK_RESULT_FORMAT="json",
    )
    command = [
        str(Path(sys.executable).parent / "ansible-playbook"),
        "-i",
        str(tmp_path / "hosts.yml"),
        str(tmp_path / "validate.yml"),
        "-e",
        f"ansible_python_interpreter={sys.executable}",
        *extra,
    ]
    run = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=120, check=False)
    output = run.stdout + run.stderr
    report = None
    for line in output.splitlines():
        if '"msg": "REPORT ' in line:
            report = json.loads(json.loads("{" + line.strip().rstrip(",") + "}")["msg"][len("REPORT ") :])
    return run.returncode, report, output


def test_a_good_inventory_passes_with_the_role_defaults(tmp_path):
    returncode, report, output = validate(tmp_path, {})
    assert returncode == 0, output
    assert report["errors"] == []
    assert "[WARNING]" not in output
    assert report["msg"] == "Inventory checks passed for 2 host(s)."


def test_a_per_host_pin_is_compared_with_the_role_default_of_the_other_hosts(tmp_path):
    """node1 has no llmserve_vllm_version of its own: the llmserve role's 0.32.0 is what it would install."""
    returncode, _report, output = validate(tmp_path, {"node2": {"llmserve_vllm_version": "0.31.0"}})
    assert returncode != 0
    flat = " ".join(output.split())
    assert "llmserve_vllm_version differs between hosts (node1: '0.32.0'; node2: '0.31.0')" in flat
    # python_runtime_packages is a template over it in python_runtime's defaults, rendered per host.
    assert (
        "python_runtime_packages differs between hosts (node1: ['vllm==0.32.0', 'ray[default]==2.60.0']; "
        "node2: ['vllm==0.31.0', 'ray[default]==2.60.0'])" in flat
    )


def test_extra_vars_templated_defaults_and_undefined_variables(tmp_path):
    """llmserve_served_model_name defaults to a template over llmserve_model_path, and -e wins over everything."""
    returncode, _report, output = validate(
        tmp_path,
        {"node2": {"vllm_serve_port": "{{ api_port_that_nobody_defined }}"}},
        "-e",
        '{"llmserve_model_path": "/srv/models/My Model"}',
    )
    assert returncode != 0
    flat = " ".join(output.split())
    assert "llmserve_served_model_name on node1 is 'My Model'" in flat
    assert "llmserve_served_model_name on node2 is 'My Model'" in flat
    assert "vllm_serve_port on node2 cannot be evaluated" in flat
    assert "The inventory has 3 problem(s); nothing was changed" in flat


def test_every_role_default_path_passes_and_a_derived_path_is_checked(tmp_path):
    """The roles' own default paths (llama_cpp's included) pass; a role path templated over an llmserve_ one is
    checked as rendered, and the bind addresses that need the probes' facts are left to later."""
    returncode, report, output = validate(tmp_path, {})
    assert returncode == 0, output
    assert not report.get("warnings"), report
    returncode, _report, output = validate(tmp_path, {}, "-e", '{"llmserve_api_key_path": "/etc/api-key"}')
    flat = " ".join(output.split())
    assert returncode != 0
    assert "llmserve_api_key_path on node1 is '/etc/api-key', in /etc, a top-level directory" in flat
    assert "cannot be evaluated" not in flat


def test_a_bind_address_set_in_the_inventory_is_checked(tmp_path):
    returncode, report, output = validate(tmp_path, {"node1": {"vllm_serve_host": "0.0.0.0"}})
    assert returncode == 0, output
    assert any(
        warning.startswith("vllm_serve_host on node1 is '0.0.0.0', every interface") for warning in report["warnings"]
    )
