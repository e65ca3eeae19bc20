FROM python:3.11-slim
WORKDIR /app
# torch first, pinned. Pass --build-arg TORCH_INDEX_URL=<PyTorch's CPU wheel index> for the
# small CPU-only wheel; the default index serves the CUDA build.
ARG TORCH_INDEX_URL=
RUN pip install --no-cache-dir torch==2.13.0 ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
COPY pyproject.toml README.md ./
COPY vectorsvc ./vectorsvc
COPY embedders ./embedders
RUN pip install --no-cache-dir .
EXPOSE 8080
CMD ["vectorsvc", "serve", "--host", "0.0.0.0", "--port", "8080"]
