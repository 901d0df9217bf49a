"""``python -m downstream.risk`` (also ``accelerate launch -m downstream.risk``)."""

import sys

from mvmlm.cli import module_main

sys.exit(module_main("risk"))
