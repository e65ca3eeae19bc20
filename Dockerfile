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

# An unprivileged user with a fixed uid/gid (so that volume ownership and Kubernetes'
# runAsNonRoot can rely on it). It owns its data directory and nothing else: the code and
# the installed packages stay root's, read-only to the service.
RUN groupadd --system --gid 10001 vectorsvc \
    && useradd --system --uid 10001 --gid vectorsvc --home-dir /home/vectorsvc \
        --create-home --shell /usr/sbin/nologin vectorsvc \
    && mkdir /data \
    && chown vectorsvc:vectorsvc /data

# Production: no `dev` workspace, no API key in the log (docs/deployment.md). Create the
# first workspace and key with `vectorsvc workspace create` / `vectorsvc keys create`.
ENV VECTORSVC_ENV=production \
    VECTORSVC_DATA_DIR=/data \
    VECTORSVC_HOST=0.0.0.0 \
    VECTORSVC_PORT=8080
VOLUME ["/data"]
USER 10001:10001
EXPOSE 8080
# Start-up loads the preloaded models first; /health answers once they are in.
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('VECTORSVC_PORT', '8080'), timeout=4)"
CMD ["vectorsvc", "serve"]
