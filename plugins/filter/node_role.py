# -*- coding: utf-8 -*-
# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Filters over a plan's serving groups: node_role (a host's group and its rank there) and serving_groups.

Documented in node_role.yml and serving_groups.yml; the logic is in module_utils/_serving_groups.py.
"""

from __future__ import annotations

from ansible_collections.llmserve.cluster.plugins.module_utils._serving_groups import node_role, plan_serving_groups


class FilterModule:
    def filters(self):
        return {"node_role": node_role, "serving_groups": plan_serving_groups}
