"""`python -m gateway` is the same as the `tailguard` command."""

from gateway.cli import main

raise SystemExit(main())
