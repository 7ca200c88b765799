import sys

from vlm_aug.cli import main

sys.exit(main())
