# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""One real completion against an OpenAI-compatible endpoint, timed, with errors kept readable.

/health stays 200 after vLLM's workers die (vllm#16259) and /v1/models answers while generation
is dead, so readiness and status both ask for an actual token.
"""

from __future__ import annotations

import json
import time
from typing import Any, Dict, Optional
from urllib import error, request


def completion_probe(
    base_url: str,
    model: str,
    api_key: Optional[str] = None,
    prompt: str = "Hello",
    max_tokens: int = 1,
    timeout: float = 60.0,
) -> Dict[str, Any]:
    """POST /v1/completions once. Returns ok, http status, seconds, the text or the error."""
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = "Bearer " + api_key
    started = time.monotonic()
    outcome: Dict[str, Any] = {"ok": False, "status": None, "seconds": None, "text": None, "error": None}
    try:
        with request.urlopen(
            request.Request(base_url.rstrip("/") + "/v1/completions", data=body, headers=headers), timeout=timeout
        ) as response:
            payload = json.loads(response.read().decode("utf-8"))
            outcome["status"] = response.status
            choices = payload.get("choices") or []
            outcome["ok"] = bool(choices)
            outcome["text"] = choices[0].get("text") if choices else None
            if not choices:
                outcome["error"] = "the answer has no choices"
    except error.HTTPError as exc:
        outcome["status"] = exc.code
        outcome["error"] = "HTTP {}: {}".format(exc.code, exc.read().decode("utf-8", "replace")[:500])
    except (error.URLError, OSError, ValueError) as exc:
        outcome["error"] = str(getattr(exc, "reason", exc))
    outcome["seconds"] = round(time.monotonic() - started, 3)
    return outcome
