import sys

from otelai.cli import main

sys.exit(main())
