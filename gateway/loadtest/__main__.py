"""`python -m gateway.loadtest SCENARIO`: the `tailguard loadtest` command on its own."""

from __future__ import annotations

import argparse
import sys

from gateway.loadtest.cli import configure, main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="tailguard loadtest", description="Run a load-test scenario and judge its SLOs."
    )
    configure(parser)
    sys.exit(main(parser.parse_args()))
