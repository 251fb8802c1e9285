"""Export: the integer QDQ ONNX graph (``qdq``), the packed low-bit checkpoint (``packed``) and the one export
dispatch (``exporter.export_model``) with Ultralytics' exporter subclassed for ghost models."""
