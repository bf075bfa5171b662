"""The one ONNX opset and IR version of every graph dlspec writes.

Opset 20 is the first with Gelu; IR 9 loads in every onnxruntime release since 1.15.
"""

OPSET = 20
IR_VERSION = 9
DOMAIN = ""  # the standard ONNX domain only: no contrib or training ops
