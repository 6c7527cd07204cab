# The reference FastAPI backend (examples/fastapi-backend) as an image, for compose.yaml and as the
# backend container of deploy/kubernetes/sidecar.yaml. Context: examples/fastapi-backend.
#   docker build -f deploy/docker/backend.Dockerfile -t sse-proxy-backend examples/fastapi-backend
FROM python:3.11-slim-bookworm
WORKDIR /app
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt
COPY app.py ./
USER 10002:10002
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
CMD ["uvicorn", "app:app", "--host", "0.0.0.0", "--port", "8000"]
