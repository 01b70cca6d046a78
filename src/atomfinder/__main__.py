"""``python -m atomfinder``: the ``atomfinder`` command line (:mod:`atomfinder.cli`)."""

import sys

from atomfinder.cli import app

if __name__ == "__main__":  # pragma: no cover - run as a program by the tests
    sys.exit(app())
