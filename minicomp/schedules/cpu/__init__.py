"""The default CPU schedules: which steps each pattern of kernel gets on a CPU target.

``DEFAULTS[pattern]`` lists the rules, in order; each rule looks at the kernel (as the rules
before it left it) and the target and returns the steps to apply:

* ``elemwise``: transposing tiles, ``vectorize`` and ``parallel`` (``elementwise.py``).
"""

from __future__ import annotations

from .elementwise import elementwise_steps

DEFAULTS = {
    "elemwise": [elementwise_steps],
}
