# One image for every soundmon service; docker-compose.yml picks the command.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 SOUNDMON_DATA=/data
WORKDIR /app
COPY pyproject.toml README.md ./
COPY soundmon ./soundmon
COPY gateway ./gateway
COPY workers ./workers
COPY dashboard ./dashboard
COPY firmware ./firmware
RUN pip install --no-cache-dir . \
    && useradd --create-home --uid 10001 soundmon \
    && mkdir -p /data && chown soundmon /data
USER soundmon
VOLUME ["/data"]
CMD ["soundmon", "--help"]
