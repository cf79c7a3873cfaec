"""``python -m towerbridge.cli``: the towerbridge command."""

import sys

from towerbridge.cli import main

sys.exit(main())
