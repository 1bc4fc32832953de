# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Every role's defaults/main.yml and the `main` entry point of its meta/argument_specs.yml say the same thing.

Same keys on both sides, and each default equal to the option's ``default:``. Ansible does not
apply argument_specs defaults, so a default only in argument_specs documents a value the role never
gets. Roles without defaults have nothing to compare and pass.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROLES_DIR = Path(__file__).resolve().parents[2] / "roles"
ROLES = sorted(p.name for p in ROLES_DIR.iterdir() if p.is_dir()) if ROLES_DIR.is_dir() else []


def load_yaml(path: Path):
    with path.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def role_file(role: str, *parts: str) -> Path | None:
    """defaults/main.yml or defaults/main.yaml (Ansible accepts both)."""
    base = ROLES_DIR / role / Path(*parts)
    for candidate in (base.with_suffix(".yml"), base.with_suffix(".yaml")):
        if candidate.is_file():
            return candidate
    return None


def test_the_collection_has_roles():
    assert ROLES, f"no roles found under {ROLES_DIR}"


@pytest.mark.parametrize("role", ROLES)
def test_defaults_equal_argument_specs(role):
    defaults_file = role_file(role, "defaults", "main")
    if defaults_file is None:
        return
    defaults = load_yaml(defaults_file) or {}
    assert isinstance(defaults, dict), f"role {role}: defaults/main.yml is not a mapping"

    specs_file = role_file(role, "meta", "argument_specs")
    assert specs_file is not None, f"role {role}: has defaults but no meta/argument_specs.yml"
    specs = (load_yaml(specs_file) or {}).get("argument_specs") or {}
    assert "main" in specs, f"role {role}: meta/argument_specs.yml has no 'main' entry point"
    options = specs["main"].get("options") or {}

    missing_from_specs = sorted(set(defaults) - set(options))
    assert not missing_from_specs, f"role {role}: defaults not in argument_specs main: {missing_from_specs}"

    with_default = {name for name, option in options.items() if "default" in (option or {})}
    missing_from_defaults = sorted(with_default - set(defaults))
    assert not missing_from_defaults, (
        f"role {role}: argument_specs main gives a default to {missing_from_defaults}, missing from defaults/main.yml"
    )

    differing = {
        name: {"defaults/main.yml": value, "argument_specs": (options[name] or {}).get("default")}
        for name, value in defaults.items()
        if "default" not in (options[name] or {}) or (options[name] or {})["default"] != value
    }
    assert not differing, f"role {role}: defaults differ from argument_specs main: {differing}"
