"""``python -m pretrain`` / ``accelerate launch -m pretrain``."""

import sys

from mvmlm.cli import run_command
from pretrain.train import main

if __name__ == "__main__":
    sys.exit(run_command(main))
