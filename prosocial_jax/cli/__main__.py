"""`python -m prosocial_jax.cli ...` (the same as the `prosocial-jax` console script)."""

import sys

from prosocial_jax.cli import main

sys.exit(main())
