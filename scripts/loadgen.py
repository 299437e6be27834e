"""The Fig 14 load generator: same as `xpmove bench` (see benchmarks/README.md)."""

import sys

from hypervisor.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
