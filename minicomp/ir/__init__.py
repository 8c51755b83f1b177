"""minicomp's intermediate representations: types, the op table, the graph and its text form."""

from .dtypes import DTYPES, TensorType, to_dtype
from .graph import Graph, Node
from .interpreter import Interpreter, interpret
from .ops import OPS, Kind, OpDef, get_op
