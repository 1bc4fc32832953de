# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""One source per fact: the configuration directory, the plan file, the serving units and the API port live in
the llmserve role (defaults for settings, vars for facts), and no playbook or other role spells them out again.

Then the API port every playbook reads, rendered with Ansible's own templating the way a play sees it, follows
the backend in use, and a non-default llama_cpp_port reaches status.yml and deploy.yml's report.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template

REPO_ROOT = Path(__file__).resolve().parents[2]
LLMSERVE_ROLE = REPO_ROOT / "roles" / "llmserve"
HOMES = {LLMSERVE_ROLE / "defaults" / "main.yml", LLMSERVE_ROLE / "vars" / "main.yml"}
# The llmserve role's argument_specs repeat its defaults by design (tests/unit/test_role_argument_specs.py).
SCAN_EXEMPT = HOMES | {LLMSERVE_ROLE / "meta" / "argument_specs.yml"}
UNIT_NAMES = ("vllm.service", "ray-head.service", "ray-worker.service", "llama-server.service", "llama-rpc.service")
# What may not be written outside its home: the directory, the plan file's path, the API port.
FORBIDDEN = {
    "the configuration directory /etc/llmserve (use llmserve_config_dir)": re.compile(r"/etc/llmserve\b"),
    "the plan file's path (use llmserve_plan_path)": re.compile(r"plan\.json"),
    "the API port 8000 (use llmserve_api_port or the role's port)": re.compile(r"(?<![\d.])8000(?!\d)"),
}


def yaml_files():
    for top in ("playbooks", "roles"):
        for path in sorted((REPO_ROOT / top).rglob("*")):
            if path.suffix in (".yml", ".yaml", ".j2") and path not in SCAN_EXEMPT:
                yield path


def code_lines(path: Path):
    """(number, line) of what Ansible reads: comments left out, argument_specs' descriptions too."""
    in_description = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        stripped = line.lstrip()
        if stripped.startswith("#"):
            continue
        if path.name == "argument_specs.yml":
            indent = len(line) - len(stripped)
            if re.match(r"(description|short_description):", stripped):
                in_description, description_indent = True, indent
                continue
            if in_description and indent > description_indent:
                continue
            in_description = False
        yield number, line


def unit_lists(node, found):
    """Every YAML list (or mapping's values) naming two serving units or more."""
    if isinstance(node, dict):
        for value in node.values():
            unit_lists(value, found)
    elif isinstance(node, list):
        named = [item for item in node if isinstance(item, str) and item in UNIT_NAMES]
        if len(named) >= 2:
            found.append(named)
        for item in node:
            unit_lists(item, found)


def test_no_playbook_or_role_hard_codes_a_path_or_the_api_port():
    offences = [
        f"{path.relative_to(REPO_ROOT)}:{number}: {what}: {line.strip()}"
        for path in yaml_files()
        for number, line in code_lines(path)
        for what, pattern in FORBIDDEN.items()
        if pattern.search(line)
    ]
    assert offences == []


def test_no_playbook_or_role_lists_the_serving_units():
    offences = []
    for path in yaml_files():
        if path.suffix == ".j2":
            continue
        found = []
        unit_lists(yaml.safe_load(path.read_text(encoding="utf-8")), found)
        offences += [f"{path.relative_to(REPO_ROOT)}: {names} (loop over llmserve_units)" for names in found]
    assert offences == []


def test_the_scan_catches_what_it_forbids(tmp_path):
    """The negative control: a playbook written the old way trips every check."""
    playbook = tmp_path / "old.yml"
    playbook.write_text(
        "- hosts: all\n  tasks:\n    - ansible.builtin.slurp:\n        src: /etc/llmserve/plan.json\n"
        '    - ansible.builtin.debug:\n        msg: "{{ vllm_serve_port | default(8000) }}"\n'
        '    - ansible.builtin.systemd_service:\n        name: "{{ item }}"\n'
        "      loop: [vllm.service, ray-head.service]\n"
    )
    hits = {
        what for _number, line in code_lines(playbook) for what, pattern in FORBIDDEN.items() if pattern.search(line)
    }
    assert hits == set(FORBIDDEN)
    found = []
    unit_lists(yaml.safe_load(playbook.read_text()), found)
    assert found == [["vllm.service", "ray-head.service"]]


def the_homes():
    """The llmserve role's defaults, then its vars, loaded as Ansible loads them (their templates trusted)."""
    facts = {}
    for path in sorted(HOMES):
        facts.update(DataLoader().load_from_file(str(path), trusted_as_template=True))
    return facts


def render(expression: str, **inventory):
    """An expression as a play sees it: the llmserve role's defaults and vars, under what the inventory sets."""
    variables = {**the_homes(), **inventory}
    return Templar(loader=DataLoader(), variables=variables).template(trust_as_template(expression))


def test_the_homes_hold_every_fact():
    facts = the_homes()
    assert set(facts["llmserve_units"].values()) == set(UNIT_NAMES)
    assert render("{{ llmserve_plan_path }}") == "/etc/llmserve/plan.json"
    assert render("{{ llmserve_api_key_path }}", llmserve_config_dir="/etc/other") == "/etc/other/api-key"


@pytest.mark.parametrize(
    ("inventory", "port", "unit"),
    [
        ({}, 8000, "vllm.service"),
        ({"llmserve_backend": "ray", "vllm_serve_port": 8100}, 8100, "vllm.service"),
        ({"llmserve_backend": "llama_cpp"}, 8000, "llama-server.service"),
        # The bug: status.yml and deploy's report used vllm_serve_port | default(8000) with llama.cpp too.
        ({"llmserve_backend": "llama_cpp", "llama_cpp_port": 8081}, 8081, "llama-server.service"),
        ({"llmserve_backend": "llama_cpp", "llmserve_llama_cpp_port": 8082}, 8082, "llama-server.service"),
        ({"llmserve_backend": "native", "llama_cpp_port": 8081}, 8000, "vllm.service"),
    ],
)
def test_the_api_port_follows_the_backend(inventory, port, unit):
    assert int(render("{{ llmserve_api_port }}", **inventory)) == port
    assert render("{{ llmserve_api_unit }}", **inventory) == unit


@pytest.mark.parametrize("playbook", ["status.yml", "deploy.yml"])
def test_the_playbooks_that_name_the_endpoint_use_the_backends_port(playbook):
    text = (REPO_ROOT / "playbooks" / playbook).read_text(encoding="utf-8")
    assert "llmserve_api_port" in text
    assert "vllm_serve_port" not in text


def test_each_roles_port_defaults_to_the_one_home():
    for role, name, home in (
        ("vllm_serve", "vllm_serve_port", "llmserve_vllm_port"),
        ("llama_cpp", "llama_cpp_port", "llmserve_llama_cpp_port"),
        ("endpoint_benchmark", "endpoint_benchmark_port", "llmserve_api_port"),
    ):
        defaults = yaml.safe_load((REPO_ROOT / "roles" / role / "defaults" / "main.yml").read_text(encoding="utf-8"))
        assert defaults[name] == "{{ " + home + " }}", role
