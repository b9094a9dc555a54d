"""`python -m keras_collapse`: the `keras-collapse` command line."""

import sys

from keras_collapse.cli import main

if __name__ == "__main__":
    sys.exit(main())
