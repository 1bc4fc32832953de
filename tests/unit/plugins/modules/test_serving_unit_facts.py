# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""serving_unit_facts run by ansible-core itself on localhost, reading real files, accounts and directories.

This machine runs no systemd as PID 1, so the unit reads are tested on captured output
(module_utils/test_serving_unit.py); here the module reads what a node keeps besides its units.
"""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path

import pytest
from adhoc import run_module as run_adhoc


def facts_of(result: dict) -> dict:
    assert not result["_failed"], result
    assert result["changed"] is False
    return result["ansible_facts"]["llmserve_serving_unit"]


def test_a_configured_node_reads_as_ready(tmp_path):
    config_dir = tmp_path / "llmserve"
    config_dir.mkdir()
    config_dir.chmod(0o755)
    (config_dir / "api-key").write_text("secret\n")
    plan = {"nodes": [{"name": "node1"}], "vllm_args": ["--tensor-parallel-size", "1"]}
    (config_dir / "plan.json").write_text(json.dumps(plan, indent=4, sort_keys=True) + "\n")
    root = pwd.getpwuid(os.getuid())
    facts = facts_of(
        run_adhoc(
            "serving_unit_facts",
            {
                "user": root.pw_name,
                "home": root.pw_dir,
                "config_dir": str(config_dir),
                "config_dir_owner": root.pw_name,
                "config_dir_group": Path(config_dir).group(),
                "secret_file": str(config_dir / "api-key"),
                "plan_file": str(config_dir / "plan.json"),
            },
            check=True,
        )
    )
    assert facts["units"] == {}
    assert facts["account"]["exists"] and facts["account"]["home"] == root.pw_dir
    # The account's shell is a login shell here, not /usr/sbin/nologin: the role would correct it.
    assert facts["account"]["ready"] is (root.pw_shell == "/usr/sbin/nologin")
    assert facts["config_dir"] == {
        "path": str(config_dir),
        "exists": True,
        "owner": root.pw_name,
        "group": Path(config_dir).group(),
        "mode": "0755",
        "ready": True,
    }
    assert facts["secret_file"] == {"path": str(config_dir / "api-key"), "present": True}
    assert facts["plan"] == plan and facts["plan_error"] is None


def test_a_fresh_node_reads_as_nothing_done(tmp_path):
    facts = facts_of(
        run_adhoc(
            "serving_unit_facts",
            {
                "user": "llmserve-not-created",
                "config_dir": str(tmp_path / "missing"),
                "secret_file": str(tmp_path / "missing" / "api-key"),
                "plan_file": str(tmp_path / "missing" / "plan.json"),
            },
        )
    )
    assert facts["account"] == {
        "name": "llmserve-not-created",
        "exists": False,
        "uid": None,
        "home": None,
        "shell": None,
        "home_present": False,
        "ready": False,
    }
    assert facts["config_dir"]["exists"] is False and facts["config_dir"]["ready"] is False
    assert facts["secret_file"]["present"] is False
    assert facts["plan"] is None and facts["plan_error"] is None


def test_a_broken_plan_file_is_reported_not_fatal(tmp_path):
    (tmp_path / "plan.json").write_text('{"nodes": [')
    facts = facts_of(
        run_adhoc(
            "serving_unit_facts",
            {"user": "root", "config_dir": str(tmp_path), "plan_file": str(tmp_path / "plan.json")},
        )
    )
    assert facts["plan"] is None
    assert facts["plan_error"].startswith("not JSON")
    assert facts["secret_file"] == {"path": None, "present": None}


@pytest.mark.skipif(Path("/run/systemd/system").is_dir(), reason="systemd runs here: systemctl answers")
def test_a_node_whose_systemctl_cannot_answer_fails_with_its_words(tmp_path):
    result = run_adhoc("serving_unit_facts", {"user": "root", "config_dir": str(tmp_path), "units": ["vllm.service"]})
    assert result["_failed"]
    assert result["msg"].startswith("systemctl show failed")
    assert "systemd" in result["msg"]
