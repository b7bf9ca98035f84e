"""``python -m harness ...`` (and ``torchrun -m harness ...``): the same CLI as ``harness``."""
import sys

from .cli import main

sys.exit(main())
