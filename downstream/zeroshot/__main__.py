"""``python -m downstream.zeroshot`` (also ``accelerate launch -m downstream.zeroshot``)."""

import sys

from mvmlm.cli import module_main

sys.exit(module_main("zeroshot"))
