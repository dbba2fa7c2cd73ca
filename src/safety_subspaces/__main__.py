"""python -m safety_subspaces."""

from .cli import main

raise SystemExit(main())
