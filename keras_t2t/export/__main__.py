"""``python -m keras_t2t.export``: the export command line (see ``keras_t2t.export.cli``)."""

import sys

from keras_t2t.export.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m keras_t2t.export"))
