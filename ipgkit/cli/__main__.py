"""``python -m ipgkit.cli``: the ``ipgkit`` command."""

from ipgkit.cli import main

raise SystemExit(main())
