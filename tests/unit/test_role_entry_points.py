# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Every task file a playbook or role calls with ``tasks_from`` has an argument-spec entry point of that name.

Ansible looks the entry point up by the literal ``tasks_from`` value (``tasks_from: preflight.yml`` looks for an
entry point named ``preflight.yml``), and a call without one runs unchecked. So calls name the file without its
extension and the entry point carries the same name. An entry point's options are main's options (the same
mapping, a YAML alias), so the test that keeps main equal to defaults/main.yml covers them too.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ROLES_DIR = ROOT / "roles"
COLLECTION_PREFIX = "llmserve.cluster."
ROLE_ACTIONS = {"include_role", "import_role", "ansible.builtin.include_role", "ansible.builtin.import_role"}


def load_yaml(path: Path):
    with path.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def role_calls(node, where: str):
    """(where, role, tasks_from) for every include_role/import_role with tasks_from anywhere inside node."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ROLE_ACTIONS and isinstance(value, dict) and "tasks_from" in value:
                yield where, str(value.get("name", "")), str(value["tasks_from"])
            yield from role_calls(value, where)
    elif isinstance(node, list):
        for item in node:
            yield from role_calls(item, where)


def task_files():
    for directory in [ROOT / "playbooks", *sorted(ROLES_DIR.glob("*/tasks")), *sorted(ROLES_DIR.glob("*/handlers"))]:
        yield from sorted(directory.rglob("*.yml"))


def all_calls():
    calls = []
    for path in task_files():
        calls.extend(role_calls(load_yaml(path), str(path.relative_to(ROOT))))
    return calls


def argument_specs(role: str) -> dict:
    path = ROLES_DIR / role / "meta" / "argument_specs.yml"
    return (load_yaml(path) or {}).get("argument_specs") or {} if path.is_file() else {}


CALLS = all_calls()
ROLES = sorted(p.name for p in ROLES_DIR.iterdir() if p.is_dir())


def test_the_finder_sees_tasks_from_calls():
    task = {"name": "x", "ansible.builtin.include_role": {"name": "llmserve.cluster.ray_node", "tasks_from": "wait"}}
    assert list(role_calls([{"block": [task]}], "here")) == [("here", "llmserve.cluster.ray_node", "wait")]
    assert CALLS, "no tasks_from call found under playbooks/ or roles/: the finder is broken"


@pytest.mark.parametrize(("where", "role_name", "tasks_from"), CALLS, ids=[f"{c[0]}:{c[2]}" for c in CALLS])
def test_tasks_from_has_an_entry_point(where, role_name, tasks_from):
    role = role_name.removeprefix(COLLECTION_PREFIX)
    assert (ROLES_DIR / role).is_dir(), f"{where}: include_role {role_name} is not a role of this collection"
    name = Path(tasks_from).stem
    assert tasks_from == name, (
        f"{where}: write `tasks_from: {name}` (no extension); Ansible looks the argument spec up by the literal "
        f"value, so `{tasks_from}` would skip the `{name}` entry point"
    )
    assert (ROLES_DIR / role / "tasks" / f"{name}.yml").is_file(), f"{where}: roles/{role}/tasks/{name}.yml missing"
    assert name in argument_specs(role), (
        f"{where}: calls roles/{role}/tasks/{name}.yml, which has no argument-spec entry point; add `{name}:` to "
        f"roles/{role}/meta/argument_specs.yml with the options that file reads (aliases of main's)"
    )


@pytest.mark.parametrize("role", ROLES)
def test_entry_points_are_task_files_with_main_options(role):
    specs = argument_specs(role)
    main_options = (specs.get("main") or {}).get("options") or {}
    for entry_point, spec in specs.items():
        assert (ROLES_DIR / role / "tasks" / f"{entry_point}.yml").is_file(), (
            f"role {role}: entry point {entry_point} has no tasks/{entry_point}.yml"
        )
        assert spec.get("short_description") and spec.get("description"), (
            f"role {role}: entry point {entry_point} needs short_description and description (the docs show both)"
        )
        if entry_point == "main":
            continue
        options = spec.get("options") or {}
        if not main_options and options and all(value.get("required") for value in options.values()):
            # An internal role (serving_unit) has no defaults: its caller states every option of the entry
            # point it includes, so there is no main option list to share.
            continue
        for option, value in options.items():
            if option not in main_options:
                # An input only this entry point reads, and only when it is set (plan's llmserve_plan_cluster):
                # it has no role default, so main does not list it.
                assert "default" not in value and not value.get("required"), (
                    f"role {role}: {entry_point} option {option} is not an option of main; only an optional input "
                    "without a default may be"
                )
                continue
            assert value == main_options[option], (
                f"role {role}: {entry_point} option {option} differs from main's; use the alias *{option}"
            )
