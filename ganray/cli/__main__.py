"""`python -m ganray.cli ...` is the `ganray` console script."""
import sys

from ganray.cli import main

sys.exit(main())
