"""`python -m edgeweave.runtime NAME ENDPOINT [--keys DIR] [--max-frame-bytes N]`: what `edgeweave run`
starts for each local device."""

import sys

from edgeweave.runtime.process import worker_main

if __name__ == "__main__":
    worker_main(sys.argv[1:])
