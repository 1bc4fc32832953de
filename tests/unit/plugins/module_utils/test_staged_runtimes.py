# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Staged runtimes on real directories: a real venv (python -m venv, with pip's console scripts), stamps as
python_runtime writes them, and a vllm.service captured on the sandbox after a deploy with staged runtimes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ansible_collections.llmserve.cluster.plugins.module_utils import _staged_runtimes as venvs

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "systemd" / "runtime_venvs"
# /etc/systemd/system/vllm.service on the sandbox's node2 (rank 1), runtime c5e2d8a61c9d.
CAPTURED_UNIT = FIXTURES / "vllm-native-rank1-staged.service"
FINGERPRINT_OLD = "c5e2d8a61c9d" + "4f" * 26
FINGERPRINT_NEW = "7a1e94c5d3b8" + "e1" * 26


def stamp(directory: Path, fingerprint: str, mtime: float | None = None) -> Path:
    """A runtime directory as python_runtime leaves it: the stamp written last, holding the fingerprint."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / venvs.STAMP_NAME).write_text(fingerprint + "\n")
    if mtime is not None:
        os.utime(directory / venvs.STAMP_NAME, (mtime, mtime))
    return directory


@pytest.fixture(scope="module")
def real_venv(tmp_path_factory) -> Path:
    """A venv built by this interpreter at what was llmserve_venv before runtimes were staged, stamped."""
    base = tmp_path_factory.mktemp("node") / "opt" / "llmserve"
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=120)
    stamp(venv, FINGERPRINT_OLD)
    return venv


def test_a_runtime_is_named_by_the_first_12_hex_of_its_fingerprint():
    assert venvs.runtime_path("/opt/llmserve/venvs/", FINGERPRINT_NEW) == "/opt/llmserve/venvs/7a1e94c5d3b8"
    for bad in ("", "7a1e94c5d3b8", FINGERPRINT_NEW.upper(), FINGERPRINT_NEW + "0", "g" * 64):
        with pytest.raises(ValueError, match="64 lowercase hex"):
            venvs.runtime_name(bad)


def test_only_a_directory_stamped_under_its_own_name_is_ours(tmp_path):
    root = tmp_path / "venvs"
    stamp(root / FINGERPRINT_OLD[:12], FINGERPRINT_OLD)
    stamp(root / "renamed-by-hand", FINGERPRINT_OLD)
    (root / FINGERPRINT_NEW[:12]).mkdir()  # an install that stopped before its stamp
    stamp(root / "someones-venv", "not a fingerprint")
    (root / "a-file").write_text("")
    os.symlink(root / FINGERPRINT_OLD[:12], root / "a-link")
    runtimes = venvs.read_runtimes(str(root))
    assert {runtime.name: runtime.ours for runtime in runtimes} == {
        FINGERPRINT_OLD[:12]: True,
        FINGERPRINT_NEW[:12]: False,
        "renamed-by-hand": False,
        "someones-venv": False,
    }
    assert venvs.runtime_state(runtimes, str(root / FINGERPRINT_OLD[:12]), FINGERPRINT_OLD) == venvs.INSTALLED
    assert venvs.runtime_state(runtimes, str(root / FINGERPRINT_NEW[:12]), FINGERPRINT_NEW) == venvs.PARTIAL
    assert venvs.runtime_state(runtimes, str(root / ("3" * 12)), "3" * 64) == venvs.ABSENT
    assert venvs.read_runtimes(str(tmp_path / "missing")) == []


def test_a_runtime_dir_holding_another_install_is_refused_before_any_change(tmp_path):
    root = tmp_path / "venvs"
    # A 12-hex name whose stamp holds another fingerprint (a prefix collision, or a stamp written by hand).
    colliding = FINGERPRINT_NEW[:12] + "0" * 52
    stamp(root / FINGERPRINT_NEW[:12], colliding)
    runtimes = venvs.read_runtimes(str(root))
    state = venvs.runtime_state(runtimes, str(root / FINGERPRINT_NEW[:12]), FINGERPRINT_NEW)
    assert state == venvs.FOREIGN
    link = venvs.read_link(str(tmp_path / "venv"))
    found = venvs.problems(link, venvs.adoption(link, str(root), runtimes), str(root), FINGERPRINT_NEW, state)
    assert len(found) == 1 and "will not install into it" in found[0] and FINGERPRINT_NEW in found[0]


# --- migrating a venv deployed before runtimes were staged ----------------------------------------------------


def test_a_stamped_venv_at_the_link_path_is_adopted_under_its_stamp(real_venv):
    link = venvs.read_link(str(real_venv))
    root = str(real_venv.parent / "venvs")
    assert link.kind == venvs.DIRECTORY and link.stamp == FINGERPRINT_OLD
    decided = venvs.adoption(link, root, venvs.read_runtimes(root))
    assert decided.action == "adopt" and decided.destination == os.path.join(root, FINGERPRINT_OLD[:12])
    assert venvs.problems(link, decided, root, FINGERPRINT_OLD, venvs.ABSENT) == []


def test_adoption_is_refused_for_what_python_runtime_did_not_stamp(tmp_path):
    root = str(tmp_path / "venvs")
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    unstamped = venvs.adoption(venvs.read_link(str(tmp_path / "venv")), root, [])
    assert (
        unstamped.action == "refuse"
        and "llmserve_venv=" in unstamped.reason
        and "without the stamp" in unstamped.reason
    )
    assert "move that directory away" in unstamped.reason
    (tmp_path / "file").write_text("")
    not_a_dir = venvs.adoption(venvs.read_link(str(tmp_path / "file")), root, [])
    assert not_a_dir.action == "refuse" and "neither a directory nor a link" in not_a_dir.reason


def test_adoption_is_refused_when_its_place_is_taken_or_on_another_filesystem(real_venv, tmp_path):
    link = venvs.read_link(str(real_venv))
    root = tmp_path / "venvs"
    stamp(root / FINGERPRINT_OLD[:12], FINGERPRINT_OLD)
    taken = venvs.adoption(link, str(root), venvs.read_runtimes(str(root)))
    assert taken.action == "refuse" and "exists already" in taken.reason
    elsewhere = venvs.adoption(link, str(tmp_path / "other"), [], same_filesystem=False)
    assert (
        elsewhere.action == "refuse"
        and "another filesystem" in elsewhere.reason
        and "llmserve_venvs_dir" in elsewhere.reason
    )


def test_a_link_or_nothing_at_the_link_path_needs_no_adoption(tmp_path):
    assert venvs.adoption(venvs.read_link(str(tmp_path / "venv")), str(tmp_path), []).action == "none"
    os.symlink("venvs/" + FINGERPRINT_OLD[:12], tmp_path / "venv")
    link = venvs.read_link(str(tmp_path / "venv"))
    # A relative target reads as the absolute path it names.
    assert link.kind == venvs.LINK and link.target == str(tmp_path / "venvs" / FINGERPRINT_OLD[:12])
    assert venvs.adoption(link, str(tmp_path / "venvs"), []).action == "none"


def test_adopting_moves_the_venv_links_it_and_its_scripts_run_its_own_interpreter(real_venv):
    base = real_venv.parent
    destination = base / "venvs" / FINGERPRINT_OLD[:12]
    pip_before = (real_venv / "bin" / "pip").read_bytes()
    assert pip_before.startswith(f"#!{real_venv}/bin/python".encode())
    inode = os.stat(real_venv / "bin" / "pip").st_ino
    rewritten = venvs.adopt(str(real_venv), str(destination))
    assert os.path.islink(real_venv) and os.readlink(real_venv) == str(destination)
    assert (destination / venvs.STAMP_NAME).read_text().strip() == FINGERPRINT_OLD
    assert "pip" in rewritten and "python" not in rewritten  # bin/python is a link to the system interpreter
    pip_after = (destination / "bin" / "pip").read_bytes()
    assert pip_after == pip_before.replace(str(real_venv).encode() + b"/", str(destination).encode() + b"/", 1)
    assert os.access(destination / "bin" / "pip", os.X_OK) and os.stat(destination / "bin" / "pip").st_ino != inode
    # The old path still runs the same venv, and the moved venv's own script runs from its new place.
    ran = subprocess.run(
        [str(destination / "bin" / "pip"), "--version"], capture_output=True, text=True, check=True, timeout=60
    )
    assert str(destination) in ran.stdout
    prefix = subprocess.run(
        [str(real_venv / "bin" / "python"), "-c", "import sys; print(sys.prefix)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert os.path.realpath(prefix.stdout.strip()) == str(destination)
    # Nothing left to adopt: the path is a link now.
    assert venvs.adoption(venvs.read_link(str(real_venv)), str(base / "venvs"), []).action == "none"


def test_a_long_path_trampoline_is_rewritten_too(tmp_path):
    old, new = tmp_path / "venv", tmp_path / "venvs" / FINGERPRINT_OLD[:12]
    (new / "bin").mkdir(parents=True)
    # pip's launcher for an interpreter path too long for a shebang (distlib's ScriptMaker).
    trampoline = f"#!/bin/sh\n'''exec' \"{old}/bin/python\" \"$0\" \"$@\"\n' '''\nimport sys\n"
    (new / "bin" / "vllm").write_text(trampoline)
    (new / "bin" / "vllm").chmod(0o755)
    (new / "bin" / "activate").write_text(f"VIRTUAL_ENV={old}\n")  # not a script with a shebang: left alone
    assert venvs.rewrite_script_paths(str(new), str(old), str(new)) == ["vllm"]
    assert (new / "bin" / "vllm").read_text() == trampoline.replace(str(old) + "/bin/", str(new) + "/bin/")
    assert (new / "bin" / "activate").read_text() == f"VIRTUAL_ENV={old}\n"


# --- switching the link ---------------------------------------------------------------------------------------


def test_the_link_switches_by_one_rename_and_only_when_it_names_another_runtime(tmp_path):
    first = stamp(tmp_path / "venvs" / FINGERPRINT_OLD[:12], FINGERPRINT_OLD)
    second = stamp(tmp_path / "venvs" / FINGERPRINT_NEW[:12], FINGERPRINT_NEW)
    link = tmp_path / "venv"
    assert venvs.switch_link(str(link), str(first)) is True
    assert os.readlink(link) == str(first)
    assert venvs.switch_link(str(link), str(first)) is False
    assert venvs.switch_link(str(link), str(second)) is True
    assert os.readlink(link) == str(second)
    assert sorted(os.listdir(tmp_path)) == ["venv", "venvs"]  # no temporary link left behind
    (tmp_path / "real").mkdir()
    with pytest.raises(ValueError, match="not a link"):
        venvs.switch_link(str(tmp_path / "real"), str(second))


# --- which runtimes the units name, and pruning --------------------------------------------------------------


def test_the_captured_unit_names_its_runtime_directory():
    text = CAPTURED_UNIT.read_text()
    named = venvs.runtimes_named_by_units({"vllm.service": text}, "/opt/llmserve/venvs")
    assert named == {"/opt/llmserve/venvs/c5e2d8a61c9d": ["vllm.service"]}


def test_a_unit_written_before_staging_holds_what_the_link_names():
    old_unit = CAPTURED_UNIT.read_text().replace("/opt/llmserve/venvs/c5e2d8a61c9d", "/opt/llmserve/venv")
    link = venvs.LinkState(path="/opt/llmserve/venv", kind=venvs.LINK, target="/opt/llmserve/venvs/c5e2d8a61c9d")
    named = venvs.runtimes_named_by_units({"vllm.service": old_unit}, "/opt/llmserve/venvs", link)
    assert named == {"/opt/llmserve/venvs/c5e2d8a61c9d": ["vllm.service"]}
    # The link's path is not a prefix match: /opt/llmserve/venvs/... alone does not name the link.
    assert venvs.runtimes_named_by_units({"vllm.service": CAPTURED_UNIT.read_text()}, "/srv/other", link) == {}


def runtime(root: Path, fingerprint: str, installed_at: float) -> venvs.Runtime:
    path = stamp(root / fingerprint[:12], fingerprint, installed_at)
    return venvs.Runtime(path=str(path), name=path.name, stamp=fingerprint, installed_at=installed_at)


def test_pruning_keeps_the_current_the_newest_others_and_what_a_unit_names(tmp_path):
    root = tmp_path / "venvs"
    oldest, older, previous, current = (
        runtime(root, digit * 64, installed_at)
        for digit, installed_at in (("1", 100), ("2", 200), ("3", 300), ("4", 400))
    )
    unstamped = root / ("5" * 12)
    unstamped.mkdir()
    runtimes = venvs.read_runtimes(str(root))
    assert [r.installed_at for r in runtimes if r.ours] == [100, 200, 300, 400]
    decided = venvs.to_prune(runtimes, current.path, [], keep=2)
    assert decided.keep == [previous.path, current.path]
    assert decided.remove == [oldest.path, older.path]
    assert decided.left == [str(unstamped)]
    # A unit that still names the oldest (a rollback put its unit back) keeps it.
    named = venvs.to_prune(runtimes, current.path, [oldest.path], keep=2)
    assert named.remove == [older.path]
    # keep=1: only the one in use; a rolled-back current older than the others still stays.
    assert venvs.to_prune(runtimes, previous.path, [], keep=1).remove == [oldest.path, older.path, current.path]
    assert venvs.to_prune(runtimes, current.path, [], keep=10).remove == []
    with pytest.raises(ValueError, match="python_runtime_keep must be 1 or more"):
        venvs.to_prune(runtimes, current.path, [], keep=0)


def test_removing_checks_each_directory_again(tmp_path):
    root = tmp_path / "venvs"
    ours = stamp(root / FINGERPRINT_OLD[:12], FINGERPRINT_OLD)
    # Its stamp went between the decision and the removal: it is no longer ours to delete.
    unstamped = root / FINGERPRINT_NEW[:12]
    unstamped.mkdir(parents=True)
    link = tmp_path / "venv"
    os.symlink(ours, link)
    removed = venvs.remove([str(ours), str(unstamped), str(link)], str(root), str(link))
    assert removed == [str(ours), str(link)]
    assert unstamped.is_dir() and not ours.exists() and not os.path.lexists(link)
    with pytest.raises(ValueError, match="not a runtime under"):
        venvs.remove([str(tmp_path)], str(root), str(link))


def test_teardown_removes_our_runtimes_and_the_link_and_names_the_rest(tmp_path):
    root = tmp_path / "venvs"
    ours = stamp(root / FINGERPRINT_OLD[:12], FINGERPRINT_OLD)
    theirs = root / "site-tools"
    theirs.mkdir()
    os.symlink(ours, tmp_path / "venv")
    decided = venvs.teardown(venvs.read_link(str(tmp_path / "venv")), venvs.read_runtimes(str(root)))
    assert decided.remove == [str(ours), str(tmp_path / "venv")]
    assert decided.left == [str(theirs)]
    # A venv still at the link's path goes only with our stamp.
    (tmp_path / "venv").unlink()
    (tmp_path / "venv").mkdir()
    assert venvs.teardown(venvs.read_link(str(tmp_path / "venv")), []).left == [str(tmp_path / "venv")]
