import sys

from edgedet.host.cli import main

sys.exit(main())
