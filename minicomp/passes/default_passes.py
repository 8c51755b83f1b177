"""Import every pass module, in pipeline order, so that each registers itself.

The default pipeline is the order of registration: cleanups first (they make the graph smaller
and canonical), then layout, then fusion (which decides the kernels), then memory planning.
"""

from . import constant_fold, algebraic, cse, dce  # noqa: F401  (cleanups: smaller, canonical graphs)
from . import layout  # noqa: F401  (NCHW or NHWC per conv chain, by a cost estimate)
from . import remat  # noqa: F401  (duplicates cheap shared values where recomputing is cheaper)
from . import fusion  # noqa: F401  (after the cleanups and layout: it decides the kernels)

# memory_plan must stay the LAST import (and so the last pass): it plans storage for the graph
# exactly as lowering will see it, so no pass may rewrite the graph after it. Add new passes above.
from . import memory  # noqa: E402,F401
from .pipeline import DEFAULT_PIPELINE  # noqa: E402

# The default pipeline, in this order (imports between pass modules can register them in
# another order, so the order is written down here): cleanups, layout, then rematerialisation
# and fusion (which decide the kernels), and memory planning last, on the final graph.
ORDER = ["constant_fold", "algebraic", "cse", "dce", "layout", "remat", "fusion", "memory_plan"]
_missing = [name for name in DEFAULT_PIPELINE if name not in ORDER]
assert not _missing, f"default passes {_missing} need a place in ORDER"
DEFAULT_PIPELINE.sort(key=ORDER.index)
