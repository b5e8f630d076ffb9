import sys

from paracell.cli import main

sys.exit(main())
