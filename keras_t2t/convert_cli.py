"""``python -m keras_t2t.convert_cli``: the converter command, kept at its old path (``keras_t2t.cli.convert``)."""

import sys

from keras_t2t.cli.commands import convert as main

if __name__ == "__main__":
    sys.exit(main())
