"""``python -m pretrain`` / ``accelerate launch -m pretrain``."""

import sys

from mvmlm.cli import module_main

sys.exit(module_main("pretrain"))
