"""Forward lowering: a spec's sections, blocks and layers to the graph of its network.

Importing the package registers every layer, the ONNX import layer (`onnx(...)`) with them."""

from dlspec.compiler.lower import imported  # noqa: F401  (registers the onnx layer)
