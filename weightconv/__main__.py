import sys

from weightconv.cli.core import main

sys.exit(main())
