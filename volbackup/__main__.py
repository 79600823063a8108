import sys

from volbackup.cli import main

sys.exit(main())
