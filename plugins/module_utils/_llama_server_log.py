# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Read what llama-server allocated on each device from its log, and hold it against the GGUF plan.

Two formats, both from llama.cpp's source:

- The memory breakdown table (``common_memory_breakdown_print``, formerly ``llama_memory_breakdown_print``),
  logged at trace level (``-lv 4``), in whole MiB::

      ...: | memory breakdown [MiB] | total   free    self   model   context   compute    unaccounted |
      ...: |   - RPC0 (10.77.1.12:50052) | 7977 = 7900 + (  21 =    10 +       8 +       3) +          56 |
      ...: |   - Host               |                  3 =     1 +       0 +       2                |

- The per-buffer lines every release prints at info level, in MiB with two decimals::

      load_tensors: RPC0[10.77.1.12:50052] model buffer size =     4.50 MiB
      llama_kv_cache:      CUDA0 KV buffer size =  1248.00 MiB
      llama_context:      CUDA0 compute buffer size =   409.00 MiB

  (older releases: ``llm_load_tensors: CUDA0 buffer size``, ``llama_kv_cache_init:``,
  ``llama_new_context_with_model:``). Buffers are named after their buffer type: an RPC buffer carries its
  server's endpoint, which the ``using device RPC0 (endpoint)`` line maps to the device name; buffers in host
  memory (``CPU``, ``CPU_Mapped``, ``CPU_REPACK``, ``CUDA_Host``) count for ``Host``.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, Optional

HOST = "Host"
FIELDS = ("model_mib", "kv_cache_mib", "compute_mib")

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
USING_DEVICE = re.compile(
    r"using device (?P<name>\S+) \((?P<description>[^)]*)\)(?: \([^)]*\))? - (?P<free>\d+) MiB free"
)
BREAKDOWN_DEVICE = re.compile(
    r"\|\s+-\s+(?P<name>\S+)(?: \((?P<description>.*?)\))?\s+\|\s+(?P<total>\d+)\s+=\s+(?P<free>\d+)\s+\+\s+"
    r"\(\s*(?P<self>\d+)\s+=\s+(?P<model>\d+)\s+\+\s+(?P<context>\d+)\s+\+\s+(?P<compute>\d+)\s*\)\s+\+\s+"
    r"(?P<unaccounted>-?\d+)\s+\|"
)
BREAKDOWN_OTHER = re.compile(
    r"\|\s+-\s+(?P<name>\S+)(?: \((?P<description>.*?)\))?\s+\|\s+(?P<self>\d+)\s+=\s+(?P<model>\d+)\s+\+\s+"
    r"(?P<context>\d+)\s+\+\s+(?P<compute>\d+)\s+\|"
)
BUFFER_LINES = (
    ("model_mib", re.compile(r"load_tensors:\s+(?P<buffer>\S+)\s+(?:model )?buffer size\s+=\s+(?P<mib>[\d.]+) MiB")),
    ("kv_cache_mib", re.compile(r":\s+(?P<buffer>\S+)\s+KV buffer size\s+=\s+(?P<mib>[\d.]+) MiB")),
    ("compute_mib", re.compile(r":\s+(?P<buffer>\S+)\s+compute buffer size\s+=\s+(?P<mib>[\d.]+) MiB")),
)
RPC_BUFFER = re.compile(r"^RPC(?P<index>\d*)\[(?P<endpoint>[^\]]+)\]$")


def _lines(log: str) -> List[str]:
    return ANSI_ESCAPE.sub("", log).splitlines()


def parse_devices(log: str) -> Dict[str, Dict[str, Any]]:
    """The devices llama.cpp used, in its order: ``{name: {description, free_mib}}`` (description = RPC endpoint)."""
    devices: Dict[str, Dict[str, Any]] = {}
    for line in _lines(log):
        match = USING_DEVICE.search(line)
        if match:
            devices[match.group("name")] = {
                "description": match.group("description"),
                "free_mib": int(match.group("free")),
            }
    return devices


def device_of_buffer(buffer: str, devices: Mapping[str, Mapping[str, Any]]) -> str:
    """The device a buffer type lives on: ``CUDA0`` stays, RPC buffers map by endpoint, host ones are Host."""
    if buffer.startswith("CPU") or buffer.endswith("_Host"):
        return HOST
    match = RPC_BUFFER.match(buffer)
    if match:
        same_endpoint = [name for name, info in devices.items() if info.get("description") == match.group("endpoint")]
        # The index in the buffer name counts devices of that one server (0 for a single-device rpc-server).
        position = int(match.group("index") or 0)
        if position < len(same_endpoint):
            return same_endpoint[position]
    return buffer


def parse_breakdown(log: str) -> Dict[str, Dict[str, float]]:
    """The last memory breakdown table in the log: ``{device: {model_mib, kv_cache_mib, compute_mib}}``."""
    table: Dict[str, Dict[str, float]] = {}
    for line in _lines(log):
        if "memory breakdown [MiB]" in line:
            table = {}  # a later table (after a reload) replaces an earlier one
            continue
        match = BREAKDOWN_DEVICE.search(line) or BREAKDOWN_OTHER.search(line)
        if match:
            table[match.group("name")] = {
                "model_mib": float(match.group("model")),
                "kv_cache_mib": float(match.group("context")),
                "compute_mib": float(match.group("compute")),
            }
    return table


def _logged_buffers(log: str) -> Dict[str, Dict[str, float]]:
    """Per device, only the fields that buffer lines reported (see ``parse_buffer_lines``)."""
    devices = parse_devices(log)
    seen: Dict[str, Dict[str, float]] = {}
    for line in _lines(log):
        if "llama_model_loader: loaded meta data" in line:
            seen = {}
            continue
        for field, pattern in BUFFER_LINES:
            match = pattern.search(line)
            if not match:
                continue
            fields = seen.setdefault(match.group("buffer"), {})
            mib = float(match.group("mib"))
            fields[field] = mib if field == "compute_mib" else fields.get(field, 0.0) + mib
    sizes: Dict[str, Dict[str, float]] = {}
    for buffer, fields in seen.items():
        entry = sizes.setdefault(device_of_buffer(buffer, devices), {})
        for field, mib in fields.items():
            entry[field] = round(entry.get(field, 0.0) + mib, 2)
    return sizes


def parse_buffer_lines(log: str) -> Dict[str, Dict[str, float]]:
    """Model, KV and compute buffer sizes per device from the info-level lines, host buffers summed as Host.

    Within one model load, model buffers add up (one per split file with mmap) and so do KV buffers (two caches
    on sliding-window models); a compute buffer line replaces the previous one of its buffer (a re-reserve).
    A new load (``llama_model_loader: loaded meta data``) starts over. A field no line mentions is 0.
    """
    return {
        device: {field: fields.get(field, 0.0) for field in FIELDS} for device, fields in _logged_buffers(log).items()
    }


def parse_memory(log: str) -> Dict[str, Dict[str, float]]:
    """Per device (and ``Host``) model, KV cache and compute MiB: from the two-decimal buffer lines where they
    report it, else from the breakdown table, else 0."""
    logged = _logged_buffers(log)
    table = parse_breakdown(log)
    memory: Dict[str, Dict[str, float]] = {}
    for device in list(logged) + [name for name in table if name not in logged]:
        memory[device] = {
            field: logged.get(device, {}).get(field, table.get(device, {}).get(field, 0.0)) for field in FIELDS
        }
    return memory


def compare(
    plan: Mapping[str, Any],
    actual: Mapping[str, Mapping[str, float]],
    tolerance: float = 0.10,
    slack_mib: float = 1.0,
) -> Dict[str, Any]:
    """Estimate against measurement per device and field: ratio actual/estimate, within ``tolerance``.

    A difference of at most ``slack_mib`` always counts as within: the breakdown table rounds down to whole
    MiB, which on a tiny model is more than 10%.
    """
    rows: Dict[str, Dict[str, Any]] = {}
    estimates: Dict[str, Dict[str, float]] = {}
    for device in plan.get("devices", []):
        estimates[device["llama_device"]] = {
            "model_mib": device["weights_mib"],
            "kv_cache_mib": device["kv_cache_mib"],
            "compute_mib": device["compute_buffer_mib"],
        }
    head = plan.get("head")
    if head:
        estimates[HOST] = {
            "model_mib": head["weights_mib"],
            "kv_cache_mib": head["kv_cache_mib"],
            "compute_mib": head["compute_buffer_mib"],
        }
    within_all = True
    for device, estimate in estimates.items():
        measured: Optional[Mapping[str, float]] = actual.get(device)
        row: Dict[str, Any] = {}
        for field in FIELDS:
            expected = float(estimate[field])
            if measured is None or field not in measured:
                row[field] = {"estimate": expected, "actual": None, "ratio": None, "within": False}
                within_all = False
                continue
            got = float(measured[field])
            ratio = round(got / expected, 3) if expected else None
            within = abs(got - expected) <= slack_mib or (ratio is not None and abs(ratio - 1.0) <= tolerance)
            row[field] = {"estimate": expected, "actual": got, "ratio": ratio, "within": within}
            within_all = within_all and within
        rows[device] = row
    return {"within": within_all, "tolerance": tolerance, "devices": rows}


def render_comparison(comparison: Mapping[str, Any]) -> str:
    """One line per device and field, for a benchmark's output."""
    lines = ["device   field          estimate     actual   ratio  within"]
    for device, row in comparison["devices"].items():
        for field in FIELDS:
            cell = row[field]
            lines.append(
                "{:<8} {:<13} {:>9.2f} {:>10} {:>7} {:>7}".format(
                    device,
                    field,
                    cell["estimate"],
                    "-" if cell["actual"] is None else "{:.2f}".format(cell["actual"]),
                    "-" if cell["ratio"] is None else "{:.3f}".format(cell["ratio"]),
                    "yes" if cell["within"] else "NO",
                )
            )
    return "\n".join(lines)
