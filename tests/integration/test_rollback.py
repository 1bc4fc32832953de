# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A serving change that cannot serve leaves the configuration that served before serving.

Drills on the serving two-host cluster (TP 2, native backend), each a deploy.yml re-run with one bad setting:

1. a flag value the installed vLLM refuses (``--dtype float8``): refused by vLLM's own parser while the old
   group serves, so nothing stops;
2. a setting that makes vLLM exit at start-up (``--tokenizer`` naming a missing directory), with the API moved to
   another port in the same change: the group switches, rank 0 exits, the wait ends well before the ready
   timeout, both nodes go back, and the old group is waited for on the port it serves on;
3. a new configuration that stays up but does not answer within the ready timeout (a 15 s
   ``vllm_serve_ready_timeout``; vLLM on the sandbox takes about a minute to answer): rolled back too.

Each asserts what can fail: the deploy ends non-zero with the reason and the variable, a completion was
answered before and is answered after, the unit and environment that serve are the old ones byte for byte,
plan.json is unchanged, and the new unit is left in the staged directory. A last plain re-run restarts nothing.
"""

from __future__ import annotations

import time

import pytest

from .helpers import REPO_ROOT, ansible_playbook, completion_answers, ensure_native_cluster, recap, sandbox_hosts, ssh

DEPLOY = REPO_ROOT / "playbooks" / "deploy.yml"
# The sandbox's own extra args (inventories/sandbox/group_vars/llmserve_cluster/serving.yml) with one changed.
SANDBOX_ARGS = ["--enforce-eager"]
# What serves, on each node: the unit, the environment (with the API key) and the plan.
SERVING_FILES = "sha1sum /etc/systemd/system/vllm.service /etc/llmserve/vllm.env /etc/llmserve/plan.json"

pytestmark = pytest.mark.sandbox


def extra_args(*arguments: str, dtype: str = "bfloat16") -> list[str]:
    args = ", ".join(f'"{argument}"' for argument in ["--dtype", dtype, *SANDBOX_ARGS, *arguments])
    return ["-e", '{"vllm_serve_extra_args": [' + args + "]}"]


def serving_state(hosts, key) -> dict[str, tuple[str, str]]:
    """Per node: the checksums of what serves, and when vllm.service last became active."""
    return {
        name: (
            ssh(hosts, key, name, SERVING_FILES).stdout,
            ssh(hosts, key, name, "systemctl show -p ActiveEnterTimestampMonotonic --value vllm.service").stdout,
        )
        for name in ("node1", "node2")
    }


@pytest.fixture(scope="module")
def cluster(sandbox_cli):
    ensure_native_cluster(sandbox_cli, 2)
    hosts, key = sandbox_hosts()
    assert completion_answers(hosts, key)
    return hosts, key


def test_a_flag_vllm_refuses_fails_before_anything_stops(cluster):
    hosts, key = cluster
    before = serving_state(hosts, key)
    run = ansible_playbook(DEPLOY, *extra_args(dtype="float8"), timeout=1200)
    assert run.returncode != 0
    assert "the installed vLLM refuses the new command line" in run.stdout, run.stdout[-4000:]
    assert "invalid choice: 'float8'" in run.stdout
    # Same files, same start time: the running group was never stopped.
    assert serving_state(hosts, key) == before
    assert completion_answers(hosts, key)
    staged = ssh(hosts, key, "node1", "grep -c float8 /etc/llmserve/staged/vllm.service").stdout.strip()
    assert staged == "1"


def test_a_change_that_exits_at_start_up_rolls_back_and_the_old_configuration_answers(cluster):
    hosts, key = cluster
    before = serving_state(hosts, key)
    started = time.monotonic()
    # The same change moves the API to another port: the old group must be waited for where it answers.
    run = ansible_playbook(
        DEPLOY, *extra_args("--tokenizer", "/srv/models/no-such-tokenizer"), "-e", "vllm_serve_port=8001", timeout=1800
    )
    took = time.monotonic() - started
    assert run.returncode != 0
    out = run.stdout
    assert "went back to the one that served before" in out, out[-6000:]
    assert "the configuration that served before answers a completion again on node1" in out
    # The reason names the failed rank, and the log shows vLLM's own error.
    assert "systemd is about to start it again" in out or "systemd restarted it" in out
    assert "no-such-tokenizer" in out and "vllm_serve_ready_timeout" in out
    # Ended by the rank that failed, not by the ready timeout (about 300 s here).
    assert "no completion before the ready timeout" not in out
    assert took < 900, f"the failed change took {took:.0f} s"
    after = serving_state(hosts, key)
    assert {name: files for name, (files, _started) in after.items()} == {
        name: files for name, (files, _started) in before.items()
    }
    assert completion_answers(hosts, key)
    for name in ("node1", "node2"):
        assert (
            ssh(hosts, key, name, "grep -c no-such-tokenizer /etc/llmserve/staged/vllm.service").stdout.strip() == "1"
        )
        assert (
            ssh(
                hosts, key, name, "grep -c no-such-tokenizer /etc/systemd/system/vllm.service", check=False
            ).stdout.strip()
            == "0"
        )


def test_a_change_that_does_not_answer_in_time_rolls_back(cluster):
    hosts, key = cluster
    before = serving_state(hosts, key)
    run = ansible_playbook(DEPLOY, *extra_args("--seed", "7"), "-e", "vllm_serve_ready_timeout=15", timeout=1800)
    assert run.returncode != 0
    out = run.stdout
    assert "no completion before the ready timeout" in out, out[-6000:]
    assert "the configuration that served before answers a completion again on node1" in out
    after = serving_state(hosts, key)
    assert {name: files for name, (files, _s) in after.items()} == {name: files for name, (files, _s) in before.items()}
    assert completion_answers(hosts, key)


def test_a_plain_rerun_after_the_rollbacks_restarts_nothing(cluster):
    hosts, key = cluster
    before = serving_state(hosts, key)
    run = ansible_playbook(DEPLOY, timeout=1200)
    assert run.returncode == 0, run.stdout[-6000:]
    assert "restarts:" not in run.stdout
    assert serving_state(hosts, key) == before
    # Only the staged files are rewritten (they held the refused settings).
    counts = recap(run.stdout)
    assert all(counts[name]["changed"] <= 2 for name in ("node1", "node2")), counts
