"""The joint detect-and-embed network (OIM), its export to ONNX and its inference engines."""
