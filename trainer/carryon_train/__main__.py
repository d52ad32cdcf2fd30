import sys

from .cli import main
from .lifetime import die_with_parent

die_with_parent()
sys.exit(main())
