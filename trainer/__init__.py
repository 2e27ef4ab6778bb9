"""xmtf offline trainer: TSH training of xMTF (PyTorch), the user simulator, export to ONNX."""
