# Trainer image: PyTorch (torch==2.13.0, pinned in pyproject), the simulator, the stream consumer.
# Build from the repository root: docker build -f docker/trainer.Dockerfile -t xmtf-trainer .
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY trainer ./trainer
RUN pip install --no-cache-dir '.[trainer]'
ENV XMTF_MODEL_DIR=/models
ENTRYPOINT ["xmtf-train"]
CMD ["--help"]
