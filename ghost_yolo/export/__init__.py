"""Export: the integer QDQ ONNX graph (``qdq``), the packed low-bit checkpoint (``packed``), the one export
dispatch (``exporter.export_model``) with Ultralytics' exporter subclassed for ghost models, and OpenVINO IR from the
integer ONNX (``openvino``)."""

from ghost_yolo.export import openvino  # noqa: F401  registers format=openvino
