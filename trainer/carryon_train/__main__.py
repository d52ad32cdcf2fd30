"""`python -m carryon_train` (what trainer/carryon-train and torchrun's `-m carryon_train` run)."""
import sys

from .cli import entry

if __name__ == "__main__":
    sys.exit(entry())
