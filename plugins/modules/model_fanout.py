#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
from __future__ import annotations

DOCUMENTATION = r"""
---
module: model_fanout
short_description: Forward model files from node to node with rsync over ssh, file by file, as a tree or chain
version_added: 0.1.0
description:
  - Runs on every node taking part in a fan-out, all at once (use C(async)). O(order) lists the seed first, then the
    nodes that need files; node I(i) sends to nodes I(width*i+1) to I(width*i+width). O(width=1) is a chain.
  - Each node sends a file to its children as soon as that file is complete on it, so transfers are pipelined across
    the tree instead of waiting for whole copies.
  - Transfers are C(rsync --partial-dir=.rsync-partial) over ssh, which resume an interrupted file and rename each
    file into place only when complete.
  - Only the files listed for each receiver are sent, even when size and mtime match, because they are missing or
    failed verification there.
author: llmserve.cluster contributors (@llmserve)
requirements:
  - rsync and an ssh client on every node, and an ssh key each node's parent may use
attributes:
  check_mode:
    support: full
    description: Reports what this node would send; sends nothing.
  diff_mode:
    support: none
    description: Nothing to compare.
options:
  path:
    description: Directory holding the model files on this node.
    type: path
    required: true
  remote_path:
    description:
      - Directory the files go to on the receivers, as rsync names it there. Defaults to O(path).
      - Set to an empty string when the receivers' authorized key forces C(rrsync) into the model directory.
    type: str
  manifest:
    description: The manifest (files with size and sha256) every node verifies against.
    type: dict
    required: true
  node:
    description: This node's name in O(order).
    type: str
    required: true
  order:
    description: The seed's name, then the receivers' names, in tree order.
    type: list
    elements: str
    required: true
  receivers:
    description:
      - Each node that needs files. The first node of O(order) may be listed too, for the files it receives
        itself from another source at the same time (the controller), which it forwards as they land.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: Name as in O(order).
        type: str
        required: true
      address:
        description: Address its parent connects to, on the cluster network.
        type: str
        required: true
      files:
        description: Paths the node needs, as in the manifest.
        type: list
        elements: str
        required: true
      stale_stats:
        description:
          - For files the node holds in a bad version, their size, mtime_ns, ctime_ns and inode when verified, as
            M(llmserve.cluster.model_manifest) returns them in C(bad_file_stats).
            The node forwards such a file only once a new version has replaced it.
        type: dict
        default: {}
  width:
    description: Children per node. V(1) is a chain, best for models split into many files.
    type: int
    default: 1
  ssh_user:
    description: User the receivers accept the fan-out key for.
    type: str
    default: root
  ssh_port:
    description: Port of the receivers' sshd that this node's rsync connects to.
    type: int
    default: 22
  ssh_identity_file:
    description: Private key this node uses to reach its children.
    type: path
  ssh_known_hosts_file:
    description: Known-hosts file holding the receivers' host keys; host keys are then checked strictly.
    type: path
  ssh_args:
    description: More ssh options, in one string as C(ansible_ssh_common_args) holds them.
    type: str
  rsync_path:
    description: The rsync program on this node, a name on C(PATH) or an absolute path.
    type: str
    default: rsync
  bandwidth_limit_kib:
    description: Limit per transfer in KiB/s, to leave room on a shared network. V(0) is no limit.
    type: int
    default: 0
  stall_timeout:
    description: Seconds a node waits for its parent to deliver the next file before it fails naming the parent.
    type: int
    default: 1800
  progress_path:
    description: JSON file rewritten with bytes sent, rate and ETA while the transfers run.
    type: path
"""

EXAMPLES = r"""
- name: Forward the weights along a chain from the seed
  llmserve.cluster.model_fanout:
    path: /models/Qwen2.5-7B-Instruct
    manifest: "{{ model_weights_manifest }}"
    node: "{{ inventory_hostname }}"
    order: [node1, node2, node3]
    receivers:
      - {name: node2, address: 10.0.0.12, files: [model-00001-of-00002.safetensors]}
      - {name: node3, address: 10.0.0.13, files: [model-00001-of-00002.safetensors]}
    ssh_identity_file: /root/.ssh/llmserve_fanout_ed25519
    ssh_known_hosts_file: /root/.ssh/llmserve_fanout_known_hosts
  async: 7200
  poll: 0
"""

RETURN = r"""
children:
  description: Nodes this node sent to.
  returned: always
  type: list
  elements: str
parent:
  description: Node this node receives from, null on the seed.
  returned: always
  type: str
sent:
  description: Per child, files and bytes sent and seconds taken.
  returned: always
  type: list
  elements: dict
  sample: [{child: node2, files_sent: 4, bytes_sent: 15231271864, seconds: 121.4}]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.llmserve.cluster.plugins.module_utils._weights_fanout import (
    Fanout,
    Receiver,
    SshOptions,
    tree_children,
    tree_parent,
)
from ansible_collections.llmserve.cluster.plugins.module_utils._weights_manifest import (
    ManifestError,
    validate_manifest,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            remote_path=dict(type="str"),
            manifest=dict(type="dict", required=True),
            node=dict(type="str", required=True),
            order=dict(type="list", elements="str", required=True),
            receivers=dict(
                type="list",
                elements="dict",
                required=True,
                options=dict(
                    name=dict(type="str", required=True),
                    address=dict(type="str", required=True),
                    files=dict(type="list", elements="str", required=True),
                    stale_stats=dict(type="dict", default={}),
                ),
            ),
            width=dict(type="int", default=1),
            ssh_user=dict(type="str", default="root"),
            ssh_port=dict(type="int", default=22),
            ssh_identity_file=dict(type="path"),
            ssh_known_hosts_file=dict(type="path"),
            ssh_args=dict(type="str"),
            rsync_path=dict(type="str", default="rsync"),
            bandwidth_limit_kib=dict(type="int", default=0),
            stall_timeout=dict(type="int", default=1800),
            progress_path=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    try:
        validate_manifest(params["manifest"])
    except ManifestError as error:
        module.fail_json(msg=str(error))
    order = params["order"]
    if params["node"] not in order:
        module.fail_json(msg=f"node {params['node']} is not in order {order}")
    if params["width"] < 1:
        module.fail_json(msg="width must be at least 1")
    receivers = [Receiver(**receiver) for receiver in params["receivers"]]
    unknown = sorted({receiver.name for receiver in receivers} - set(order))
    if unknown:
        module.fail_json(msg=f"receivers {unknown} are not in order {order}")
    children = tree_children(order, params["width"])[params["node"]]
    parent = tree_parent(order, params["width"], params["node"])
    if module.check_mode:
        pending = {receiver.name: receiver.files for receiver in receivers}
        module.exit_json(
            changed=any(pending.get(child) for child in children), children=children, parent=parent, sent=[]
        )

    fanout = Fanout(
        params["path"],
        params["manifest"],
        order,
        params["node"],
        receivers,
        width=params["width"],
        ssh=SshOptions(
            user=params["ssh_user"],
            port=params["ssh_port"],
            identity_file=params["ssh_identity_file"],
            known_hosts_file=params["ssh_known_hosts_file"],
            extra=SshOptions.split_args(params["ssh_args"]),
        ),
        remote_directory=params["remote_path"],
        rsync_path=params["rsync_path"],
        bandwidth_limit_kib=params["bandwidth_limit_kib"],
        stall_timeout=params["stall_timeout"],
        progress_path=params["progress_path"],
    )
    reports = fanout.run()
    sent = [
        {"child": report.child, "files_sent": report.files_sent, "bytes_sent": report.bytes_sent,
         "seconds": round(report.seconds, 1)}
        for report in reports
    ]  # fmt: skip
    failed = [report.error for report in reports if report.error]
    if failed:
        module.fail_json(msg="; ".join(failed), children=children, parent=parent, sent=sent)
    module.exit_json(changed=any(report.files_sent for report in reports), children=children, parent=parent, sent=sent)


if __name__ == "__main__":
    main()
