# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""One real completion against an OpenAI-compatible endpoint: the request and the reading of its answer.

/health stays 200 after vLLM's workers die (vllm#16259) and /v1/models answers while generation
is dead, so readiness and status both ask for an actual token. The HTTP call itself is the
caller's: ``send_completion`` uses Ansible's ``open_url``, the other functions take its answer.
"""

from __future__ import annotations

import json
import time
from typing import Any, Dict, Optional, Tuple


def completion_request(
    base_url: str, model: str, api_key: Optional[str] = None, prompt: str = "Hello", max_tokens: int = 1
) -> Tuple[str, bytes, Dict[str, str]]:
    """URL, body and headers of a greedy completion of ``max_tokens`` tokens."""
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = "Bearer " + api_key
    return base_url.rstrip("/") + "/v1/completions", body, headers


def read_completion(status: int, payload: bytes) -> Dict[str, Any]:
    """ok/status/text/error from an HTTP answer; only a completion with choices counts as ok."""
    outcome: Dict[str, Any] = {"ok": False, "status": status, "text": None, "error": None}
    text = payload.decode("utf-8", "replace")
    if status != 200:
        outcome["error"] = f"HTTP {status}: {text[:500]}"
        return outcome
    try:
        choices = json.loads(text).get("choices") or []
    except ValueError:
        outcome["error"] = "the answer is not JSON: " + text[:200]
        return outcome
    outcome["ok"] = bool(choices)
    outcome["text"] = choices[0].get("text") if choices else None
    if not choices:
        outcome["error"] = "the answer has no choices"
    return outcome


def send_completion(
    base_url: str, model: str, api_key: Optional[str], prompt: str = "Hello", max_tokens: int = 1, timeout: float = 60
) -> Dict[str, Any]:
    """POST one completion and time it: ``read_completion``'s fields plus ``seconds``.

    A refused connection or a timeout is an outcome (``ok`` false, ``status`` None), not an exception.
    """
    from ansible.module_utils.urls import open_url  # pylint: disable=import-outside-toplevel

    url, body, headers = completion_request(base_url, model, api_key, prompt, max_tokens)
    started = time.monotonic()
    try:
        response = open_url(url, data=body, headers=headers, method="POST", timeout=timeout)
        outcome = read_completion(response.getcode(), response.read())
    except Exception as exc:  # HTTPError carries the status and body; anything else is "no answer"
        status = getattr(exc, "code", None)
        reader = getattr(exc, "read", None)
        if status is not None and reader is not None:
            outcome = read_completion(status, reader())
        else:
            outcome = {"ok": False, "status": None, "text": None, "error": str(getattr(exc, "reason", exc))}
    outcome["seconds"] = round(time.monotonic() - started, 3)
    return outcome
