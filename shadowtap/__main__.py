"""`python -m shadowtap` is the `shadowtap` command."""

from shadowtap.cli import main

raise SystemExit(main())
