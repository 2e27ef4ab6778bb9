# Slim scorer image: FastAPI + ONNX Runtime, no PyTorch.
# Build from the repository root: docker build -f docker/scorer.Dockerfile -t xmtf-scorer .
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY scorer ./scorer
RUN pip install --no-cache-dir '.[scorer]' && python -c "import scorer.app, sys; assert 'torch' not in sys.modules"
ENV XMTF_MODEL_DIR=/models XMTF_HOST=0.0.0.0 XMTF_PORT=8000
EXPOSE 8000
USER 65534
HEALTHCHECK CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
CMD ["xmtf-scorer"]
