"""``python -m downstream.finetune`` (also ``accelerate launch -m downstream.finetune``)."""

import sys

from mvmlm.cli import module_main

sys.exit(module_main("finetune"))
