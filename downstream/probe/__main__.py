"""``python -m downstream.probe`` (also ``accelerate launch -m downstream.probe``)."""

import sys

from mvmlm.cli import module_main

sys.exit(module_main("probe"))
