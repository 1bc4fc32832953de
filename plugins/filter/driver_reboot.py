# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Filters for the reboot a new NVIDIA driver takes: driver_reboot_decision, driver_reboot_drain and
driver_reboot_message.

Documented in driver_reboot_decision.yml, driver_reboot_drain.yml and driver_reboot_message.yml; the logic is in
module_utils/_driver_reboot.py.
"""

from __future__ import annotations

from ansible_collections.llmserve.cluster.plugins.module_utils._driver_reboot import (
    drain_for_reboot,
    pending_reboot_message,
    reboot_decision,
)


class FilterModule:
    def filters(self):
        return {
            "driver_reboot_decision": reboot_decision,
            "driver_reboot_drain": drain_for_reboot,
            "driver_reboot_message": pending_reboot_message,
        }
