"""Offline stand-in for the get-pip script that ``ansible-test`` downloads.

``ansible-test sanity`` bootstraps pip in each of its virtual environments with a script it
fetches from a host this build machine cannot reach. This file replaces that script: it installs
pip from the interpreter's bundled ``ensurepip`` wheel, then lets that pip install what was asked
for from the configured package index. ``make sanity`` copies it to the cache path ansible-test
looks at before downloading.
"""

from __future__ import annotations

import ensurepip
import os
import subprocess
import sys

# Options ansible-test passes to get-pip that plain ``pip install`` does not know.
GET_PIP_ONLY_OPTIONS = {"--no-setuptools", "--no-wheel"}


def main() -> None:
    ensurepip.bootstrap(upgrade=True)
    # ensurepip points PIP_CONFIG_FILE at /dev/null, which would hide the machine's pip.conf
    # (index and CA bundle) from the install below.
    os.environ.pop("PIP_CONFIG_FILE", None)
    arguments = [argument for argument in sys.argv[1:] if argument not in GET_PIP_ONLY_OPTIONS]
    if arguments:
        subprocess.run([sys.executable, "-m", "pip", "install", *arguments], check=True)


if __name__ == "__main__":
    main()
