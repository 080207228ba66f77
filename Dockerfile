# One image for every soundmon service; docker-compose.yml picks the command.
# tests/unit/test_compose.py checks this file against docker-compose.yml and the code.

# The dashboard's chart library, pinned by package-lock.json (the same files `npm ci` installs)
FROM node:20-bookworm-slim AS vendor
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 SOUNDMON_DATA=/data
WORKDIR /app
COPY pyproject.toml README.md ./
COPY soundmon ./soundmon
COPY gateway ./gateway
COPY workers ./workers
COPY dashboard ./dashboard
COPY firmware ./firmware
COPY --from=vendor /src/node_modules/uplot ./node_modules/uplot
# Editable install: the code stays in /app, where dashboard/app.py finds node_modules/uplot.
# /srv/mosquitto is where `soundmon broker-setup` writes the broker's accounts and certificates.
# The numba DSP kernels are compiled into workers/__pycache__ at build time (readable by the
# service user), so a container's first frames never wait for the compiler.
RUN pip install --no-cache-dir -e . \
    && python -c "from workers import kernels; kernels.warm_up()" \
    && useradd --create-home --uid 10001 soundmon \
    && mkdir -p /data /srv/mosquitto && chown soundmon:soundmon /data /srv/mosquitto \
    && chown -R soundmon:soundmon /app/workers/__pycache__  # numba reads its cache only where it could write
USER soundmon
VOLUME ["/data"]
CMD ["soundmon", "--help"]
