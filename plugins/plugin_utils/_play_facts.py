# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Read one fact from every host of the play, for action plugins that compare nodes."""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional


def play_hosts(task_vars: Mapping[str, Any], hosts: Optional[List[str]] = None) -> List[str]:
    """The hosts to compare: the ones given, else the play's hosts that are still active."""
    if hosts:
        return list(hosts)
    return list(task_vars.get("ansible_play_hosts") or [])


def collect_fact(
    task_vars: Mapping[str, Any], fact_name: str, hosts: Optional[List[str]] = None
) -> Dict[str, Optional[Any]]:
    """Map each host to ``ansible_facts[fact_name]`` (None where it was not gathered)."""
    hostvars = task_vars.get("hostvars") or {}
    collected: Dict[str, Optional[Any]] = {}
    for host in play_hosts(task_vars, hosts):
        facts = (hostvars.get(host) or {}).get("ansible_facts") or {}
        collected[host] = facts.get(fact_name)
    return collected
