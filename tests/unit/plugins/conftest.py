# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Captured hosts for the probe tests: NVML sessions and sysfs trees."""

from __future__ import annotations

import copy

import pytest
from host_trees import build_host
from nvml_replay import NvmlReplay, load_capture


@pytest.fixture
def nvml_capture():
    """A fresh copy of a captured NVML session, by fixture file name."""

    def load(name):
        return copy.deepcopy(load_capture(name))

    return load


@pytest.fixture
def nvml_replay():
    """A pynvml stand-in answering from a capture (file name or already loaded dict)."""

    def replay(capture, strings_as_bytes=False):
        if isinstance(capture, str):
            capture = load_capture(capture)
        return NvmlReplay(capture, strings_as_bytes=strings_as_bytes)

    return replay


@pytest.fixture
def host_tree(tmp_path_factory):
    """Build a captured host's /sys, /proc and /dev; returns its root directory."""

    def build(case):
        return build_host(case, tmp_path_factory.mktemp("host"))

    return build
