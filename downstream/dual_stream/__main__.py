"""``python -m downstream.dual_stream`` (also ``accelerate launch -m downstream.dual_stream``)."""

import sys

from mvmlm.cli import module_main

sys.exit(module_main("dual-stream"))
