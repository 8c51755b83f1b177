"""The default CPU schedules: which steps each pattern of kernel gets on a CPU target.

``DEFAULTS[pattern]`` lists the rules, in order; each rule looks at the kernel (as the rules
before it left it) and the target and returns the steps to apply:

* ``elemwise``: transposing tiles, ``vectorize`` and ``parallel`` (``elementwise.py``).
* ``attention``: the ``flash_attention`` strategy, tiles from the target's micro-kernel; where
  it is refused, ``parallel`` over the plain nest's rows (``flash_attention.py``).
"""

from __future__ import annotations

from .elementwise import elementwise_steps
from .flash_attention import flash_attention_steps, parallel_query_rows

DEFAULTS = {
    "elemwise": [elementwise_steps],
    "attention": [flash_attention_steps, parallel_query_rows],
}
