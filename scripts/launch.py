"""Start the machine and run the built-in traffic: same as `xpmove launch`."""

import sys

from hypervisor.cli import main

if __name__ == "__main__":
    sys.exit(main(["launch", *sys.argv[1:]]))
