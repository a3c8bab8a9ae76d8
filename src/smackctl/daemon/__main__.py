import sys

from smackctl.daemon.main import main

sys.exit(main())
