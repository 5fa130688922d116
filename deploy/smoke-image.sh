#!/usr/bin/env bash
# Build the image without a Docker daemon or Docker Hub, start it on an empty data folder, and check what
# Fly relies on: migrations at start, a non-root server, /readyz and POST /agent answering 200, a reply
# streaming at SIGTERM that still finishes, a clean exit (0) within the grace period, and a Litestream
# backup restored onto an empty volume. Prints the image size and the time from start to ready.
#
#   deploy/smoke-image.sh            (as root; installs buildah, podman and mmdebstrap with apt if missing)
#
# How: mmdebstrap makes a Debian bookworm base with python3 (cached as a tar), podman imports it as
# localhost/pybase:bookworm, buildah builds the Dockerfile on it (vfs storage, chroot isolation) and
# `buildah run` starts the entrypoint on the host network. The server binds 127.0.0.1 (AGENT_HOST), the
# one case where it may start without ANTHROPIC_API_KEY (offline stub) and without client keys.
#
# Environment: AGENT_SMOKE_CACHE (default ~/.cache/agent-server-smoke: base tar and container storage,
# kept between runs: a rerun takes ~2 minutes, the first ~4), AGENT_SMOKE_PORT (default: a free port).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${AGENT_SMOKE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/agent-server-smoke}"
BASE_TAR="$CACHE/pybase-bookworm.tar"
BASE_IMAGE="localhost/pybase:bookworm"
IMAGE="localhost/agent-server:smoke"
APP_UID=10001
GRACE_SECONDS=20 # AGENT_SHUTDOWN_GRACE_SECONDS default; uvicorn waits 5 s more
STORE=(--storage-driver vfs --root "$CACHE/storage" --runroot "$CACHE/runroot")

say() { printf '\n=== %s\n' "$*"; }
fail() {
    printf 'SMOKE FAIL: %s\n' "$*" >&2
    exit 1
}
now() { date +%s.%N; }
elapsed() { python3 -c 'import sys; print(f"{float(sys.argv[2]) - float(sys.argv[1]):.1f}")' "$1" "$2"; }

if [ "$(id -u)" != 0 ]; then
    fail "run as root (buildah with chroot isolation and vfs storage, apt-get)"
fi

missing=()
for tool in buildah podman mmdebstrap; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

mkdir -p "$CACHE"
WORK="$(mktemp -d "$CACHE/run.XXXXXX")"
CONTAINERS=()
SERVER_PIDS=()
cleanup() {
    local pid ctr
    for pid in "${SERVER_PIDS[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    for ctr in "${CONTAINERS[@]}"; do
        buildah "${STORE[@]}" rm "$ctr" >/dev/null 2>&1 || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 143' TERM INT # run the cleanup when `timeout` stops us too

# --- base image ----------------------------------------------------------------------------------------
if [ ! -f "$BASE_TAR" ]; then
    say "making the Debian bookworm base (mmdebstrap, once; cached in $CACHE)"
    rm -rf "$BASE_TAR.partial"
    mmdebstrap --variant=minbase --format=tar --include=python3,python3-venv,ca-certificates \
        bookworm "$BASE_TAR.partial"
    mv "$BASE_TAR.partial" "$BASE_TAR"
fi
if ! podman "${STORE[@]}" image exists "$BASE_IMAGE"; then
    say "importing the base as $BASE_IMAGE"
    podman "${STORE[@]}" import "$BASE_TAR" "$BASE_IMAGE" >/dev/null
fi

# --- build ---------------------------------------------------------------------------------------------
# pip inside the build reaches PyPI through this machine's TLS-intercepting proxy: give the RUN steps the
# machine's CA bundle and a pip.conf naming it, in a folder mounted over /root (pip reads
# ~/.config/pip/pip.conf). /root exists in every base, so the mount leaves nothing behind in the image.
build_home="$WORK/build-home"
mkdir -p "$build_home/.config/pip"
build_mounts=()
ca_bundle="${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}"
if [ -s "$ca_bundle" ]; then
    cp "$ca_bundle" "$build_home/host-ca.crt"
    printf '[global]\ncert = /root/host-ca.crt\n' >"$build_home/.config/pip/pip.conf"
    build_mounts+=(-v "$build_home:/root")
fi
# No --layers: with vfs storage every committed layer is a full copy of the file system, so caching each
# instruction costs far more (~10 min) than reinstalling the dependencies (~40 s of a ~2.5 min build).
say "building $IMAGE (buildah bud, vfs, chroot isolation)"
t0=$(now)
buildah "${STORE[@]}" bud --isolation chroot --pull=never --layers=false --network host \
    --build-arg "PYTHON_IMAGE=$BASE_IMAGE" "${build_mounts[@]}" \
    -f "$ROOT/Dockerfile" -t "$IMAGE" "$ROOT"
build_seconds=$(elapsed "$t0" "$(now)")
buildah "${STORE[@]}" rmi --prune >/dev/null 2>&1 || true # earlier builds of the tag, the build stage
image_size=$(buildah "${STORE[@]}" images --format '{{.Size}}' "$IMAGE" | head -n 1)
probe=$(buildah "${STORE[@]}" from --pull=never "$IMAGE")
CONTAINERS+=("$probe")
for leftover in /root/host-ca.crt /root/.config/pip /etc/pip.conf; do
    if buildah "${STORE[@]}" run --isolation chroot "$probe" -- test -e "$leftover" 2>/dev/null; then
        fail "the build's pip settings leaked into the image: $leftover"
    fi
done

# --- helpers to run the image ---------------------------------------------------------------------------
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT="${AGENT_SMOKE_PORT:-$(free_port)}"
URL="http://127.0.0.1:$PORT"

# start_container NAME ENV... : starts the entrypoint (as Fly would: no arguments, as root) in the
# background with $WORK/NAME/data mounted at /data (and $WORK/replica at /replica); sets RUN_PID and
# RUN_STARTED (when the entrypoint was started: the container's file system is made before, as Fly does
# before it boots a machine).
start_container() {
    local name=$1 ctr
    shift
    mkdir -p "$WORK/$name/data"
    chmod 0755 "$WORK/$name/data" # root-owned, like a freshly created Fly volume
    ctr=$(buildah "${STORE[@]}" from --pull=never --name "agent-smoke-$name-$$" "$IMAGE")
    CONTAINERS+=("$ctr")
    local env_args=(--env "AGENT_HOST=127.0.0.1" --env "PORT=$PORT" --env "AGENT_LOG_FORMAT=text")
    local kv
    for kv in "$@"; do env_args+=(--env "$kv"); done
    buildah "${STORE[@]}" config "${env_args[@]}" "$ctr"
    RUN_STARTED=$(now)
    buildah "${STORE[@]}" run --isolation chroot --network host \
        -v "$WORK/$name/data:/data" -v "$WORK/replica:/replica" \
        "$ctr" -- /usr/local/bin/agent-entrypoint >"$WORK/$name.log" 2>&1 &
    RUN_PID=$!
    SERVER_PIDS+=("$RUN_PID")
}

# wait_ready SECONDS : polls /readyz until 200
wait_ready() {
    local deadline=$((SECONDS + $1))
    while [ "$SECONDS" -lt "$deadline" ]; do
        if [ "$(curl -s -o /dev/null -w '%{http_code}' "$URL/readyz")" = 200 ]; then
            return 0
        fi
        kill -0 "$RUN_PID" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# pid_of PATTERN : the host pid of the container process whose command line matches PATTERN
pid_of() {
    local pid
    for pid in $(pgrep -f -- "$1"); do
        if [ "$(readlink "/proc/$pid/root")" != / ]; then # inside the container's chroot
            echo "$pid"
            return 0
        fi
    done
    return 1
}

# stop_and_check NAME PATTERN : SIGTERM to the process Fly would signal, then a clean exit in time
stop_and_check() {
    local name=$1 pid t_stop rc=0 deadline
    pid=$(pid_of "$2") || fail "$name: no process matches '$2'"
    t_stop=$(now)
    kill -TERM "$pid"
    deadline=$((SECONDS + GRACE_SECONDS + 5 + 5))
    while kill -0 "$RUN_PID" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
    if kill -0 "$RUN_PID" 2>/dev/null; then
        fail "$name: still running $((GRACE_SECONDS + 10)) s after SIGTERM"
    fi
    wait "$RUN_PID" || rc=$?
    [ "$rc" = 0 ] || fail "$name: exit code $rc after SIGTERM (log: $(tail -n 5 "$WORK/$name.log"))"
    echo "$name: SIGTERM -> exit 0 in $(elapsed "$t_stop" "$(now)") s"
}

post_agent() {
    curl -sS -f -X POST "$URL/agent" -H 'Content-Type: application/json' -d "{\"message\": \"$1\"}"
}

mkdir -p "$WORK/replica"
chown "$APP_UID:$APP_UID" "$WORK/replica"

# --- run 1: a fresh, empty data folder ------------------------------------------------------------------
say "run 1: empty /data, no ANTHROPIC_API_KEY (offline stub), bound to 127.0.0.1:$PORT"
start_container plain "AGENT_STUB_TOKEN_DELAY=0.2" # stub replies take a few seconds: one is in flight at SIGTERM
wait_ready 60 || fail "run 1: /readyz never answered 200 (log: $(tail -n 20 "$WORK/plain.log"))"
ready_seconds=$(elapsed "$RUN_STARTED" "$(now)")
echo "run 1: ready in $ready_seconds s"

db="$WORK/plain/data/agent_server.db"
[ -s "$db" ] || fail "run 1: no database file at /data/agent_server.db"
tables=$(python3 -c 'import sqlite3, sys; print(" ".join(r[0] for r in sqlite3.connect(sys.argv[1]).execute("select name from sqlite_master where type = '"'table'"' order by name")))' "$db")
case " $tables " in
    *" alembic_version "*) echo "run 1: migrated, tables: $tables" ;;
    *) fail "run 1: database has no alembic_version table (tables: $tables)" ;;
esac
[ "$(stat -c %u "$db")" = "$APP_UID" ] || fail "run 1: database file owned by uid $(stat -c %u "$db"), not $APP_UID"

server_pid=$(pid_of "agent-server serve --host 127.0.0.1 --port $PORT") || fail "run 1: server process not found"
server_uid=$(awk '/^Uid:/ { print $2 }' "/proc/$server_pid/status")
[ "$server_uid" = "$APP_UID" ] || fail "run 1: server runs as uid $server_uid, not $APP_UID"
echo "run 1: server pid $server_pid runs as uid $server_uid (agent)"

curl -sS -f "$URL/healthz" | grep -q '"offline_stub":true' || fail "run 1: /healthz does not report the offline stub"
reply=$(post_agent "hello from the smoke test") || fail "run 1: POST /agent did not answer 200"
conversation=$(printf '%s' "$reply" | python3 -c 'import json, sys; print(json.load(sys.stdin)["conversation_id"])')
echo "run 1: POST /agent -> 200, conversation $conversation"
curl -sS -f "$URL/conversations/$conversation" >/dev/null || fail "run 1: the audit of $conversation is not readable"

# A deploy stops the machine with SIGTERM while a reply streams: it must finish within the grace period.
curl -sS -N -X POST "$URL/agent/stream" -H 'Content-Type: application/json' \
    -d '{"message": "a reply in flight during the shutdown"}' >"$WORK/stream.txt" 2>&1 &
stream_pid=$!
for _ in $(seq 100); do
    grep -q '^event: token' "$WORK/stream.txt" && break
    sleep 0.1
done
grep -q '^event: token' "$WORK/stream.txt" || fail "run 1: the SSE stream sent no token"
stop_and_check "run 1" "agent-server serve --host 127.0.0.1 --port $PORT"
wait "$stream_pid" || true
grep -q '^event: done' "$WORK/stream.txt" ||
    fail "run 1: the reply streaming at SIGTERM did not finish: $(tail -n 3 "$WORK/stream.txt")"
echo "run 1: the reply streaming at SIGTERM finished (event: done) before the exit"

# --- runs 2 and 3: Litestream backup, then restore onto an empty volume --------------------------------
say "run 2: with LITESTREAM_REPLICA_URL (file replica), one conversation"
start_container litestream "LITESTREAM_REPLICA_URL=file:///replica/agent_server.db"
wait_ready 60 || fail "run 2: /readyz never answered 200 (log: $(tail -n 20 "$WORK/litestream.log"))"
reply=$(post_agent "remember me") || fail "run 2: POST /agent did not answer 200"
backed_up=$(printf '%s' "$reply" | python3 -c 'import json, sys; print(json.load(sys.stdin)["conversation_id"])')
sleep 2 # Litestream ships the WAL every second
stop_and_check "run 2" "litestream replicate"
[ -n "$(find "$WORK/replica" -type f)" ] || fail "run 2: nothing was written to the replica"

say "run 3: a new empty volume, same replica: restored before serving"
start_container restored "LITESTREAM_REPLICA_URL=file:///replica/agent_server.db"
wait_ready 60 || fail "run 3: /readyz never answered 200 (log: $(tail -n 20 "$WORK/restored.log"))"
restored_seconds=$(elapsed "$RUN_STARTED" "$(now)")
echo "run 3: ready in $restored_seconds s (restore included)"
curl -sS -f "$URL/conversations/$backed_up" | grep -q 'remember me' ||
    fail "run 3: conversation $backed_up was not restored from the replica"
echo "run 3: conversation $backed_up restored from the replica"
stop_and_check "run 3" "litestream replicate"

say "image smoke test passed"
echo "whole run:      $SECONDS s"
echo "image:          $IMAGE ($image_size)"
echo "build time:     $build_seconds s"
echo "start to ready: $ready_seconds s on an empty volume (migrations included), $restored_seconds s restoring from Litestream"
