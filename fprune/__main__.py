"""``python -m fprune``: the same as the ``fprune`` command."""

from fprune.cli import main

raise SystemExit(main())
