"""``python -m composition``: see composition/cli.py."""
import sys

from .cli import main

sys.exit(main())
