import sys

from u2ad_core.cli import main

sys.exit(main())
