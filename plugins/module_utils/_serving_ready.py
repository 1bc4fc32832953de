# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Whether a serving group that was just started is coming up, has failed, or answers.

A serving change is a transaction (roles/vllm_serve/tasks/service.yml): the new configuration is checked
before anything stops, the group switches to it, and when the group does not answer a completion in time,
every node goes back to the configuration that served before. The functions here make the decisions of that
transaction:

- ``rank_state``: one node's unit, from ``systemctl show`` and the log of its current invocation. A rank has
  failed when its unit failed or stopped, when systemd restarted it (it was started by hand, which resets
  ``NRestarts``, so any restart is a crash), or when its log shows a start-up error vLLM does not recover from.
- ``group_readiness``: the group, from every rank's state and rank 0's completion: the wait ends as soon as
  rank 0 answers, any rank failed, or the deadline passed.
- ``ready_timeout``: how long a group may take to answer, from the plan (the bytes each node reads from disk,
  the node count), unless the inventory sets it.
- ``exec_start_argv`` and ``port_holders``: what ``serving_precheck`` reads from the new unit file and ``ss``.
- ``unit_endpoint``: the address, port and model name a unit serves on, for the rollback's wait on the old one.
"""

from __future__ import annotations

import math
import re
import shlex
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

# What serving_rank_watch asks systemd; InvocationID selects the log of the current start.
WATCH_PROPERTIES = ("ActiveState", "SubState", "Result", "NRestarts", "InvocationID", "ExecMainStatus", "MainPID")

# Start-up errors after which vLLM does not come up, even when its process lingers a while before exiting.
# Each is a line vLLM (or torch/NCCL under it) logs on its way down; matched as plain substrings.
FATAL_LOG_MARKERS = (
    "Engine core initialization failed",
    "EngineCore failed to start",
    "torch.OutOfMemoryError",
    "CUDA out of memory",
    "No available memory for the cache blocks",
    "larger than the maximum number of tokens that can be stored in KV cache",
    "vllm serve: error:",
    "NCCL error",
    "ncclInternalError",
    "ncclSystemError",
    "Address already in use",
    "Error while finding module specification",
)

# Seconds a group gets beyond reading its weights: imports, torch.compile, CUDA graph capture, the API server.
READY_BASE_SECONDS = 300
# Extra seconds per node beyond the first: the rendezvous of the ranks and the slowest node's start.
READY_PER_NODE_SECONDS = 30
# The disk read rate the weights are assumed to load at (bytes per second): a conservative local SSD or a
# network file system; a node loads the shards of all its GPUs.
READY_READ_BYTES_PER_SECOND = 200 * 1000 * 1000


def parse_show(output: str) -> Dict[str, str]:
    """``systemctl show -p ...`` output of one unit (``Key=value`` lines) as a dict."""
    properties: Dict[str, str] = {}
    for line in output.splitlines():
        key, separator, value = line.partition("=")
        if separator:
            properties[key.strip()] = value.strip()
    return properties


def fatal_line(lines: Iterable[str], markers: Sequence[str] = FATAL_LOG_MARKERS) -> Optional[str]:
    """The first log line carrying a start-up error from ``markers``, or None."""
    for line in lines:
        if any(marker in line for marker in markers):
            return line.strip()
    return None


def rank_state(
    properties: Mapping[str, str], log_lines: Iterable[str] = (), markers: Sequence[str] = FATAL_LOG_MARKERS
) -> Dict[str, Any]:
    """One rank's state right after it was started: ``{state, reason}``, state ``starting`` or ``failed``.

    ``properties`` is ``systemctl show`` of the unit (``WATCH_PROPERTIES``), ``log_lines`` the log of its current
    invocation. The unit was started by hand just before, so systemd's restart counter started at zero.
    """
    active = properties.get("ActiveState", "")
    sub = properties.get("SubState", "")
    restarts = properties.get("NRestarts", "0")
    restarts_count = int(restarts) if restarts.isdigit() else 0
    exited = f"exit status {properties.get('ExecMainStatus') or '?'}"
    if active == "failed":
        return {
            "state": "failed",
            "reason": f"the unit failed ({properties.get('Result') or 'no result'}, {exited})",
        }
    if active == "activating" and sub == "auto-restart":
        return {"state": "failed", "reason": f"vLLM exited ({exited}) and systemd is about to start it again"}
    if active in ("inactive", "deactivating"):
        return {"state": "failed", "reason": f"the unit stopped ({active}/{sub}, {exited})"}
    if restarts_count > 0:
        return {
            "state": "failed",
            "reason": f"systemd restarted it {restarts_count} time(s) after it exited ({exited})",
        }
    line = fatal_line(log_lines, markers)
    if line:
        return {"state": "failed", "reason": f"its log shows a start-up error: {line}"}
    return {"state": "starting", "reason": None}


def group_readiness(
    reports: Sequence[Optional[Mapping[str, Any]]], rank0_host: str, deadline: float, now: float
) -> Dict[str, Any]:
    """Whether a serving group's wait is over: ``{done, ok, reason, failed_hosts}``.

    ``reports`` are the group's ``serving_rank_watch`` results of this round (``host``, ``state``, ``reason``,
    ``answered``), ``rank0_host`` the node whose completion counts. The wait ends with ``ok`` when rank 0
    answered, and without it when any rank failed or ``now`` passed ``deadline`` (epoch seconds).
    """
    seen = [report for report in reports if report and report.get("host")]
    if any(report.get("host") == rank0_host and report.get("answered") for report in seen):
        return {"done": True, "ok": True, "reason": None, "failed_hosts": []}
    failed = [report for report in seen if report.get("state") == "failed"]
    if failed:
        reason = "; ".join(f"{report['host']}: {report.get('reason')}" for report in failed)
        return {"done": True, "ok": False, "reason": reason, "failed_hosts": [report["host"] for report in failed]}
    if now >= deadline:
        last = next((report.get("error") for report in seen if report.get("host") == rank0_host), None)
        reason = "no completion before the ready timeout" + (f" (last answer: {last})" if last else "")
        return {"done": True, "ok": False, "reason": reason, "failed_hosts": []}
    return {"done": False, "ok": False, "reason": None, "failed_hosts": []}


def ready_timeout(plan: Mapping[str, Any], override: Optional[Any] = None) -> int:
    """Seconds a group gets to answer: ``override`` when set, else derived from ``plan``.

    Derived: ``READY_BASE_SECONDS``, plus ``READY_PER_NODE_SECONDS`` for each node beyond the first, plus the
    time the busiest node takes to read its GPUs' weights at ``READY_READ_BYTES_PER_SECOND``.
    """
    if override not in (None, ""):
        seconds = int(override)
        if seconds <= 0:
            raise ValueError(f"the ready timeout must be a positive number of seconds, not {override!r}")
        return seconds
    per_gpu = int(((plan.get("per_gpu") or {}).get("weights_bytes")) or 0)
    nodes = plan.get("nodes") or []
    node_bytes = max((per_gpu * int(node.get("gpus_used") or 1) for node in nodes), default=per_gpu)
    read_seconds = math.ceil(node_bytes / READY_READ_BYTES_PER_SECOND)
    return READY_BASE_SECONDS + READY_PER_NODE_SECONDS * max(len(nodes) - 1, 0) + read_seconds


def exec_start_argv(unit_text: str) -> List[str]:
    """The command line of a unit file's ``ExecStart=`` (continuation lines joined, systemd's prefixes dropped)."""
    lines = unit_text.splitlines()
    for index, line in enumerate(lines):
        if not line.startswith("ExecStart="):
            continue
        command = line[len("ExecStart=") :]
        while command.endswith("\\") and index + 1 < len(lines):
            index += 1
            command = command[:-1] + " " + lines[index].strip()
        command = command.lstrip("@-:+!")
        return shlex.split(command)
    raise ValueError("the unit file has no ExecStart= line")


# vLLM's own defaults for the options unit_endpoint reads (vllm serve --help).
VLLM_DEFAULT_PORT = 8000


def unit_endpoint(unit_text: str) -> Dict[str, Any]:
    """Where a ``vllm serve`` unit answers: ``{host, port, model}`` from its ExecStart.

    The rollback waits for the configuration it put back, which may have served on another address, port or
    model name than the one the failed change asked for. ``model`` is the first ``--served-model-name``, else
    the model vLLM serves (what a completion must name); ``host`` is None when vLLM binds every interface.
    A headless rank has no endpoint: port and host are None.
    """
    argv = exec_start_argv(unit_text)
    if "serve" not in argv:
        raise ValueError("the unit's ExecStart is not `vllm serve`")
    options: Dict[str, str] = {}
    flags = set()
    positional: List[str] = []
    rest = argv[argv.index("serve") + 1 :]
    index = 0
    while index < len(rest):
        word = rest[index]
        if word.startswith("--"):
            name, equals, value = word.partition("=")
            if equals:
                options.setdefault(name, value)
            elif index + 1 < len(rest) and not rest[index + 1].startswith("--"):
                options.setdefault(name, rest[index + 1])
                index += 1
            else:
                flags.add(name)
        else:
            positional.append(word)
        index += 1
    model = options.get("--served-model-name") or options.get("--model") or (positional[0] if positional else None)
    if "--headless" in flags:
        return {"host": None, "port": None, "model": model}
    return {"host": options.get("--host"), "port": int(options.get("--port", VLLM_DEFAULT_PORT)), "model": model}


_SS_PROCESS = re.compile(r'\("(?P<name>[^"]*)",pid=(?P<pid>\d+)')


def port_holders(ss_output: str, port: int) -> List[Dict[str, Any]]:
    """Processes listening on TCP ``port``, from ``ss -Hltnp`` output: ``[{address, name, pid}]``.

    ``ss`` prints one line per listening socket:
    ``LISTEN 0 4096 10.0.0.11:8000 0.0.0.0:* users:(("vllm",pid=9,fd=3))``.
    """
    holders: List[Dict[str, Any]] = []
    for line in ss_output.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        local = fields[3]
        address, _separator, local_port = local.rpartition(":")
        if local_port != str(port):
            continue
        processes = [
            {"name": match.group("name"), "pid": int(match.group("pid"))} for match in _SS_PROCESS.finditer(line)
        ]
        for process in processes or [{"name": None, "pid": None}]:
            holders.append({"address": address, **process})
    return holders


def in_unit(proc_cgroup: str, unit: str) -> bool:
    """Whether a process belongs to ``unit``, from its ``/proc/<pid>/cgroup``.

    Works on the unified hierarchy (``0::/system.slice/vllm.service``) and on cgroup v1, where systemd's own
    hierarchy names the unit (``1:name=systemd:/system.slice/vllm.service``); a process in a sub-group of the
    unit counts too.
    """
    for line in proc_cgroup.splitlines():
        path = line.split(":", 2)[-1]
        parts = path.split("/")
        if unit in parts:
            return True
    return False


def foreign_holders(holders: Sequence[Mapping[str, Any]], own_pids: Iterable[int]) -> List[Mapping[str, Any]]:
    """The port holders that are not processes of our own unit (``own_pids``)."""
    own = set(own_pids)
    return [holder for holder in holders if holder.get("pid") not in own]


def unit_environment(unit_text: str) -> Dict[str, str]:
    """The ``Environment=`` assignments of a unit file (not its ``EnvironmentFile=``, which holds secrets)."""
    environment: Dict[str, str] = {}
    for line in unit_text.splitlines():
        if not line.startswith("Environment="):
            continue
        for assignment in shlex.split(line[len("Environment=") :]):
            name, separator, value = assignment.partition("=")
            if separator:
                environment[name] = value
    return environment


# What the argument check prints once vLLM accepted the command line.
PARSE_MARKER = "LLMSERVE-VLLM-ARGS-ACCEPTED"

# Run with the venv's interpreter and the unit's arguments after `vllm`: vLLM's own CLI entry point parses
# and validates them (`vllm serve`'s parser and validate_parsed_serve_args), and the serve command, which
# would start the server, is replaced by printing PARSE_MARKER.
VLLM_PARSE_SCRIPT = (
    "import sys\n"
    "import vllm.entrypoints.cli.serve as serve\n"
    "from vllm.entrypoints.cli.main import main\n"
    "def accepted(args):\n"
    f"    print({PARSE_MARKER!r}, flush=True)\n"
    "serve.ServeSubcommand.cmd = staticmethod(accepted)\n"
    "sys.argv = ['vllm'] + sys.argv[1:]\n"
    "main()\n"
)


def parse_failure(rc: int, stdout: str, stderr: str) -> Optional[str]:
    """What the argument check's run says: None when vLLM accepted the command line, else why not."""
    if rc == 0 and PARSE_MARKER in stdout:
        return None
    if rc == 124:
        return "the installed vLLM did not finish checking the new command line in time"
    lines = [line.strip() for line in (stderr or stdout).splitlines() if line.strip()]
    said = next(
        (line for line in reversed(lines) if "error:" in line.lower()), lines[-1] if lines else f"exit status {rc}"
    )
    return f"the installed vLLM refuses the new command line: {said}"
