"""`python -m monitor.cli`: the command line."""

from monitor.cli import main

raise SystemExit(main())
