# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""`vllm bench serve --save-result` files, one per concurrency, to a table, a summary and a plot.

The keys are those vLLM's vllm/benchmarks/serve.py writes: request_throughput, output_throughput,
max_concurrency, completed, failed, and p<N>_<metric>_ms for each --metric-percentiles entry
(median_<metric>_ms always). Run with `--percentile-metrics ttft,tpot,itl,e2el --metric-percentiles 50,99`.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

COLUMNS = (
    ("max_concurrency", "concurrency", "{:d}"),
    ("completed", "completed", "{:d}"),
    ("failed", "failed", "{:d}"),
    ("request_throughput", "req/s", "{:.2f}"),
    ("output_throughput", "output tok/s", "{:.1f}"),
    ("ttft_p50_ms", "TTFT p50 (ms)", "{:.1f}"),
    ("ttft_p99_ms", "TTFT p99 (ms)", "{:.1f}"),
    ("itl_p50_ms", "ITL p50 (ms)", "{:.1f}"),
    ("itl_p99_ms", "ITL p99 (ms)", "{:.1f}"),
)


class BenchResultError(ValueError):
    """A result file that lacks what the table needs."""


def _percentile(result: Mapping[str, Any], metric: str, percentile: int) -> float:
    value = result.get(f"p{percentile}_{metric}_ms")
    if value is None and percentile == 50:
        value = result.get(f"median_{metric}_ms")
    if value is None:
        raise BenchResultError(
            f"no p{percentile} {metric.upper()} in the result: run vllm bench serve with "
            "--percentile-metrics ttft,tpot,itl,e2el --metric-percentiles 50,99"
        )
    return float(value)


def summarize(result: Mapping[str, Any]) -> Dict[str, Any]:
    """One row from one result file."""
    if result.get("max_concurrency") is None:
        raise BenchResultError("the result has no max_concurrency: run vllm bench serve with --max-concurrency")
    for key in ("completed", "request_throughput", "output_throughput"):
        if key not in result:
            raise BenchResultError(f"the result has no {key}")
    return {
        "max_concurrency": int(result["max_concurrency"]),
        "num_prompts": int(result.get("num_prompts") or 0),
        "completed": int(result["completed"]),
        "failed": int(result.get("failed") or 0),
        "duration_s": float(result.get("duration") or 0.0),
        "request_throughput": float(result["request_throughput"]),
        "output_throughput": float(result["output_throughput"]),
        "total_token_throughput": float(result.get("total_token_throughput") or 0.0),
        "ttft_p50_ms": _percentile(result, "ttft", 50),
        "ttft_p99_ms": _percentile(result, "ttft", 99),
        "itl_p50_ms": _percentile(result, "itl", 50),
        "itl_p99_ms": _percentile(result, "itl", 99),
    }


def summarize_all(results: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """Rows sorted by concurrency; a concurrency measured twice is refused (which run would count?)."""
    rows = sorted((summarize(result) for result in results), key=lambda row: row["max_concurrency"])
    seen = [row["max_concurrency"] for row in rows]
    duplicates = sorted({value for value in seen if seen.count(value) > 1})
    if duplicates:
        raise BenchResultError(f"concurrency {duplicates} appears in more than one result")
    return rows


def problems(rows: Sequence[Mapping[str, Any]]) -> List[str]:
    """Failed or missing requests: numbers from a run that did not serve every prompt mislead."""
    found = []
    for row in rows:
        if row["failed"] or row["completed"] == 0:
            found.append(f"concurrency {row['max_concurrency']}: {row['completed']} completed, {row['failed']} failed")
    return found


def results_table(rows: Sequence[Mapping[str, Any]], title: Optional[str] = None) -> str:
    """A Markdown table, one line per concurrency."""
    lines = [title] if title else []
    lines.append("| " + " | ".join(header for _key, header, _format in COLUMNS) + " |")
    lines.append("|" + "---:|" * len(COLUMNS))
    for row in rows:
        lines.append("| " + " | ".join(cell.format(row[key]) for key, _header, cell in COLUMNS) + " |")
    return "\n".join(lines)


def plot_throughput(rows: Sequence[Mapping[str, Any]], title: str) -> bytes:
    """A small PNG: output tokens/s and requests/s against concurrency."""
    import io

    import matplotlib

    # No display on a controller run from a terminal or CI.
    matplotlib.use("Agg")
    from matplotlib import pyplot

    concurrency = [row["max_concurrency"] for row in rows]
    figure, tokens_axis = pyplot.subplots(figsize=(5.0, 3.2), dpi=100)
    tokens_axis.plot(concurrency, [row["output_throughput"] for row in rows], marker="o", color="tab:blue")
    tokens_axis.set_xlabel("max concurrency")
    tokens_axis.set_ylabel("output tokens/s", color="tab:blue")
    if len(concurrency) > 1 and concurrency[-1] / max(concurrency[0], 1) >= 8:
        tokens_axis.set_xscale("log", base=2)
    tokens_axis.set_xticks(concurrency)
    tokens_axis.set_xticklabels([str(value) for value in concurrency])
    requests_axis = tokens_axis.twinx()
    requests_axis.plot(
        concurrency, [row["request_throughput"] for row in rows], marker="s", linestyle="--", color="tab:orange"
    )
    requests_axis.set_ylabel("requests/s", color="tab:orange")
    tokens_axis.set_title(title, fontsize=9)
    tokens_axis.grid(True, alpha=0.3)
    figure.tight_layout()
    image = io.BytesIO()
    figure.savefig(image, format="png")
    pyplot.close(figure)
    return image.getvalue()
