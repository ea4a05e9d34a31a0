import sys

from perceiver.cli import main

sys.exit(main())
