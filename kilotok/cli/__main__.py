import sys

from kilotok.cli.main import main

sys.exit(main())
