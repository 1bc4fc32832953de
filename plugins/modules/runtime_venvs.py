#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
from __future__ import annotations

DOCUMENTATION = r"""
---
module: runtime_venvs
short_description: Read, adopt, switch and prune a node's staged runtime venvs
version_added: 0.1.0
description:
  - Each runtime lives in its own directory under O(root), named by the first 12 hex digits of its install
    fingerprint, and O(link) (C(llmserve_venv)) is a symlink to the one in use.
  - V(read) reports the link, the runtimes and their stamps, the directory of O(fingerprint), which runtimes the
    units in O(units) name, what to do with a venv that is still a real directory at O(link), and the problems
    that stop python_runtime before it changes the node.
  - V(adopted) moves a stamped venv at O(link) into O(root) under the name its stamp gives it and puts the link in
    its place (one rename on one filesystem; the console scripts' shebangs are rewritten to the new path).
  - V(committed) points O(link) at O(target) by renaming a new link over the old one, then, when O(prune) is true,
    removes the runtimes beyond O(keep) that no unit names. Only directories carrying python_runtime's stamp under
    their own name are ever removed.
  - V(absent) removes every stamped runtime and the link (teardown); an unstamped directory is left and reported.
author: llmserve.cluster contributors (@llmserve)
attributes:
  check_mode:
    support: full
    description: Reports what V(adopted), V(committed) and V(absent) would change without changing it.
  diff_mode:
    support: none
    description: Reports the link's target and the removed directories instead.
options:
  link:
    description: The link to the runtime in use (C(llmserve_venv)).
    type: path
    required: true
  root:
    description: The directory holding one directory per runtime (C(llmserve_venvs_dir)).
    type: path
    required: true
  fingerprint:
    description: This run's install fingerprint (sha256 hex); its runtime's directory and state are reported.
    type: str
  state:
    description: What to do.
    type: str
    choices: [read, adopted, committed, absent]
    default: read
  target:
    description: The runtime to point O(link) at (V(committed)).
    type: path
  keep:
    description: How many runtimes V(committed) keeps, the one in use included; runtimes a unit names are kept too.
    type: int
    default: 2
  prune:
    description: Whether V(committed) removes the runtimes beyond O(keep).
    type: bool
    default: true
  units:
    description: Unit names whose files may name a runtime (kept while a unit names it).
    type: list
    elements: str
    default: []
  unit_dir:
    description: Where the unit files are.
    type: path
    default: /etc/systemd/system
"""

EXAMPLES = r"""
- name: Read the runtimes and the directory this run installs into
  llmserve.cluster.runtime_venvs:
    link: /opt/llmserve/venv
    root: /opt/llmserve/venvs
    fingerprint: "{{ python_runtime_install_fingerprint }}"
    units: [vllm.service, ray-head.service, ray-worker.service]
  register: runtimes

- name: Point the link at the runtime that now serves and keep two
  llmserve.cluster.runtime_venvs:
    link: /opt/llmserve/venv
    root: /opt/llmserve/venvs
    state: committed
    target: "{{ runtimes.runtime }}"
    keep: 2
    units: [vllm.service, ray-head.service, ray-worker.service]
"""

RETURN = r"""
link:
  description: What is at O(link) (after the change); C(kind) is absent, link, directory or other.
  returned: always
  type: dict
  sample: {path: /opt/llmserve/venv, kind: link, target: /opt/llmserve/venvs/3f2a9c0d1e4b, stamp: null}
runtimes:
  description: Each directory under O(root) with its stamp, install time and whether it is one of ours.
  returned: always
  type: list
  elements: dict
runtime:
  description: The directory of O(fingerprint)'s runtime; null without O(fingerprint).
  returned: always
  type: str
  sample: /opt/llmserve/venvs/3f2a9c0d1e4b
runtime_state:
  description: V(absent), V(installed) (its stamp holds O(fingerprint)), V(partial) (no stamp) or V(foreign).
  returned: always
  type: str
adoption:
  description: C(action) (none, adopt or refuse), C(destination) and C(reason) for a directory at O(link).
  returned: always
  type: dict
named_by_units:
  description: Runtime directory to the units whose files name it.
  returned: always
  type: dict
problems:
  description: Why python_runtime cannot go on with this node (each names the variable and the fix).
  returned: always
  type: list
  elements: str
switched:
  description: Whether O(link) was pointed at another runtime (or created).
  returned: always
  type: bool
removed:
  description: Directories removed (V(committed), V(absent)).
  returned: always
  type: list
  elements: str
kept:
  description: Runtimes V(committed) kept.
  returned: always
  type: list
  elements: str
left:
  description: Directories under O(root) (or at O(link)) without our stamp, left alone.
  returned: always
  type: list
  elements: str
rewritten:
  description: Console scripts in the adopted venv whose shebang now names its new directory (V(adopted)).
  returned: always
  type: list
  elements: str
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.llmserve.cluster.plugins.module_utils import _staged_runtimes as venvs


def read_units(unit_dir, names):
    texts = {}
    for name in names:
        try:
            with open(os.path.join(unit_dir, name), encoding="utf-8") as handle:
                texts[name] = handle.read()
        except (FileNotFoundError, NotADirectoryError):
            pass
    return texts


def nearest_device(path):
    """st_dev of PATH or of its nearest existing parent (where a directory made there would live)."""
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return os.stat(path).st_dev


def read_node(params):
    link = venvs.read_link(params["link"])
    root = os.path.normpath(params["root"])
    runtimes = venvs.read_runtimes(root)
    fingerprint = params["fingerprint"]
    runtime = venvs.runtime_path(root, fingerprint) if fingerprint else None
    state = venvs.runtime_state(runtimes, runtime, fingerprint) if fingerprint else None
    same_filesystem = link.kind != venvs.DIRECTORY or nearest_device(root) == os.stat(link.path).st_dev
    plan = venvs.adoption(link, root, runtimes, same_filesystem)
    named = venvs.runtimes_named_by_units(read_units(params["unit_dir"], params["units"]), root, link)
    return (
        {
            "link": venvs.as_dict(link),
            "runtimes": [dict(venvs.as_dict(runtime_), ours=runtime_.ours) for runtime_ in runtimes],
            "runtime": runtime,
            "runtime_state": state,
            "adoption": venvs.as_dict(plan),
            "named_by_units": named,
            "problems": venvs.problems(link, plan, root, fingerprint, state),
        },
        link,
        runtimes,
        plan,
        named,
    )


def main():
    module = AnsibleModule(
        argument_spec=dict(
            link=dict(type="path", required=True),
            root=dict(type="path", required=True),
            fingerprint=dict(type="str"),
            state=dict(type="str", choices=["read", "adopted", "committed", "absent"], default="read"),
            target=dict(type="path"),
            keep=dict(type="int", default=2),
            prune=dict(type="bool", default=True),
            units=dict(type="list", elements="str", default=[]),
            unit_dir=dict(type="path", default="/etc/systemd/system"),
        ),
        required_if=[("state", "committed", ["target"])],
        supports_check_mode=True,
    )
    params = module.params
    if params["fingerprint"] and not venvs.is_fingerprint(params["fingerprint"]):
        module.fail_json(msg=f"fingerprint must be 64 lowercase hex digits (sha256), got {params['fingerprint']!r}")
    result, link, runtimes, plan, named = read_node(params)
    result.update(changed=False, switched=False, removed=[], kept=[], left=[], rewritten=[])
    root = os.path.normpath(params["root"])
    state = params["state"]
    try:
        if state == "adopted" and plan.action != "none":
            if plan.action == "refuse":
                module.fail_json(msg=plan.reason, **result)
            result.update(changed=True, switched=True)
            if not module.check_mode:
                result["rewritten"] = venvs.adopt(link.path, plan.destination)
        elif state == "committed":
            target = os.path.normpath(params["target"])
            if os.path.dirname(target) != root:
                module.fail_json(msg=f"target {target} is not a runtime directory under {root}", **result)
            if not module.check_mode:
                stamp, mtime = venvs.read_stamp(target)
                if not venvs.Runtime(path=target, name=os.path.basename(target), stamp=stamp, installed_at=mtime).ours:
                    module.fail_json(
                        msg=f"{target} carries no complete install stamp: llmserve_venv is not pointed at it. "
                        "Run python_runtime (deploy.yml) to install it first.",
                        **result,
                    )
            if link.kind not in (venvs.ABSENT, venvs.LINK):
                module.fail_json(
                    msg=f"{link.path} is a {link.kind}, not a link; python_runtime adopts it first (run deploy.yml).",
                    **result,
                )
            if link.kind == venvs.ABSENT or link.target != target:
                result.update(changed=True, switched=True)
                if not module.check_mode:
                    venvs.switch_link(link.path, target)
            if params["prune"]:
                decided = venvs.to_prune(runtimes, target, named, params["keep"])
                result.update(kept=decided.keep, left=decided.left, removed=decided.remove)
                if decided.remove:
                    result["changed"] = True
                    if not module.check_mode:
                        result["removed"] = venvs.remove(decided.remove, root, link.path)
        elif state == "absent":
            decided = venvs.teardown(link, runtimes)
            result.update(left=decided.left, removed=decided.remove, changed=bool(decided.remove))
            if decided.remove and not module.check_mode:
                result["removed"] = venvs.remove(decided.remove, root, link.path)
                if os.path.isdir(root) and not os.listdir(root):
                    os.rmdir(root)
                    result["removed"].append(root)
    except (OSError, ValueError) as error:
        module.fail_json(msg=f"{state} on {link.path} and {root} failed: {error}", **result)
    if result["changed"] and not module.check_mode:
        result.update(read_node(params)[0])
    module.exit_json(**result)


if __name__ == "__main__":
    main()
