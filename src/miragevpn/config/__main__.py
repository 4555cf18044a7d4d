"""`python -m miragevpn.config FILE...`: the same as `miragevpn-config-check`."""

from __future__ import annotations

import sys

from .check import main

sys.exit(main())
