# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""runtime_venvs run by ansible-core itself on localhost, on real directories: read, adopt, commit, teardown."""

from __future__ import annotations

import os
from pathlib import Path

from adhoc import run_module

FINGERPRINT_OLD = "c5e2d8a61c9d" + "4f" * 26
FINGERPRINT_NEW = "7a1e94c5d3b8" + "e1" * 26
CAPTURED_UNIT = (
    Path(__file__).resolve().parents[2] / "fixtures" / "systemd" / "runtime_venvs" / "vllm-native-rank1-staged.service"
)


def runtime(directory: Path, fingerprint: str, mtime: float) -> Path:
    (directory / "bin").mkdir(parents=True)
    (directory / "bin" / "vllm").write_text(f"#!{directory}/bin/python\nprint('vllm')\n")
    (directory / ".llmserve-installed").write_text(fingerprint + "\n")
    os.utime(directory / ".llmserve-installed", (mtime, mtime))
    return directory


def ok(result: dict) -> dict:
    assert not result["_failed"], result
    return result


def test_a_fresh_node_reads_where_its_first_runtime_goes(tmp_path):
    result = ok(
        run_module(
            "runtime_venvs",
            {"link": str(tmp_path / "venv"), "root": str(tmp_path / "venvs"), "fingerprint": FINGERPRINT_NEW},
        )
    )
    assert result["changed"] is False and result["link"]["kind"] == "absent"
    assert result["runtime"] == str(tmp_path / "venvs" / FINGERPRINT_NEW[:12])
    assert result["runtime_state"] == "absent" and result["problems"] == [] and result["adoption"]["action"] == "none"


def test_a_venv_deployed_before_staging_is_adopted_and_check_mode_leaves_it(tmp_path):
    venv = runtime(tmp_path / "venv", FINGERPRINT_OLD, 100)
    arguments = {
        "link": str(venv),
        "root": str(tmp_path / "venvs"),
        "fingerprint": FINGERPRINT_OLD,
        "state": "adopted",
    }
    checked = ok(run_module("runtime_venvs", arguments, check=True))
    assert checked["changed"] is True and venv.is_dir() and not venv.is_symlink()
    adopted = ok(run_module("runtime_venvs", arguments))
    destination = tmp_path / "venvs" / FINGERPRINT_OLD[:12]
    assert adopted["changed"] is True and adopted["rewritten"] == ["vllm"]
    assert os.readlink(venv) == str(destination)
    assert (destination / "bin" / "vllm").read_text().startswith(f"#!{destination}/bin/python\n")
    # After the move the runtime this run wants is the adopted one: nothing to install.
    assert adopted["runtime_state"] == "installed" and adopted["link"]["target"] == str(destination)
    assert ok(run_module("runtime_venvs", arguments))["changed"] is False


def test_an_unstamped_directory_at_the_link_path_is_refused_naming_the_variable(tmp_path):
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    arguments = {"link": str(tmp_path / "venv"), "root": str(tmp_path / "venvs"), "fingerprint": FINGERPRINT_NEW}
    read = ok(run_module("runtime_venvs", arguments))
    assert read["adoption"]["action"] == "refuse" and "llmserve_venv=" in read["problems"][0]
    refused = run_module("runtime_venvs", {**arguments, "state": "adopted"})
    assert refused["_failed"] and "without the stamp" in refused["msg"]
    assert (tmp_path / "venv").is_dir() and not (tmp_path / "venvs").exists()


def test_commit_switches_the_link_and_prunes_beyond_keep_but_not_what_a_unit_names(tmp_path):
    root = tmp_path / "venvs"
    first = runtime(root / FINGERPRINT_OLD[:12], FINGERPRINT_OLD, 100)
    second = runtime(root / ("1" * 12), "1" * 64, 200)
    new = runtime(root / FINGERPRINT_NEW[:12], FINGERPRINT_NEW, 300)
    (root / "not-ours").mkdir()
    os.symlink(second, tmp_path / "venv")
    unit_dir = tmp_path / "systemd"
    unit_dir.mkdir()
    # The sandbox's unit, naming the oldest runtime (as a unit put back by a rollback would).
    (unit_dir / "vllm.service").write_text(
        CAPTURED_UNIT.read_text().replace("/opt/llmserve/venvs/c5e2d8a61c9d", str(first))
    )
    arguments = {
        "link": str(tmp_path / "venv"),
        "root": str(root),
        "state": "committed",
        "target": str(new),
        "keep": 1,
        "units": ["vllm.service", "ray-worker.service"],
        "unit_dir": str(unit_dir),
    }
    checked = ok(run_module("runtime_venvs", arguments, check=True))
    assert checked["changed"] is True and os.readlink(tmp_path / "venv") == str(second) and second.is_dir()
    committed = ok(run_module("runtime_venvs", arguments))
    assert committed["switched"] is True and os.readlink(tmp_path / "venv") == str(new)
    assert committed["removed"] == [str(second)] and not second.exists()
    assert committed["kept"] == sorted([str(first), str(new)]) and first.is_dir()
    assert committed["left"] == [str(root / "not-ours")] and (root / "not-ours").is_dir()
    assert ok(run_module("runtime_venvs", arguments))["changed"] is False


def test_commit_refuses_a_runtime_without_a_complete_install(tmp_path):
    (tmp_path / "venvs" / FINGERPRINT_NEW[:12]).mkdir(parents=True)
    refused = run_module(
        "runtime_venvs",
        {
            "link": str(tmp_path / "venv"),
            "root": str(tmp_path / "venvs"),
            "state": "committed",
            "target": str(tmp_path / "venvs" / FINGERPRINT_NEW[:12]),
        },
    )
    assert refused["_failed"] and "no complete install stamp" in refused["msg"]
    assert not os.path.lexists(tmp_path / "venv")


def test_teardown_removes_the_runtimes_and_the_link_and_leaves_the_rest(tmp_path):
    root = tmp_path / "venvs"
    ours = runtime(root / FINGERPRINT_OLD[:12], FINGERPRINT_OLD, 100)
    os.symlink(ours, tmp_path / "venv")
    arguments = {"link": str(tmp_path / "venv"), "root": str(root), "state": "absent"}
    removed = ok(run_module("runtime_venvs", arguments))
    assert removed["removed"] == [str(ours), str(tmp_path / "venv"), str(root)]
    assert os.listdir(tmp_path) == []
    runtime(root / FINGERPRINT_OLD[:12], FINGERPRINT_OLD, 100)
    (root / "site-tools").mkdir()
    left = ok(run_module("runtime_venvs", arguments))
    assert left["left"] == [str(root / "site-tools")] and os.listdir(root) == ["site-tools"]
