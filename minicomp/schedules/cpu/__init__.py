"""The default CPU schedules: which steps each pattern of kernel gets on a CPU target.

``DEFAULTS[pattern]`` lists the rules, in order; each rule looks at the kernel (as the rules
before it left it) and the target and returns the steps to apply:

* ``elemwise``: transposing tiles, ``vectorize`` and ``parallel`` (``elementwise.py``).
* ``reduce``: ``parallel`` (or ``parallel_rows``), then ``accumulate_in_output`` for a
  reduction keeping its contiguous axis, else ``lanes`` (``reductions.py``).
* ``row``: ``parallel`` (or ``parallel_rows``), ``keep_operand``, ``lanes`` (``reductions.py``).
* ``epilogue``: ``packed_gemm`` for a matmul worth packing (``packed_gemm.py``), else
  ``parallel`` (or ``parallel_rows``) and ``accumulate_in_output`` (``reductions.py``).
* ``scan``: ``parallel`` (``reductions.py``).
* ``attention``: the ``flash_attention`` strategy, tiles from the target's micro-kernel; where
  it is refused, ``parallel`` over the plain nest's rows (``flash_attention.py``).

Each ``parallel`` comes first, on the plain nest, where its legality is plain to see; the
strategies after it keep the loop's mark.
"""

from __future__ import annotations

from .elementwise import elementwise_steps
from .flash_attention import flash_attention_steps, parallel_query_rows
from .packed_gemm import packed_gemm_steps
from .reductions import epilogue_steps, reduce_steps, row_steps, scan_steps
from . import accumulate, keep_operand, lanes, parallel_rows  # noqa: F401  (register their strategies)

DEFAULTS = {
    "elemwise": [elementwise_steps],
    "reduce": [reduce_steps],
    "row": [row_steps],
    "epilogue": [packed_gemm_steps, epilogue_steps],
    "scan": [scan_steps],
    "attention": [flash_attention_steps, parallel_query_rows],
}
