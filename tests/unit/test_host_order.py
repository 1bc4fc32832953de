# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Host lists keep the inventory's order.

The planner gives ranks to nodes in the play's host order, so a play whose host list came out of a set would
plan node1, node3 one run and node1, node2 the next, and restart what serves for nothing. Ansible's
``difference`` filter goes through a set (ansible-core 2.19: ``list(set(a) - set(b))``); ``reject('in', ...)``
keeps the order. This test renders the filter the way a play does, then checks that no play's ``hosts:`` and no
ordered node list uses it.
"""

from __future__ import annotations

import re
from pathlib import Path

from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template

REPO_ROOT = Path(__file__).resolve().parents[2]
HOSTS = [f"node{index}" for index in range(1, 40)]


def render(expression: str):
    templar = Templar(loader=DataLoader(), variables={"hosts": HOSTS, "gone": ["node7"]})
    return templar.template(trust_as_template(expression))


def test_reject_in_keeps_the_order_that_difference_may_lose():
    kept = [host for host in HOSTS if host != "node7"]
    assert render("{{ hosts | reject('in', gone) | list }}") == kept
    # The reason for the rule: over enough hosts a set's order differs from the inventory's.
    assert sorted(render("{{ hosts | difference(gone) }}")) == sorted(kept)


def test_no_play_or_node_list_is_built_with_difference():
    offenders = []
    for top in ("playbooks", "roles"):
        for path in sorted((REPO_ROOT / top).rglob("*.yml")):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if "difference(" not in line:
                    continue
                # Allowed where the order cannot matter: a count, or a list sorted right after.
                if re.search(r"difference\([^)]*\)\s*\|\s*(length|sort)\b", line):
                    continue
                offenders.append(f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}")
    assert not offenders, "use reject('in', ...) | list, which keeps the inventory order:\n" + "\n".join(offenders)
