"""`python -m worker ...`: the `visionq` command under another name (the fleet starts its children this way).

An entry point sits above the packages, so it may reach the CLI in producer/;
library code in worker/ never imports producer.
"""
import sys

from producer.cli import main

sys.exit(main())
