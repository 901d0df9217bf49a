"""``python -m downstream.multiview`` (also ``accelerate launch -m downstream.multiview``)."""

import sys

from mvmlm.cli import module_main

sys.exit(module_main("multiview"))
