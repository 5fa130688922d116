#!/bin/sh
# Container entrypoint: make the database folder writable, drop to the unprivileged user, then serve.
#
# Started as root: a freshly created volume is mounted root-owned over /data, so the folder of
# DATABASE_URL is created and handed to $AGENT_USER first; everything after that runs as that user.
#
# With no arguments it serves: `agent-server serve` upgrades the schema to head, then serves, so a new
# image migrates the volume's database when the machine starts (never in a release_command, which runs
# without the volume). With LITESTREAM_REPLICA_URL set, the database is first restored from the replica
# when the file is missing (an empty volume), and the server runs under `litestream replicate`, which
# streams every change to the replica and forwards SIGTERM to the server.
# With arguments, runs them instead as the same user (e.g. `agent-server migrate`, `sh`).
#
# Environment:
#   DATABASE_URL            sqlite+aiosqlite:////data/agent_server.db in the image
#   PORT                    port to serve on (8080)
#   AGENT_HOST              address to bind (0.0.0.0). On any non-loopback address the server requires
#                           ANTHROPIC_API_KEY and AGENT_API_KEYS; 127.0.0.1 allows the offline stub
#   AGENT_USER              user to run as (agent)
#   LITESTREAM_REPLICA_URL  e.g. s3://bucket/agent_server.db; unset: no replication
#   LITESTREAM_CONFIG       /etc/litestream.yml (it reads LITESTREAM_DB_PATH, set here, and the replica URL)
#   AGENT_REQUIRE_VOLUME    a folder that must be a mounted volume (fly.toml: /data): refuse to start otherwise,
#                           rather than create a database in the image's own folder and lose it at the next deploy
#   AGENT_MIGRATE_ON_START  1 (default): serve upgrades the schema first; 0: it does not (several machines on
#                           PostgreSQL migrate once per release, in a release_command)
set -eu

log() { echo "agent-entrypoint: $*" >&2; }

: "${DATABASE_URL:=sqlite+aiosqlite:///./data/agent_server.db}"
: "${AGENT_USER:=agent}"

# The SQLite file of DATABASE_URL, read as agent_server.config does: what follows "://", less one "/",
# less any "?query". Empty for an in-memory database.
db_path() {
    rest=${DATABASE_URL#*://}
    path=${rest#/}
    path=${path%%\?*}
    case $path in
        '' | :memory:) ;;
        *) printf '%s\n' "$path" ;;
    esac
}

DB_PATH=$(db_path)

if [ -n "${AGENT_REQUIRE_VOLUME:-}" ] && ! mountpoint -q "$AGENT_REQUIRE_VOLUME"; then
    log "refusing to start: $AGENT_REQUIRE_VOLUME is not a mounted volume (fly.toml [mounts]); a database"
    log "created there would be lost at the next deploy"
    exit 1
fi

if [ "$(id -u)" = 0 ]; then
    if [ -n "$DB_PATH" ]; then
        data_dir=$(dirname -- "$DB_PATH")
        mkdir -p -- "$data_dir"
        # Only what is not ours yet: cheap on every start, and fixes files a root shell may have left.
        find "$data_dir" ! -user "$AGENT_USER" -exec chown "$AGENT_USER:$AGENT_USER" {} +
    fi
    HOME=$(getent passwd "$AGENT_USER" | cut -d: -f6)
    export HOME
    exec setpriv --reuid="$AGENT_USER" --regid="$AGENT_USER" --init-groups -- "$0" "$@"
fi

if [ "$#" -gt 0 ]; then
    exec "$@"
fi

host=${AGENT_HOST:-0.0.0.0}
port=${PORT:-8080}
migrate=""
[ "${AGENT_MIGRATE_ON_START:-1}" = 0 ] && migrate=" --no-migrate"

if [ -n "${LITESTREAM_REPLICA_URL:-}" ]; then
    if [ -n "$DB_PATH" ]; then
        LITESTREAM_DB_PATH=$DB_PATH
        export LITESTREAM_DB_PATH
        config=${LITESTREAM_CONFIG:-/etc/litestream.yml}
        log "restoring $DB_PATH from the replica if the file is missing"
        litestream restore -config "$config" -if-db-not-exists -if-replica-exists "$DB_PATH"
        log "serving under litestream replicate"
        exec litestream replicate -config "$config" -exec "agent-server serve --host $host --port $port$migrate"
    fi
    log "LITESTREAM_REPLICA_URL is set but DATABASE_URL names no file: not replicating"
fi

# shellcheck disable=SC2086  # $migrate is one flag or nothing
exec agent-server serve --host "$host" --port "$port" $migrate
