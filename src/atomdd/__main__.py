"""`python -m atomdd …` (and `torchrun … -m atomdd …`): the command line."""

import sys

from atomdd.cli import main

sys.exit(main())
