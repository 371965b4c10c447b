# syntax=docker/dockerfile:1
# One image for every tokenfleet service: migrations, beat, the light and browser workers
# and Flower. docker-compose.yml picks the command. Nothing secret is baked in: keys,
# passwords and the fleet file come from the environment and mounts at run time.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    TOKENFLEET_STATE_DIR=/app/var \
    TOKENFLEET_FLEET_FILE=/app/fleet.toml

# The unprivileged user every service runs as (numeric, so runAsNonRoot checks can see it).
RUN groupadd --system --gid 10001 tokenfleet \
    && useradd --system --uid 10001 --gid tokenfleet --create-home \
        --home-dir /home/tokenfleet --shell /usr/sbin/nologin tokenfleet

WORKDIR /app

# The Playwright browser backend (backend = "playwright") needs Chromium in the image:
# `docker build --build-arg WITH_CHROMIUM=1`. Off by default: FlareSolverr runs the browser
# in its own container, and Chromium adds ~300 MB.
ARG WITH_CHROMIUM=0
RUN if [ "$WITH_CHROMIUM" = "1" ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends chromium fonts-liberation \
        && rm -rf /var/lib/apt/lists/*; \
    fi

# Dependencies first, read from pyproject.toml alone, so a code change reuses this layer.
# psycopg[binary] ships its own libpq: no compiler or libpq-dev needed.
COPY pyproject.toml ./
RUN python -c "import os, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; extra = p['optional-dependencies']; print('\n'.join(p['dependencies'] + extra['flower'] + (extra['browser'] if os.environ['WITH_CHROMIUM'] == '1' else [])))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The project itself (see .dockerignore for what stays out), installed with Flower but
# without the dev extras. The code stays root-owned and read-only to the service user;
# only the state directory (Beat's schedule) is writable.
COPY . .
RUN pip install '.[flower]' \
    && if [ "$WITH_CHROMIUM" = "1" ]; then pip install '.[browser]'; fi \
    && rm -rf build ./*.egg-info \
    && mkdir -p /app/var \
    && chown tokenfleet:tokenfleet /app/var

USER 10001:10001

# Compose overrides this per service; on its own the image runs a light worker.
CMD ["celery", "-A", "tasks", "worker", "-Q", "light", "--loglevel", "INFO"]
