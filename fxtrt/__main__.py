import sys

from fxtrt.cli import main

sys.exit(main())
