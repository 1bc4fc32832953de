# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Bytes done, rate and ETA of a long transfer, written to a small JSON file a play can poll.

Ansible shows nothing while a module runs, so long steps run asynchronously and the role polls this
file; ``-v`` shows each poll's line. Standard library only, Python >= 3.9.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from typing import Callable, Dict, Optional


def progress_line(stage: str, bytes_done: int, bytes_total: int, rate: float) -> str:
    percent = 100.0 * bytes_done / bytes_total if bytes_total else 100.0
    eta = format_seconds((bytes_total - bytes_done) / rate) if rate > 0 and bytes_total > bytes_done else "-"
    return (
        f"{stage}: {bytes_done / 1e9:.2f} of {bytes_total / 1e9:.2f} GB ({percent:.1f}%), "
        f"{rate / 1e6:.1f} MB/s, ETA {eta}"
    )


def format_seconds(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


class ProgressFile:
    """Keeps a rate over a sliding window and rewrites the progress file atomically."""

    def __init__(self, path: Optional[str], stage: str, bytes_total: int, window_seconds: float = 30.0) -> None:
        self.path = path
        self.stage = stage
        self.bytes_total = bytes_total
        self.window_seconds = window_seconds
        self._samples = []  # (monotonic time, bytes done)
        self.started = time.monotonic()

    def update(self, bytes_done: int, state: str = "running", extra: Optional[Dict[str, object]] = None) -> None:
        now = time.monotonic()
        self._samples.append((now, bytes_done))
        while len(self._samples) > 2 and now - self._samples[0][0] > self.window_seconds:
            self._samples.pop(0)
        first_time, first_bytes = self._samples[0]
        rate = (bytes_done - first_bytes) / (now - first_time) if now > first_time else 0.0
        rate = max(rate, 0.0)
        remaining = max(self.bytes_total - bytes_done, 0)
        document = {
            "stage": self.stage,
            "state": state,
            "bytes_done": bytes_done,
            "bytes_total": self.bytes_total,
            "rate_bytes_per_s": round(rate),
            "eta_seconds": round(remaining / rate) if rate > 0 else None,
            "elapsed_seconds": round(now - self.started, 1),
            "line": progress_line(self.stage, bytes_done, self.bytes_total, rate),
        }
        document.update(extra or {})
        if self.path:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            temporary = f"{self.path}.tmp"
            with open(temporary, "w") as handle:
                json.dump(document, handle)
            os.replace(temporary, self.path)


class PollingReporter:
    """Calls measure() every interval seconds on a thread and records it, until stopped."""

    def __init__(self, progress: ProgressFile, measure: Callable[[], int], interval_seconds: float = 5.0) -> None:
        self.progress = progress
        self.measure = measure
        self.interval_seconds = interval_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_seconds):
            # Files come and go while they are renamed into place; the next poll counts them.
            with contextlib.suppress(OSError):
                self.progress.update(self.measure())

    def __enter__(self) -> PollingReporter:
        self.progress.update(self.measure())
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc_value, traceback) -> None:
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(OSError):
            self.progress.update(self.measure(), state="failed" if exc_type else "done")
