"""``python -m zcall.testing serve MODULE:ATTR``: serve a Service for a test until a signal."""

from __future__ import annotations

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
