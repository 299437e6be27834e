"""`python -m scripts.loadgen`: the Fig 14 load generator, same as `xpmove bench`."""

import sys

from scripts.cli import main

sys.exit(main(["bench", *sys.argv[1:]]))
