# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
from __future__ import annotations

from pathlib import Path

from ansible_collections.llmserve.cluster.plugins.module_utils._model_spec import load_model_spec_from_dir
from ansible_collections.llmserve.cluster.plugins.module_utils._parallel_planner import plan
from ansible_collections.llmserve.cluster.plugins.module_utils._plan_inputs import ClusterNode, PlanOptions
from ansible_collections.llmserve.cluster.plugins.module_utils._plan_table import render_box, render_plan

MODELS = Path(__file__).resolve().parents[2] / "fixtures" / "models"


def test_box_lines_line_up_and_cells_are_centred():
    box = render_box("ESTIMATE", ["layers", "vram"], [["80 + 1", "28.89 GiB"], ["1", "2.50 GiB"]])
    lines = box.splitlines()
    assert len({len(line) for line in lines}) == 1
    assert lines[1].startswith("| ESTIMATE")
    assert lines[3] == "| LAYERS |    VRAM   |"
    assert lines[5] == "| 80 + 1 | 28.89 GiB |"
    assert lines[0] == "+" + "-" * (len(lines[0]) - 2) + "+"


def test_a_long_title_widens_the_box():
    box = render_box("a title much longer than the two narrow columns below it", ["a", "b"], [["1", "2"]])
    widths = {len(line) for line in box.splitlines()}
    assert len(widths) == 1


def test_plan_table_shows_strategy_sizes_and_every_stage():
    spec = load_model_spec_from_dir(str(MODELS / "DeepSeek-R1-BF16"))
    cluster = [ClusterNode(f"node{index}", 8, 81920, "NVIDIA A800-SXM4-80GB") for index in range(1, 5)]
    result = plan(spec, cluster, PlanOptions())
    table = render_plan(result.to_dict())
    assert table == result.table
    summary_row = next(line for line in table.splitlines() if "tensor_pipeline_parallel" in line)
    cells = [cell.strip() for cell in summary_row.strip("|").split("|")]
    assert cells == [
        "tensor_pipeline_parallel",
        "8",
        "4",
        "1",
        "32",
        "4",
        "auto",
        f"{result.kv_cache_tokens:,}",
        f"{result.max_concurrency:.2f}x",
    ]
    assert len({len(line) for line in table.splitlines()[:7]}) == 1
    assert "max_model_len 163,840" in table
    for stage, layers in enumerate(["0-14 (15)", "15-29 (15)", "30-45 (16)", "46-60 (15)"]):
        row = next(line for line in table.splitlines() if layers in line)
        assert f"node{stage + 1}" in row
    assert f"{result.kv_cache_tokens:,}" in table
