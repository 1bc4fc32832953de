# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The decisions of the transactional serving change, on shapes captured on the sandbox.

fixtures/systemd/serving_ready holds `systemctl show` of vllm.service (the properties serving_rank_watch asks
for) while serving and after a failed start, the log of a start that failed, the rendered units of rank 0 and of
a headless rank 1 (the latter from sandbox slot 1), `ss -Hltnp` on a serving rank 0 and `/proc/<pid>/cgroup` of
vLLM's API server and of an SSH session (systemd 252, Debian 12, cgroup v1 hybrid).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ansible_collections.llmserve.cluster.plugins.module_utils._serving_ready import (
    FATAL_LOG_MARKERS,
    PARSE_MARKER,
    READY_BASE_SECONDS,
    READY_PER_NODE_SECONDS,
    exec_start_argv,
    fatal_line,
    foreign_holders,
    group_readiness,
    in_unit,
    parse_failure,
    parse_show,
    port_holders,
    rank_state,
    ready_timeout,
    unit_endpoint,
    unit_environment,
)

CAPTURES = Path(__file__).resolve().parents[2] / "fixtures" / "systemd" / "serving_ready"
UNIT_CAPTURES = Path(__file__).resolve().parents[2] / "fixtures" / "systemd" / "serving_unit"


def capture(name: str) -> str:
    return (CAPTURES / name).read_text()


def test_a_running_rank_with_a_clean_log_is_starting():
    properties = parse_show(capture("node1-vllm-running.show"))
    assert properties["ActiveState"] == "active" and properties["InvocationID"]
    assert rank_state(properties, ["INFO 12-03 18:44:10 [api_server.py] Starting vLLM API server"]) == {
        "state": "starting",
        "reason": None,
    }


def test_a_rank_systemd_is_about_to_restart_has_failed():
    # Captured right after the main process died: activating/auto-restart, before NRestarts counts it.
    properties = parse_show((UNIT_CAPTURES / "node2-vllm-auto-restart.show").read_text())
    state = rank_state(properties)
    assert state == {
        "state": "failed",
        "reason": "vLLM exited (exit status ?) and systemd is about to start it again",
    }


def test_a_rank_systemd_restarted_has_failed_even_while_it_runs_again():
    properties = parse_show(capture("node1-vllm-running.show"))
    properties["NRestarts"] = "1"
    state = rank_state(properties)
    assert state["state"] == "failed" and "restarted it 1 time(s)" in state["reason"]


@pytest.mark.parametrize(
    ("active", "sub", "words"),
    [("failed", "failed", "the unit failed"), ("inactive", "dead", "the unit stopped (inactive/dead")],
)
def test_a_failed_or_stopped_unit_has_failed(active, sub, words):
    properties = parse_show(capture("node1-vllm-running.show"))
    properties.update(ActiveState=active, SubState=sub, ExecMainStatus="1", Result="exit-code")
    state = rank_state(properties)
    assert state["state"] == "failed" and words in state["reason"] and "exit status 1" in state["reason"]


def test_a_start_that_exits_is_failed_by_systemds_state_not_by_guessing_from_its_log():
    # vLLM 0.32 with --tokenizer naming a missing directory: a traceback, then the process exits 1. The markers
    # are strict (a WARNING line there mentions "OSError"), so the log alone does not fail the rank...
    log = capture("node1-vllm-bad-tokenizer.log").splitlines()
    assert any("HFValidationError" in line for line in log) and fatal_line(log) is None
    # ...the unit does, once systemd is about to restart it (captured in that state).
    properties = parse_show((UNIT_CAPTURES / "node2-vllm-auto-restart.show").read_text())
    assert rank_state(properties, log)["state"] == "failed"


def test_a_start_up_error_in_the_log_fails_the_rank_before_its_process_exits():
    # The line vLLM's engine core logs (vllm/v1/engine/core.py, logger.exception) when it cannot start,
    # in the journal's format of the capture above; the API server lingers a while after it.
    engine_error = "(EngineCore_DP0 pid=2871) ERROR 12-03 18:57:20 [core.py:1510] EngineCore failed to start."
    log = [*capture("node1-vllm-bad-tokenizer.log").splitlines()[:20], engine_error]
    line = fatal_line(log)
    assert line is not None and line.endswith("EngineCore failed to start.")
    assert any(marker in line for marker in FATAL_LOG_MARKERS)
    state = rank_state(parse_show(capture("node1-vllm-running.show")), log)
    assert state["state"] == "failed" and state["reason"].startswith("its log shows a start-up error")


def test_the_group_is_ready_when_rank0_answers_even_if_a_worker_looks_slow():
    reports = [
        {"host": "node1", "state": "starting", "answered": True},
        {"host": "node2", "state": "starting", "answered": False},
    ]
    assert group_readiness(reports, "node1", deadline=100, now=50)["ok"] is True


def test_a_worker_that_failed_ends_the_wait_for_the_whole_group():
    reports = [
        {"host": "node1", "state": "starting", "answered": False, "error": "Connection refused"},
        {"host": "node2", "state": "failed", "reason": "the unit failed (exit-code, exit status 1)"},
    ]
    verdict = group_readiness(reports, "node1", deadline=1000, now=10)
    assert verdict == {
        "done": True,
        "ok": False,
        "reason": "node2: the unit failed (exit-code, exit status 1)",
        "failed_hosts": ["node2"],
    }


def test_the_wait_goes_on_while_every_rank_starts_and_ends_at_the_deadline():
    reports = [{"host": "node1", "state": "starting", "answered": False, "error": "Connection refused"}, None]
    assert group_readiness(reports, "node1", deadline=100, now=99)["done"] is False
    verdict = group_readiness(reports, "node1", deadline=100, now=100)
    assert verdict["done"] and not verdict["ok"]
    assert verdict["reason"] == "no completion before the ready timeout (last answer: Connection refused)"


def test_another_groups_answer_does_not_count():
    reports = [{"host": "node2", "state": "starting", "answered": True}]
    assert group_readiness(reports, "node1", deadline=100, now=10)["done"] is False


def test_the_ready_timeout_follows_the_weights_each_node_reads_and_the_node_count():
    # 70B in bf16 over 2 x 8 GPUs: each GPU holds 8.8 GB, each node reads 70.4 GB.
    plan = {"per_gpu": {"weights_bytes": 8_800_000_000}, "nodes": [{"gpus_used": 8}, {"gpus_used": 8}]}
    assert ready_timeout(plan) == READY_BASE_SECONDS + READY_PER_NODE_SECONDS + 352
    tiny = {"per_gpu": {"weights_bytes": 2_000_000}, "nodes": [{"gpus_used": 1}]}
    assert ready_timeout(tiny) == READY_BASE_SECONDS + 1
    assert ready_timeout(plan, 90) == 90 and ready_timeout(plan, "600") == 600 and ready_timeout(plan, None) > 600


def test_a_ready_timeout_of_zero_is_refused():
    with pytest.raises(ValueError, match="positive number of seconds"):
        ready_timeout({}, 0)


def test_the_command_line_is_read_from_a_rendered_unit():
    unit = capture("node1-vllm.service")
    argv = exec_start_argv(unit)
    assert argv[:3] == ["/opt/llmserve/venv/bin/vllm", "serve", "/srv/models/tiny-llama"]
    assert argv[argv.index("--node-rank") + 1] == "0" and argv[-2:] == ["--port", "8000"]
    environment = unit_environment(unit)
    assert environment["HF_HUB_OFFLINE"] == "1" and "VLLM_API_KEY" not in environment


def test_the_endpoint_of_a_rendered_rank0_unit_is_its_host_port_and_served_name():
    assert unit_endpoint(capture("node1-vllm.service")) == {"host": "10.77.0.11", "port": 8000, "model": "tiny-llama"}


def test_an_endpoint_left_to_vllms_defaults_and_options_written_with_equals():
    unit = capture("node1-vllm.service")
    defaults = unit.replace("    --served-model-name tiny-llama \\\n", "").replace("    --host 10.77.0.11 \\\n", "")
    defaults = defaults.replace("    --port 8000\n", "    --enforce-eager\n")
    assert unit_endpoint(defaults) == {"host": None, "port": 8000, "model": "/srv/models/tiny-llama"}
    moved = unit.replace("--port 8000", "--port=8001").replace(
        "--served-model-name tiny-llama", "--served-model-name=tl"
    )
    assert unit_endpoint(moved) == {"host": "10.77.0.11", "port": 8001, "model": "tl"}


def test_a_headless_rank_has_no_endpoint():
    assert unit_endpoint(capture("node2-vllm.service")) == {"host": None, "port": None, "model": "tiny-llama"}


def test_a_unit_that_does_not_run_vllm_serve_has_no_endpoint():
    with pytest.raises(ValueError, match="not `vllm serve`"):
        unit_endpoint("[Service]\nExecStart=/opt/llmserve/venv/bin/ray start --head\n")


def test_a_unit_without_exec_start_is_an_error():
    with pytest.raises(ValueError, match="no ExecStart"):
        exec_start_argv("[Unit]\nDescription=x\n")


def test_the_api_and_rendezvous_ports_of_a_serving_rank0_belong_to_its_unit():
    listening = capture("node1-ss-listening.txt")
    api = port_holders(listening, 8000)
    assert api == [{"address": "10.77.0.11", "name": "vllm", "pid": 1930}]
    assert port_holders(listening, 29555) == [{"address": "*", "name": "VLLM::Worker_TP", "pid": 1984}]
    assert port_holders(listening, 22)[0]["name"] == "sshd" and port_holders(listening, 8001) == []
    assert foreign_holders(api, {1930}) == [] and foreign_holders(api, set()) == api


def test_a_process_is_told_apart_by_its_unit_on_cgroup_v1_and_v2():
    assert in_unit(capture("node1-vllm-api-server.cgroup"), "vllm.service")
    assert not in_unit(capture("node1-ssh-session.cgroup"), "vllm.service")
    assert in_unit("0::/system.slice/vllm.service/worker\n", "vllm.service")
    assert not in_unit("0::/system.slice/vllm.service.d\n", "vllm.service")


def test_the_argument_check_reports_vllms_own_words():
    refused = capture("node1-vllm-parse-refused.txt")
    assert parse_failure(2, "", refused) == (
        "the installed vLLM refuses the new command line: vllm serve: error: argument --dtype: invalid choice: "
        "'float8' (choose from 'auto', 'bfloat16', 'float', 'float16', 'float32', 'half')"
    )
    assert parse_failure(0, "Triton is installed\n" + PARSE_MARKER + "\n", "") is None
    assert "did not finish" in parse_failure(124, "", "")
    assert parse_failure(1, "", "") == "the installed vLLM refuses the new command line: exit status 1"
