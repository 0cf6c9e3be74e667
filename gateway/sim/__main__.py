"""`python -m gateway.sim`: the same as `tailguard sim`."""

from __future__ import annotations

import sys

from gateway.sim.main import main

sys.exit(main())
