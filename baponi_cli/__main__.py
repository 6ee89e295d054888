import sys

from baponi_cli.main import main

sys.exit(main())
