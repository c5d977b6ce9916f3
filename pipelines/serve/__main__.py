"""`python -m pipelines.serve …` is `ldm-serve …`."""

import sys

from pipelines.serve.cli import main

sys.exit(main())
