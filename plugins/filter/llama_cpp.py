# -*- coding: utf-8 -*-
# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Filters for the llama_cpp role: llama_cpp_build (a node's build and its cache key) and gguf_entry_file.

Documented in llama_cpp_build.yml and gguf_entry_file.yml; the logic is in module_utils/_llama_cpp_build.py
and module_utils/_gguf_model.py.
"""

from __future__ import annotations

from ansible_collections.llmserve.cluster.plugins.module_utils._gguf_model import entry_file
from ansible_collections.llmserve.cluster.plugins.module_utils._llama_cpp_build import llama_cpp_build


class FilterModule:
    def filters(self):
        return {"llama_cpp_build": llama_cpp_build, "gguf_entry_file": entry_file}
