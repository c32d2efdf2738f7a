import sys

from mrf_core.cli import main

sys.exit(main())
