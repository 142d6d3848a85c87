"""``python -m cktf.campaign FILE.yaml [--dry-run] [--resume]`` (the same as ``cktf campaign``)."""

import sys

from .cli import main

sys.exit(main())
