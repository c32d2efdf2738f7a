import sys

from mrf_gadgetron.cli import main

sys.exit(main())
