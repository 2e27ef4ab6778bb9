"""Contracts shared by the xmtf trainer and scorer.

Everything that crosses the boundary between the offline trainer and the online scorer is
declared here exactly once: task names and directions, the HTTP request/response models, the
ONNX input/output names, the model artifact manifest, and the Redis event schema.
"""
