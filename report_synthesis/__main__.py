"""``python -m report_synthesis --config configs/reports/<backend>.yaml table=... out=...``"""

import sys

from mvmlm.cli import run_command
from report_synthesis.run import main

if __name__ == "__main__":
    sys.exit(run_command(main))
