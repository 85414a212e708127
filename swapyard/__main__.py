"""`python -m swapyard ...` (and `torchrun ... -m swapyard train ...`): the same as the `swapyard` command."""

from .cli import main

raise SystemExit(main())
