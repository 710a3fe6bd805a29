"""`python -m illada_rt`: the illada-rt command line (cli/)."""
import sys

from .cli import main

sys.exit(main())
