"""``python -m downstream.coattention`` (also ``accelerate launch -m downstream.coattention``)."""

import sys

from mvmlm.cli import module_main

sys.exit(module_main("coattention"))
