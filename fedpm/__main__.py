"""``python -m fedpm``."""

import sys

from fedpm.cli import main

sys.exit(main())
