"""`python -m trainer ...` (and `torchrun ... -m trainer ...`): the same as `swapyard train ...`."""

from .cli import main

raise SystemExit(main())
