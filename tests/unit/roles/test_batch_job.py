# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The batch_inference role's job script, without Ray or vLLM: reading prompts, the output's all-or-nothing
write, the fingerprint that makes a re-run a no-op, and one placement group per multi-GPU instance."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "roles" / "batch_inference" / "files" / "batch_job.py"
spec = importlib.util.spec_from_file_location("batch_job", SCRIPT)
batch_job = importlib.util.module_from_spec(spec)
spec.loader.exec_module(batch_job)

PROMPTS = ["The capital of France is", "Write a haiku about GPUs:", 'Say "hello" in JSON']


def answers(rows, text="ok"):
    """A table the way the predictor returns it."""
    return pa.table(
        {
            "row": pa.array(rows, pa.int64()),
            "prompt": [PROMPTS[row % len(PROMPTS)] for row in rows],
            "generated_text": [f"{text} {row}" for row in rows],
            "finish_reason": ["length"] * len(rows),
            "node": ["10.77.4.11"] * len(rows),
        }
    )


def job_config(tmp_path, input_path, **overrides):
    config = {
        "input_path": str(input_path),
        "input_format": "auto",
        "prompt_field": "prompt",
        "output_path": str(tmp_path / "out" / "answers.parquet"),
        "model": "/srv/models/tiny-llama",
        "device": "cpu",
        "num_instances": 2,
        "tensor_parallel_size": 1,
        "pipeline_parallel_size": 1,
        "cpus_per_instance": 1.0,
        "placement": {"bundles": [], "strategy": ""},
        "engine_arguments": {"max_model_len": 256},
        "sampling": {"temperature": 0.8, "max_tokens": 16},
        "batch_size": 4,
    }
    config.update(overrides)
    (tmp_path / "out").mkdir(exist_ok=True)
    return config


# --- prompts -------------------------------------------------------------------------------------------


def test_jsonl_prompts_by_field_or_as_bare_strings(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text(
        json.dumps({"prompt": PROMPTS[0], "id": 7}) + "\n\n" + json.dumps(PROMPTS[1]) + "\n"
        + json.dumps({"prompt": PROMPTS[2]}) + "\n"
    )  # fmt: skip
    assert batch_job.input_format(str(path)) == "jsonl"
    assert batch_job.read_prompts(str(path), "jsonl") == PROMPTS


def test_jsonl_line_without_the_field_names_the_line(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"prompt": "a"}) + "\n" + json.dumps({"text": "b"}) + "\n")
    with pytest.raises(batch_job.BatchInputError, match="line 2"):
        batch_job.read_prompts(str(path), "jsonl")


def test_text_prompts_are_the_non_blank_lines(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("  indented stays indented\r\n\n" + PROMPTS[0] + "\n")
    assert batch_job.read_prompts(str(path), batch_job.input_format(str(path))) == [
        "  indented stays indented",
        PROMPTS[0],
    ]


def test_parquet_prompts_from_a_named_column(tmp_path):
    path = tmp_path / "prompts.parquet"
    pq.write_table(pa.table({"id": [1, 2, 3], "question": PROMPTS}), path)
    assert batch_job.read_prompts(str(path), "parquet", "question") == PROMPTS
    with pytest.raises(batch_job.BatchInputError, match="no column 'prompt'"):
        batch_job.read_prompts(str(path), "parquet", "prompt")


def test_an_unknown_suffix_asks_for_the_format():
    with pytest.raises(batch_job.BatchInputError, match="jsonl, parquet or text"):
        batch_job.input_format("/data/prompts.csv")
    assert batch_job.input_format("/data/prompts.csv", "text") == "text"


# --- the output: all rows or nothing ---------------------------------------------------------------------


def test_the_output_is_replaced_only_when_every_prompt_has_its_row(tmp_path):
    output = tmp_path / "answers.parquet"
    batch_job.write_output([answers([0, 1])], str(output), "first", 2, report=lambda _line: None)
    # Rows come back out of order from several instances; all of them is what counts.
    lines = []
    written = batch_job.write_output(
        [answers([2, 0], "new"), answers([1], "new")], str(output), "second", 3, lines.append
    )
    assert written == 3
    table = pq.read_table(output)
    assert sorted(table.column("row").to_pylist()) == [0, 1, 2]
    assert set(table.column("generated_text").to_pylist()) == {"new 0", "new 1", "new 2"}
    assert batch_job.output_fingerprint(str(output)) == "second"
    assert lines[-1].startswith("3/3 prompts done (100%)")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["answers.parquet"]


@pytest.mark.parametrize(
    "batches, problem",
    [
        ([[0, 1]], "2 rows came back for 3 prompts"),
        ([[0, 1], [1, 2]], "Row 1 came back twice"),
        ([[0, 1, 5]], "Row 5"),
    ],
)
def test_a_missing_or_repeated_row_leaves_the_previous_output_whole(tmp_path, batches, problem):
    output = tmp_path / "answers.parquet"
    batch_job.write_output([answers([0, 1, 2], "old")], str(output), "old", 3, report=lambda _line: None)
    before = output.read_bytes()
    with pytest.raises(RuntimeError, match=problem):
        batch_job.write_output([answers(rows) for rows in batches], str(output), "new", 3, report=lambda _line: None)
    assert output.read_bytes() == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["answers.parquet"]


def test_an_interrupted_stream_leaves_no_temporary_file(tmp_path):
    def interrupted():
        yield answers([0])
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        batch_job.write_output(interrupted(), str(tmp_path / "answers.parquet"), "new", 2, report=lambda _line: None)
    assert list(tmp_path.iterdir()) == []


def test_temporaries_of_killed_drivers_go_and_those_of_running_ones_stay(tmp_path):
    dead_pid = 2**22 + 1  # above Linux's PID_MAX_LIMIT: no process has it
    (tmp_path / f".answers.parquet.tmp-{dead_pid}").write_bytes(b"PAR1 cut short")
    (tmp_path / f".answers.parquet.tmp-{os.getppid()}").write_bytes(b"PAR1 still being written")
    (tmp_path / ".other.parquet.tmp-1").write_bytes(b"another output's")
    batch_job.write_output([answers([0])], str(tmp_path / "answers.parquet"), "new", 1, report=lambda _line: None)
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        f".answers.parquet.tmp-{os.getppid()}",
        ".other.parquet.tmp-1",
        "answers.parquet",
    ]


# --- re-runs -------------------------------------------------------------------------------------------


def test_the_output_is_current_only_for_the_same_prompts_and_result_settings(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": prompt}) + "\n" for prompt in PROMPTS))
    config = job_config(tmp_path, prompts)
    assert batch_job.check(config) == {
        "current": False,
        "fingerprint": batch_job.fingerprint(config, batch_job.file_sha256(str(prompts))),
        "output_fingerprint": None,
    }
    fingerprint = batch_job.check(config)["fingerprint"]
    batch_job.write_output([answers([0, 1, 2])], config["output_path"], fingerprint, 3, report=lambda _line: None)
    assert batch_job.check(config)["current"] is True
    # More instances or a bigger batch give the same answers; other sampling or other prompts do not.
    assert batch_job.check(dict(config, num_instances=8, batch_size=64))["current"] is True
    assert batch_job.check(dict(config, sampling={"temperature": 0.0, "max_tokens": 16}))["current"] is False
    prompts.write_text(prompts.read_text() + json.dumps({"prompt": "one more"}) + "\n")
    assert batch_job.check(config)["current"] is False


def test_check_on_the_command_line_prints_json(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    config_path = tmp_path / "job.json"
    config_path.write_text(json.dumps(job_config(tmp_path, prompts)))
    assert batch_job.main(["--config", str(config_path), "--check"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["current"] is False and len(printed["fingerprint"]) == 64


def test_an_output_that_is_not_parquet_has_no_fingerprint(tmp_path):
    path = tmp_path / "answers.parquet"
    path.write_text("half-written by something else")
    assert batch_job.output_fingerprint(str(path)) is None


# --- instances and their resources ---------------------------------------------------------------------


def test_cpu_instances_reserve_cpus_only():
    assert batch_job.actor_resources({"device": "cpu", "cpus_per_instance": 1.0}) == {"num_cpus": 1.0}


def test_a_one_gpu_instance_takes_its_gpu_directly():
    config = {"device": "gpu", "placement": {"bundles": [], "strategy": ""}}
    assert batch_job.actor_resources(config) == {"num_cpus": 1.0, "num_gpus": 1}


def test_every_multi_gpu_instance_gets_its_own_placement_group():
    created = []

    def placement_group(bundles, strategy):
        created.append((bundles, strategy))
        return f"group-{len(created)}"

    def scheduling_strategy(group, placement_group_capture_child_tasks):
        return (group, placement_group_capture_child_tasks)

    bundles = [{"GPU": 1.0, "CPU": 1.0}] * 4
    config = {"device": "gpu", "cpus_per_instance": 1.0, "placement": {"bundles": bundles, "strategy": "STRICT_PACK"}}
    resources = batch_job.actor_resources(config, placement_group, scheduling_strategy)
    # The actor takes no GPU itself: its vLLM workers take the bundles' GPUs.
    assert resources["num_gpus"] == 0
    # Ray Data calls the function once per actor it starts: one new group each time, capturing vLLM's workers.
    first, second = resources["ray_remote_args_fn"](), resources["ray_remote_args_fn"]()
    assert first == {"scheduling_strategy": ("group-1", True)}
    assert second == {"scheduling_strategy": ("group-2", True)}
    assert created == [(bundles, "STRICT_PACK"), (bundles, "STRICT_PACK")]


def test_a_multi_gpu_instance_runs_its_workers_on_ray():
    config = {"model": "/srv/models/m", "tensor_parallel_size": 4, "pipeline_parallel_size": 2,
              "engine_arguments": {"max_model_len": 4096}}  # fmt: skip
    assert batch_job.engine_arguments(config) == {
        "model": "/srv/models/m",
        "tensor_parallel_size": 4,
        "pipeline_parallel_size": 2,
        "max_model_len": 4096,
        "distributed_executor_backend": "ray",
    }
    single = dict(config, tensor_parallel_size=1, pipeline_parallel_size=1)
    assert "distributed_executor_backend" not in batch_job.engine_arguments(single)
