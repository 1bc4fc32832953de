# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""All-reduce timings to algorithm and bus bandwidth, as nccl-tests reports them.

nccl-tests (doc/PERFORMANCE.md): algbw = bytes / time; for all-reduce every rank sends and
receives 2(n-1)/n of the buffer, so busbw = algbw * 2(n-1)/n. Bus bandwidth is comparable with
the hardware's link speed whatever the number of ranks. Rates are in GB/s (10^9 bytes).
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence


def allreduce_bus_factor(world_size: int) -> float:
    """2(n-1)/n: 0 for a single rank, which moves nothing over any bus."""
    if world_size < 1:
        raise ValueError(f"world size must be at least 1, got {world_size}")
    return 2.0 * (world_size - 1) / world_size


def bandwidth_rows(timings: Sequence[Mapping[str, Any]], world_size: int) -> List[Dict[str, Any]]:
    """One row per message size from TIMINGS ({bytes, seconds} per all-reduce, the slowest rank's mean)."""
    factor = allreduce_bus_factor(world_size)
    rows = []
    for timing in sorted(timings, key=lambda item: int(item["bytes"])):
        size, seconds = int(timing["bytes"]), float(timing["seconds"])
        if seconds <= 0:
            raise ValueError(f"an all-reduce of {size} bytes cannot take {seconds} s")
        algorithm_gbps = size / seconds / 1e9
        rows.append(
            {
                "bytes": size,
                "time_us": seconds * 1e6,
                "algbw_gbps": algorithm_gbps,
                "busbw_gbps": algorithm_gbps * factor,
            }
        )
    return rows


def human_bytes(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} B"


def bandwidth_table(rows: Sequence[Mapping[str, Any]], world_size: int, backend: str) -> str:
    """A Markdown table, one line per message size."""
    lines = [
        f"all-reduce over {world_size} ranks ({backend}); busbw = algbw * 2(n-1)/n",
        "| size | time (us) | algbw (GB/s) | busbw (GB/s) |",
        "|---:|---:|---:|---:|",
    ]
    for row in rows:
        size = human_bytes(int(row["bytes"]))
        lines.append(f"| {size} | {row['time_us']:.1f} | {row['algbw_gbps']:.3f} | {row['busbw_gbps']:.3f} |")
    return "\n".join(lines)
