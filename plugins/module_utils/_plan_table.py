# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Render a parallel plan as boxed tables, in the look of gguf-parser's estimate."""

from __future__ import annotations

from typing import Any, List, Mapping, Sequence

GIB = 1024**3


def gib(value: float) -> str:
    return f"{value / GIB:.2f} GiB"


def render_box(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A box with a full-width title row, an upper-case header row and centred cells."""
    widths = [len(header) + 2 for header in headers]
    for row in rows:
        for column, cell in enumerate(row):
            widths[column] = max(widths[column], len(cell) + 2)
    inner = sum(widths) + len(widths) - 1
    title_text = f" {title} "
    if len(title_text) > inner:
        # Spread the extra width over the columns so that a long title does not leave one column gaping.
        extra = len(title_text) - inner
        for column in range(len(widths)):
            widths[column] += extra // len(widths) + (1 if column < extra % len(widths) else 0)
        inner = len(title_text)
    full_rule = "+" + "-" * inner + "+"
    rule = "+" + "+".join("-" * width for width in widths) + "+"

    def line(cells: Sequence[str]) -> str:
        return "|" + "|".join(cell.center(width) for cell, width in zip(cells, widths)) + "|"

    lines = [full_rule, "|" + title_text.ljust(inner) + "|", rule, line([h.upper() for h in headers]), rule]
    for row in rows:
        lines.append(line(row))
        lines.append(rule)
    return "\n".join(lines)


def render_plan(plan: Mapping[str, Any]) -> str:
    """The summary box (strategy, sizes, KV capacity) above the per-stage box (memory of one GPU each)."""
    model = plan["model"]
    per_gpu = plan["per_gpu"]
    gpus = sum(node["gpus_used"] for node in plan["nodes"])
    quantization = model.get("quantization")
    title = "PLAN  {}  ({}, {}, {} weights, max_model_len {:,})".format(
        model["name"],
        model["architecture"],
        quantization or model["dtype"],
        gib(model["loaded_weights_bytes"]),
        plan["max_model_len"],
    )
    summary = render_box(
        title,
        ["strategy", "tp", "pp", "dp", "gpus", "nodes", "kv cache", "kv tokens", "max concurrency"],
        [
            [
                plan["strategy"],
                str(plan["tensor_parallel_size"]),
                str(plan["pipeline_parallel_size"]),
                str(plan["data_parallel_size"]),
                str(gpus),
                str(len(plan["nodes"])),
                plan["kv_cache_dtype"],
                "{:,}".format(plan["kv_cache_tokens"]),
                "{:.2f}x".format(plan["max_concurrency"]),
            ]
        ],
    )
    stage_rows: List[List[str]] = []
    for stage in plan["pipeline_stages"]:
        stage_rows.append(
            [
                str(stage["stage"]),
                "{}-{} ({})".format(stage["first_layer"], stage["last_layer"], stage["num_layers"]),
                ",".join(stage["nodes"]),
                gib(stage["budget_bytes"]),
                gib(stage["weights_bytes"]),
                gib(stage["activation_bytes"]),
                gib(stage["non_torch_bytes"]),
                gib(stage["kv_cache_bytes"]),
                "{:,}".format(stage["kv_cache_tokens"]),
            ]
        )
    stages = render_box(
        "PER GPU  budget = {} x CUDA memory ({}); {:,} batched tokens, {} sequences in the profile run".format(
            plan["gpu_memory_utilization"],
            gib(per_gpu["cuda_total_bytes"]),
            plan["max_num_batched_tokens"],
            plan["max_num_seqs"],
        ),
        ["stage", "layers", "nodes", "budget", "weights", "activation", "non-torch", "kv cache", "kv tokens"],
        stage_rows,
    )
    return summary + "\n" + stages
