# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Whether a host reboots for its new NVIDIA driver, and how a serving cluster drains for it.

A host that serves (a serving unit is up, or the plan in effect places a rank on it) never reboots
without consent (``llmserve_allow_reboot``): the ``nvidia_driver`` role records the reboot left to do
instead, in a small JSON file that ``deploy.yml`` and ``status.yml`` report. With consent, deploy.yml
stops the serving groups that hold such hosts, reboots them one at a time and starts the groups again.
A host that serves nothing reboots as ``nvidia_driver_reboot`` says, as it always did.

Inputs are what the collection's facts modules return: ``nvidia_driver_facts``' state and
``serving_unit_facts``' units and recorded plan. Nothing here talks to a host.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

from ansible_collections.llmserve.cluster.plugins.module_utils._serving_groups import plan_serving_groups

ACTION_NONE = "none"  # the loaded driver is the installed one
ACTION_REBOOT = "reboot"  # the role reboots the host now (it serves nothing)
ACTION_DRAIN = "drain"  # it serves and the run consents: deploy.yml drains, reboots and brings it back
ACTION_PENDING = "pending"  # no reboot on this run; recorded and reported
# systemd ActiveStates of a unit that is up or on its way up: a unit systemd restarts after a crash is
# "activating" (auto-restart) and still holds its place in the serving group.
SERVING_ACTIVE_STATES = frozenset({"active", "activating", "reloading", "deactivating"})
# The order serving units stop in (keys of llmserve_units): what serves the API before what it runs on,
# the Ray head last, so no rank is left waiting on a node that already went.
STOP_STAGES = (("vllm", "llama_server"), ("ray_worker", "llama_rpc"), ("ray_head",))
CONSENT_HINT = (
    "deploy.yml -e llmserve_allow_reboot=true stops its serving group, reboots node by node and brings the group back"
)


def serving_evidence(host: str, units: Mapping[str, Mapping[str, Any]], plan: Optional[Mapping[str, Any]]) -> List[str]:
    """Why HOST counts as serving, in words; empty when it serves nothing.

    ``units`` is ``serving_unit_facts``' ``units`` (each with ``loaded`` and ``active_state``), ``plan`` the
    plan the host recorded (``/etc/llmserve/plan.json``), or None.
    """
    reasons = [
        "{} is {}".format(name, unit.get("active_state"))
        for name, unit in sorted(units.items())
        if unit.get("loaded") and unit.get("active_state") in SERVING_ACTIVE_STATES
    ]
    names = [str(node.get("name")) for node in (plan or {}).get("nodes") or []]
    if host in names:
        reasons.append(f"the plan in effect has it as node rank {names.index(host)}")
    return reasons


def _loaded_version(state: Mapping[str, Any]) -> Optional[str]:
    return (state.get("loaded_driver") or {}).get("version")


def reboot_decision(
    state: Mapping[str, Any],
    host: str,
    units: Optional[Mapping[str, Mapping[str, Any]]],
    plan: Optional[Mapping[str, Any]],
    reboot_enabled: bool,
    consent: bool,
) -> Dict[str, Any]:
    """What the driver role does about the reboot a driver change takes, and the record it keeps.

    ``state`` is ``nvidia_driver_facts``' ``llmserve_nvidia_driver``; ``reboot_enabled`` is
    ``nvidia_driver_reboot`` (false: never reboot this host); ``consent`` is ``llmserve_allow_reboot``.
    Returns ``action`` (none, reboot, drain or pending), ``reason`` and the facts ``status.yml`` shows.
    """
    installed = state.get("installed_driver_version")
    loaded = _loaded_version(state)
    serving = serving_evidence(host, units or {}, plan) if state.get("reboot_required") else []
    decision: Dict[str, Any] = {
        "host": host,
        "installed_driver_version": installed,
        "loaded_driver_version": loaded,
        "serving": serving,
        "consent": bool(consent),
    }
    if not state.get("reboot_required"):
        return dict(decision, action=ACTION_NONE, reason="the loaded driver is the installed one")
    if state.get("control_node"):
        action, reason = (
            ACTION_PENDING,
            "it is the control node, which this collection never reboots; reboot it yourself",
        )
    elif not reboot_enabled:
        action, reason = ACTION_PENDING, "nvidia_driver_reboot is false for it; reboot it yourself"
    elif not serving:
        action, reason = ACTION_REBOOT, "it serves nothing, so it reboots now"
    elif consent:
        action = ACTION_DRAIN
        reason = "it serves ({}) and llmserve_allow_reboot is true: deploy.yml drains its serving group".format(
            "; ".join(serving)
        )
    else:
        action = ACTION_PENDING
        reason = "it serves ({}), so it reboots only with consent: {}".format("; ".join(serving), CONSENT_HINT)
    return dict(decision, action=action, reason=reason)


def pending_reboot_text(record: Optional[Mapping[str, Any]]) -> Optional[str]:
    """``reboot pending: driver 570.172.08 installed, 570.124.06 loaded``; None without a record."""
    if not record:
        return None
    return "reboot pending: driver {} installed, {} loaded".format(
        record.get("installed_driver_version") or "?", record.get("loaded_driver_version") or "no driver"
    )


def pending_reboot_message(record: Mapping[str, Any]) -> str:
    """The sentence deploy.yml prints for a host that still waits for its reboot."""
    return "{}: {}. It does not reboot on this run: {}.".format(
        record.get("host") or "?", pending_reboot_text(record), record.get("reason") or "no reason recorded"
    )


def drain_for_reboot(
    nodes: Mapping[str, Mapping[str, Any]],
    consent: bool,
    backend: str,
    unit_names: Mapping[str, str],
) -> Dict[str, Any]:
    """Which hosts reboot, and which serving units stop on which host first, in stop order.

    ``nodes`` maps every host of the play, in play order, to ``record`` (the recorded decision, None when
    none), ``units`` (``serving_unit_facts``' units, None when not read) and ``plan`` (its recorded plan).
    Only hosts whose record says ``drain`` reboot, and only with ``consent`` on this run too. With the native
    backend only the serving groups (the plan in effect's ``serving_groups``) that hold such a host stop; Ray
    and llama.cpp span every node, so there every host stops. ``stop`` lists per host and per stage of
    STOP_STAGES the units that exist there (``unit_names`` is ``llmserve_units``).
    """
    hosts = list(nodes)
    records = {host: (node or {}).get("record") for host, node in nodes.items()}
    reboot = [host for host in hosts if consent and (records[host] or {}).get("action") == ACTION_DRAIN]
    pending = [host for host in hosts if records[host] and host not in reboot]
    draining = set()
    if reboot:
        plan = next((node.get("plan") for node in nodes.values() if node and node.get("plan")), None)
        if backend == "native" and plan:
            for group in plan_serving_groups(plan):
                if set(group["nodes"]) & set(reboot):
                    draining.update(group["nodes"])
            draining.update(reboot)
        else:
            draining.update(hosts)
    stop: Dict[str, List[List[str]]] = {}
    for host in hosts:
        units = (nodes[host] or {}).get("units") or {}
        stages = []
        for stage in STOP_STAGES:
            names = [unit_names[key] for key in stage if key in unit_names]
            stages.append([name for name in names if host in draining and (units.get(name) or {}).get("loaded")])
        stop[host] = stages
    return {
        "reboot": reboot,
        "draining": [host for host in hosts if host in draining],
        "stop": stop,
        "pending": pending,
        "messages": {host: pending_reboot_message(records[host]) for host in pending},
    }
