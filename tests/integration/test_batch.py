# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""playbooks/batch.yml on the sandbox: Ray Data + vllm.LLM (CPU, TP 1 per instance) across two hosts.

The runtime and the Ray units come from tests/integration/ray/converge.yml and the model from the
model_weights role (tests/integration/batch/prepare.yml); vLLM on CPU refuses Ray as executor, so each
instance is one CPU worker and the plan's 2 devices give two instances.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from .helpers import REPO_ROOT, ansible_playbook, prepare_sandbox_caches, recap, sandbox_hosts, ssh

BATCH = REPO_ROOT / "playbooks" / "batch.yml"
# The Ray units of tests/integration/ray/converge.yml, and the model placed as deploy.yml places it.
RAY_PREPARE = REPO_ROOT / "tests" / "integration" / "batch" / "prepare.yml"
OUTPUT = "/srv/batch/answers.parquet"
PYTHON = "/opt/llmserve/venv/bin/python"
PROMPTS = [f"Prompt number {index}: tell me about the number {index * 7}." for index in range(24)]
SETTINGS = {
    "batch_inference_output_path": OUTPUT,
    "batch_inference_tensor_parallel_size": 1,
    "batch_inference_batch_size": 4,
    "batch_inference_engine_arguments": {"dtype": "bfloat16", "enforce_eager": True},
    "batch_inference_sampling": {"temperature": 0.0, "max_tokens": 8},
}
READ_OUTPUT = (
    f"""{PYTHON} -c 'import json, pyarrow.parquet as pq; print(json.dumps(pq.read_table("{OUTPUT}").to_pylist()))'"""
)

pytestmark = pytest.mark.sandbox


@pytest.fixture(scope="module")
def ray_cluster(sandbox_cli):
    # The runtime, Ray and the model, without deploying a vLLM endpoint only to stop it.
    sandbox_cli("up", "--hosts", "2", timeout=900)
    prepare_sandbox_caches()
    run = ansible_playbook(RAY_PREPARE, timeout=1800)
    assert run.returncode == 0, run.stdout[-6000:]
    hosts, key = sandbox_hosts()
    # Ray's memory monitor kills actors at 95% of the machine's memory, and the machine is shared: serving
    # ranks a native deployment left pause while the two batch engines run; the next module that needs them
    # gets them back from ensure_native_cluster. Spare hosts (a third one left by earlier modules) have no
    # vLLM unit.
    for name in hosts:
        ssh(hosts, key, name, "if systemctl cat vllm.service >/dev/null 2>&1; then systemctl stop vllm.service; fi")
    return hosts, key


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("batch") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": index, "prompt": prompt}) + "\n" for index, prompt in enumerate(PROMPTS)))
    return path


def run_batch(prompts_file, **overrides):
    settings = dict(SETTINGS, batch_inference_input_path=str(prompts_file), **overrides)
    return ansible_playbook(BATCH, "-e", json.dumps(settings), timeout=1500)


def output_digest(hosts, key):
    return ssh(hosts, key, "node1", f"sha256sum {OUTPUT}").stdout.split()[0]


@pytest.fixture(scope="module")
def first_run(ray_cluster, prompts_file):
    # Forced: an output from an earlier session with the same prompts would make this run a no-op.
    return run_batch(prompts_file, batch_inference_force=True)


def test_every_prompt_gets_one_row_generated_on_the_cluster(ray_cluster, first_run):
    hosts, key = ray_cluster
    assert first_run.returncode == 0, first_run.stdout[-8000:] + first_run.stderr[-2000:]
    # One instance per host (one CPU device each // TP 1; the suite may leave a spare third host), and
    # the job's progress printed while it ran.
    instances = len(hosts)
    assert f"{instances} instance(s) of vLLM, each TP 1 x PP 1" in first_run.stdout
    assert "ray job | [llmserve-batch] 24 prompts from" in first_run.stdout
    assert f"{instances} instance(s) of TP 1 x PP 1 on cpu" in first_run.stdout
    assert "ray job | [llmserve-batch] 24/24 prompts done (100%)" in first_run.stdout
    rows = json.loads(ssh(hosts, key, "node1", READ_OUTPUT).stdout)
    assert sorted(row["row"] for row in rows) == list(range(len(PROMPTS)))
    assert all(row["prompt"] == PROMPTS[row["row"]] for row in rows)
    assert all(row["finish_reason"] in ("length", "stop") and isinstance(row["generated_text"], str) for row in rows)
    assert any(row["generated_text"] for row in rows)
    assert {row["node"] for row in rows} <= set(hosts.values())


def test_a_rerun_with_the_same_prompts_runs_nothing(ray_cluster, prompts_file, first_run):
    hosts, key = ray_cluster
    assert first_run.returncode == 0
    before = output_digest(hosts, key)
    run = run_batch(prompts_file)
    assert run.returncode == 0, run.stdout[-6000:]
    assert "already answers these prompts" in run.stdout
    assert all(counts["changed"] == 0 for counts in recap(run.stdout).values()), recap(run.stdout)
    assert output_digest(hosts, key) == before


def test_a_failing_job_fails_the_play_with_its_log_and_keeps_the_output(ray_cluster, prompts_file, first_run):
    hosts, key = ray_cluster
    assert first_run.returncode == 0
    before = output_digest(hosts, key)
    run = run_batch(prompts_file, batch_inference_prompt_field="question")
    assert run.returncode != 0
    assert "ended FAILED" in run.stdout, run.stdout[-6000:]
    assert "line 1: expected a string or an object with a string 'question'" in run.stdout
    assert output_digest(hosts, key) == before
    leftovers = ssh(hosts, key, "node1", f"ls -A {OUTPUT.rsplit('/', 1)[0]}").stdout.split()
    assert leftovers == ["answers.parquet"]


def test_the_prompts_reach_the_head_unchanged(ray_cluster, prompts_file):
    hosts, key = ray_cluster
    # The role names the head's copy after a hash of the controller path (two prompt files may share a name).
    copy = f"/var/lib/llmserve/batch/{hashlib.sha1(str(prompts_file).encode()).hexdigest()[:12]}-prompts.jsonl"
    copied = ssh(hosts, key, "node1", f"sha256sum {copy}").stdout.split()[0]
    assert copied == hashlib.sha256(prompts_file.read_bytes()).hexdigest()
