"""xmtf online scorer: FastAPI + ONNX Runtime, no PyTorch."""
