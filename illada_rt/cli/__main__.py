"""`python -m illada_rt.cli`, the same as `illada-rt` and `python -m illada_rt`."""
import sys

from . import main

sys.exit(main())
