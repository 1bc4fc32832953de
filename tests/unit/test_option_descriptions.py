# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Every option of every role entry point and module has a description that says more than its name.

The generated docs (docs/collections/) are built from these, so a placeholder such as ``ray node user`` for
``ray_node_user`` would be published as the documentation.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SPEC_FILES = sorted((ROOT / "roles").glob("*/meta/argument_specs.yml"))
MODULE_FILES = sorted((ROOT / "plugins" / "modules").glob("*.py"))


def text(description) -> str:
    return " ".join(description) if isinstance(description, list) else str(description or "")


def words(value: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", value.lower())


def weak(name: str, description, prefixes: tuple[str, ...] = ()) -> str | None:
    """Why the description is a placeholder, or None."""
    said = words(text(description))
    if not said:
        return "no description"
    named = words(name)
    for prefix in prefixes:
        if named[: len(words(prefix))] == words(prefix):
            named_without_prefix = named[len(words(prefix)) :]
            if said == named_without_prefix:
                return "restates the option name"
    if said == named:
        return "restates the option name"
    return None


def options_of(options: dict, path: str = ""):
    for name, option in (options or {}).items():
        yield path + name, name, option or {}
        yield from options_of((option or {}).get("suboptions") or {}, f"{path}{name}.")


def role_options(path: Path):
    role = path.parts[-3]
    for entry_point, spec in ((yaml.safe_load(path.read_text(encoding="utf-8")) or {})["argument_specs"]).items():
        for full, name, option in options_of(spec.get("options")):
            yield f"{entry_point}:{full}", name, option.get("description"), (role,)


def module_options(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "DOCUMENTATION":
            for full, name, option in options_of(yaml.safe_load(node.value.value).get("options")):
                yield full, name, option.get("description"), ()
            return
    yield "DOCUMENTATION", path.stem, None, ()


FILES = [(path, role_options) for path in SPEC_FILES] + [(path, module_options) for path in MODULE_FILES]


def test_the_check_catches_a_placeholder():
    assert weak("ray_node_user", "ray node user", ("ray_node",)) == "restates the option name"
    assert weak("ray_node_user", "user", ("ray_node",)) == "restates the option name"
    assert weak("ray_node_user", None) == "no description"
    assert weak("ray_node_user", "System account both Ray units run as.", ("ray_node",)) is None


def test_options_were_found():
    found = sum(len(list(reader(path))) for path, reader in FILES)
    assert found > 100, f"only {found} options found: the scan of specs and modules is broken"


@pytest.mark.parametrize(("path", "reader"), FILES, ids=[str(entry[0].relative_to(ROOT)) for entry in FILES])
def test_every_option_has_a_real_description(path, reader):
    problems = [
        f"{where}: {text(description)!r} {problem}"
        for where, name, description, prefixes in reader(path)
        if (problem := weak(name, description, prefixes))
    ]
    assert not problems, f"{path.relative_to(ROOT)}: say what each option does and when to change it: {problems}"
