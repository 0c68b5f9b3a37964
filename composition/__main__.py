"""``python -m composition``: see composition/cli/."""
import sys

from .cli import main

sys.exit(main())
