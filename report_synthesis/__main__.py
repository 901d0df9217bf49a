"""``python -m report_synthesis --config configs/reports/<backend>.yaml table=... out=...``"""

import sys

from mvmlm.cli import module_main

sys.exit(module_main("reports"))
