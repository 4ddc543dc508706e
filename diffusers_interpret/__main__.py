"""`python -m diffusers_interpret`: the same as the `diffusers-interpret` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
