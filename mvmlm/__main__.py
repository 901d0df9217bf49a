"""``python -m mvmlm``: the ``mvmlm`` umbrella command."""

import sys

from mvmlm.cli import main

sys.exit(main())
