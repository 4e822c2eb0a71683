"""``python -m detr_tutorial train | eval | predict | convert`` (see :mod:`detr_tutorial.cli`)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
