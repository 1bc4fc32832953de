# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What a node's serving units look like, and what the serving roles decide from it.

``serving_unit_facts`` reads each node once: ``systemctl show`` for the units, the service account, the
configuration directory, the secret file and the plan the node last served with (``plan.json``). The
functions here turn those reads into structured facts and make the decisions the roles used to make in
Jinja: whether a node runs a vLLM unit, and whether a serving group must restart.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

# What the roles ask systemd about a unit; Id first, so every block names its unit.
SHOW_PROPERTIES = (
    "Id",
    "LoadState",
    "ActiveState",
    "SubState",
    "UnitFileState",
    "ActiveEnterTimestamp",
    "NRestarts",
)

NOLOGIN_SHELL = "/usr/sbin/nologin"
# A unit in one of these sub-states is up for the restart decision (a unit systemd restarts after a crash is
# "auto-restart", which counts as down: its rank left the group).
RUNNING_SUB_STATES = frozenset({"running"})


def show_command(systemctl: str, units: Sequence[str]) -> List[str]:
    """The argv that reads every unit's properties in one call."""
    return [systemctl, "show", "--property=" + ",".join(SHOW_PROPERTIES), "--", *units]


def parse_systemctl_show(output: str, units: Sequence[str]) -> Dict[str, Dict[str, str]]:
    """``systemctl show`` output for ``units`` (one block each, blank-line separated, in argument order).

    systemd prints the blocks in the order of its arguments and names each with ``Id``; an unknown unit gets
    ``LoadState=not-found`` and its requested name as ``Id``. Raises ValueError when the blocks do not match
    the units asked for.
    """
    blocks: List[Dict[str, str]] = []
    current: Dict[str, str] = {}
    for line in output.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
                current = {}
            continue
        key, separator, value = line.partition("=")
        if separator:
            current[key] = value
    if current:
        blocks.append(current)
    if len(blocks) != len(units):
        raise ValueError(f"systemctl show printed {len(blocks)} blocks for {len(units)} units ({', '.join(units)})")
    return dict(zip(units, blocks))


def unit_facts(name: str, properties: Mapping[str, str], file_present: bool) -> Dict[str, Any]:
    """One unit's state, from its ``systemctl show`` properties and whether its file is in the unit directory."""
    load_state = properties.get("LoadState", "")
    sub_state = properties.get("SubState", "")
    unit_file_state = properties.get("UnitFileState", "")
    restarts = properties.get("NRestarts", "")
    return {
        "name": name,
        "load_state": load_state,
        "active_state": properties.get("ActiveState", ""),
        "sub_state": sub_state,
        "unit_file_state": unit_file_state,
        # Empty when the unit never became active since boot.
        "active_enter_timestamp": properties.get("ActiveEnterTimestamp", ""),
        "restarts": int(restarts) if restarts.isdigit() else 0,
        "loaded": load_state not in ("", "not-found"),
        "running": sub_state in RUNNING_SUB_STATES,
        "enabled": unit_file_state == "enabled",
        "file_present": file_present,
    }


def unit_state_word(unit: Mapping[str, Any]) -> str:
    """What the roles and their messages call a unit's state: ``absent`` (systemd does not know it) or its SubState."""
    return "absent" if not unit.get("loaded") else str(unit.get("sub_state") or "unknown")


def account_facts(
    name: str,
    entry: Optional[Sequence[str]],
    home_present: bool,
    expected_home: str,
    expected_shell: str = NOLOGIN_SHELL,
) -> Dict[str, Any]:
    """The service account from its passwd entry (``pwd.getpwnam``: name, password, uid, gid, gecos, home, shell).

    ``ready`` says nothing is left to do for ``ansible.builtin.user``: the account exists with the expected home,
    which exists, and the expected shell.
    """
    home = str(entry[5]) if entry else None
    shell = str(entry[6]) if entry else None
    return {
        "name": name,
        "exists": entry is not None,
        "uid": int(entry[2]) if entry else None,
        "home": home,
        "shell": shell,
        "home_present": home_present,
        "ready": entry is not None and home == expected_home and shell == expected_shell and home_present,
    }


def directory_facts(
    path: str,
    owner: Optional[str],
    group: Optional[str],
    mode: Optional[int],
    expected_owner: str,
    expected_group: str,
    expected_mode: str,
) -> Dict[str, Any]:
    """A directory's owner, group and permission bits (None when it is missing), and whether they are as expected.

    ``expected_mode`` is the octal string the roles write (``"0755"``).
    """
    mode_text = None if mode is None else format(mode & 0o7777, "04o")
    return {
        "path": path,
        "exists": mode is not None,
        "owner": owner,
        "group": group,
        "mode": mode_text,
        "ready": mode is not None
        and owner == expected_owner
        and group == expected_group
        and int(mode_text or "0", 8) == int(expected_mode, 8),
    }


def recorded_plan(text: Optional[str]) -> Dict[str, Any]:
    """The plan a node last served with (``plan.json``): ``plan`` parsed, or None with ``error`` saying why."""
    if text is None:
        return {"plan": None, "error": None}
    try:
        plan = json.loads(text)
    except ValueError as error:
        return {"plan": None, "error": f"not JSON: {error}"}
    if not isinstance(plan, dict):
        return {"plan": None, "error": f"not a JSON object but {type(plan).__name__}"}
    return {"plan": plan, "error": None}


def plan_needs_recording(recorded: Optional[Mapping[str, Any]], plan: Mapping[str, Any]) -> bool:
    """Whether ``plan.json`` must be (re)written: it holds no plan, or another plan than ``plan``."""
    if recorded is None:
        return True
    return json.dumps(recorded, sort_keys=True) != json.dumps(plan, sort_keys=True)


def runs_vllm_unit(role: Mapping[str, Any], backend: str) -> bool:
    """Whether a node runs ``vllm.service``, given its ``node_role`` in the plan and the backend.

    Native backend: every planned node runs one (rank 0 serves, the others run headless). Ray backend: only
    rank 0 runs ``vllm serve``; Ray places the other workers. A node the plan does not use (rank -1) runs none.
    """
    node_rank = int(role.get("node_rank", -1))
    if backend == "native":
        return node_rank >= 0
    return node_rank == 0


def group_restart(nodes: Iterable[Mapping[str, Any]], health_ok: Optional[bool]) -> Dict[str, Any]:
    """Whether a serving group restarts as a whole, and why.

    ``nodes`` are the group's nodes in this play, each ``{host, runs_unit, config_changed, unit}`` where
    ``unit`` is the node's ``unit_facts`` for ``vllm.service``. ``health_ok`` is the result of the completion
    asked of the group's rank 0 (None when it was not asked: the configuration changed or rank 0 is down).

    A native group restarts together: a rank restarted alone cannot rejoin the ranks still running. So it
    restarts when any node's configuration changed, when any node that runs a unit has it not running, or when
    rank 0 answered no completion.
    """
    reasons: List[str] = []
    for node in nodes:
        host = node.get("host")
        if node.get("config_changed"):
            reasons.append(f"{host}: its vLLM unit or environment changed")
        if node.get("runs_unit") and not (node.get("unit") or {}).get("running"):
            reasons.append(f"{host}: vllm.service is {unit_state_word(node.get('unit') or {})}")
    if health_ok is False:
        reasons.append("rank 0 answered no completion")
    return {"restart": bool(reasons), "reasons": reasons}
