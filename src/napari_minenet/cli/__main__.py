"""``python -m napari_minenet.cli``: the same as the ``napari-minenet`` command."""

import sys

from . import main

sys.exit(main())
