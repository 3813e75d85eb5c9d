"""``python -m hare.cli``: the ``hare`` command."""

import sys

from hare.cli.main import main

sys.exit(main())
