"""``python -m pagescan``: the same command as ``pagescan`` (see :mod:`pagescan.cli`)."""

from pagescan.cli import main

raise SystemExit(main())
