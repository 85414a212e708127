#!/usr/bin/env bash
# The image and the compose stack, built and run for real: what the README promises, checked end to end.
#
#   bash deploy/smoke.sh                      # a machine with a registry: python:3.11-slim-bookworm,
#                                             # prom/prometheus, torch from PyTorch's CPU index
#   bash deploy/debian-bases.sh && bash deploy/smoke.sh --cpu-base local/python:3.11-bookworm \
#       --prometheus-image local/prometheus:bookworm --wheels /opt/wheels     # no registry: Debian-built bases
#
# Options: --cpu-base IMAGE, --prometheus-image IMAGE, --wheels DIR (a folder of wheels, torch's CPU build
# among them: served to the build on the host's loopback, torch taken from it instead of PyTorch's index),
# --torch-index-url URL, --pip-index-url URL, --tag (default swapyard:cpu, the compose file's image),
# --port/--prometheus-port/--wheels-port (host ports on 127.0.0.1), --keep (leave containers and volumes),
# --reuse-cache (keep the cache volume, and so the demo's build, from one run to the next).
#
# 1. builds the CPU image (--network host) and reports its size; checks it has no compiler and no pip cache;
# 2. runs it with a cache and an uploads volume, waits for the HEALTHCHECK to say healthy (the demo builds);
# 3. sends the README's requests: generate with the base and each demo adapter, a stream, OpenAI completions
#    and chat, the models list, a 404 for an unknown adapter, /health, /ready, /metrics; uploads an adapter
#    with the admin key into the uploads volume and generates with it; checks the server runs as non-root;
# 4. SIGTERM with a request in flight: the request's headers are in and the server reads its body (HTTP's
#    100-continue says so) when the signal comes; /ready turns 503, then the body is sent, and the request
#    is answered in full before the process exits;
# 5. a new container on the same volumes: the demo is not rebuilt, the upload is still served, and the cold
#    start (container start to /ready) is timed;
# 6. the same image through docker compose with Prometheus scraping /metrics: after some traffic,
#    Prometheus's HTTP API holds swapyard_ series.
# Prints one line per check and a summary (also written to $SMOKE_OUT/summary.txt when SMOKE_OUT is set).
set -euo pipefail
cd "$(dirname "$0")/.."

CPU_BASE=python:3.11-slim-bookworm
PROMETHEUS_IMAGE=prom/prometheus:v3.5.0
WHEELS=""
TORCH_INDEX_URL=""
TORCH_INDEX_SET=0
PIP_INDEX_URL_ARG=""
TAG=swapyard:cpu
PORT=18080
PROMETHEUS_PORT=19090
WHEELS_PORT=18081 # fixed, so that a rebuild with the same wheels reuses the cached layers
KEEP=0
REUSE_CACHE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-base) CPU_BASE="$2"; shift 2 ;;
    --prometheus-image) PROMETHEUS_IMAGE="$2"; shift 2 ;;
    --wheels) WHEELS="$(cd "$2" && pwd)"; shift 2 ;;
    --torch-index-url) TORCH_INDEX_URL="$2"; TORCH_INDEX_SET=1; shift 2 ;;
    --pip-index-url) PIP_INDEX_URL_ARG="$2"; shift 2 ;;
    --tag) TAG="$2"; shift 2 ;;
    --port) PORT="$2"; shift 2 ;;
    --prometheus-port) PROMETHEUS_PORT="$2"; shift 2 ;;
    --wheels-port) WHEELS_PORT="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --reuse-cache) REUSE_CACHE=1; shift ;;
    *) echo "smoke.sh: unknown argument $1 (see the header of deploy/smoke.sh)" >&2; exit 2 ;;
  esac
done

PROJECT=swapyard-smoke # containers, volumes and the compose project: apart from a real `swapyard` stack
NAME=$PROJECT-server
CACHE_VOLUME=${PROJECT}_cache # the compose file's volumes under this project: the stack reuses the demo build
UPLOADS_VOLUME=${PROJECT}_uploads
ADMIN_KEY=smoke-admin-key
URL=http://127.0.0.1:$PORT
WORK="$(mktemp -d)"
T0=$SECONDS
SUMMARY=()

if docker compose version >/dev/null 2>&1; then
  COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null; then
  COMPOSE=(docker-compose) # Compose v1 (Debian's docker-compose) runs the file too
else
  echo "smoke.sh: needs docker compose (the plugin) or docker-compose" >&2
  exit 2
fi
COMPOSE_VERSION="${COMPOSE[*]} $("${COMPOSE[@]}" version --short)"
COMPOSE+=(-f deploy/docker-compose.yml -p "$PROJECT")

say() { printf '[%4ds] %s\n' "$((SECONDS - T0))" "$*"; }
note() { SUMMARY+=("$*"); say "$*"; }
fail() { # on stderr: it may run inside $(...)
  {
    say "FAIL: $*"
    docker logs --tail 40 "$NAME" 2>&1 | sed 's/^/    server: /' || true
  } >&2
  exit 1
}

WHEELS_PID=""
cleanup() {
  [ -z "$WHEELS_PID" ] || kill "$WHEELS_PID" 2>/dev/null || true
  if [ "$KEEP" = 0 ]; then
    docker rm -f -v "$NAME" >/dev/null 2>&1 || true # -v: the image's anonymous /data/adapters volume too
    "${COMPOSE[@]}" rm -f -s -v >/dev/null 2>&1 || true
    "${COMPOSE[@]}" down >/dev/null 2>&1 || true # not -v: the cache volume is removed below, or kept
    docker volume rm -f "$UPLOADS_VOLUME" "${PROJECT}_prometheus" "${PROJECT}_grafana" >/dev/null 2>&1 || true
    [ "$REUSE_CACHE" = 1 ] || docker volume rm -f "$CACHE_VOLUME" >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# call STATUS METHOD PATH [curl arguments]: the response body lands in $BODY; any other status fails.
call() {
  local want=$1 method=$2 path=$3 got
  shift 3
  got=$(curl -sS -o "$WORK/body" -w '%{http_code}' -X "$method" "$URL$path" "$@") || got="no answer"
  BODY=$(cat "$WORK/body" 2>/dev/null || true)
  [ "$got" = "$want" ] || fail "$method $path: HTTP $got, expected $want: ${BODY:0:300}"
}
# field EXPR: a Python expression of the JSON $BODY, `d` (e.g. "d['generated_text']").
field() { python3 -c 'import json, sys; d = json.loads(sys.argv[2]); print(eval(sys.argv[1]))' "$1" "$BODY"; }
generate() { # generate ADAPTER PROMPT: the generated text (ADAPTER "" = the base model)
  local adapter=null
  [ -z "$1" ] || adapter="\"$1\""
  call 200 POST /generate -H 'Content-Type: application/json' \
    -d "{\"inputs\": \"$2\", \"parameters\": {\"adapter_id\": $adapter, \"max_new_tokens\": 20}}"
  field "d['generated_text']"
}
# wait_ready CONTAINER DEADLINE_S: poll /ready every 0.2 s until 200, failing if the container stops.
wait_ready() {
  local until=$((SECONDS + $2))
  while [ $SECONDS -lt $until ]; do
    [ "$(docker inspect -f '{{.State.Running}}' "$1")" = true ] || fail "container $1 stopped"
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$URL/ready")" = 200 ] && return 0
    sleep 0.2
  done
  fail "no /ready from $1 within $2 s"
}
# wait_healthy CONTAINER DEADLINE_S: Docker's own HEALTHCHECK verdict. A first start whose demo build outlasts
# the start period (a loaded CPU) reads `unhealthy` for a while, then `healthy` once /ready answers.
wait_healthy() {
  local until=$((SECONDS + $2)) state
  while [ $SECONDS -lt $until ]; do
    state=$(docker inspect -f '{{.State.Health.Status}}' "$1")
    [ "$state" = healthy ] && return 0
    [ "$(docker inspect -f '{{.State.Running}}' "$1")" = true ] || fail "container $1 stopped"
    sleep 1
  done
  fail "container $1 not healthy within $2 s (last: $state)"
}
run_server() { # a container of the image on the smoke volumes, admin routes and uploads on
  docker run -d --name "$NAME" -p "127.0.0.1:$PORT:8080" \
    -v "$CACHE_VOLUME:/data/cache" -v "$UPLOADS_VOLUME:/data/uploads" \
    -e SWAPYARD_ADMIN_KEY=$ADMIN_KEY -e SWAPYARD_UPLOADS_DIR=/data/uploads -e SWAPYARD_DRAIN_TIMEOUT_S=120 \
    "$TAG" >/dev/null
}

# -- 1. build ------------------------------------------------------------------------------------------------
docker rm -f -v "$NAME" >/dev/null 2>&1 || true
"${COMPOSE[@]}" rm -f -s -v >/dev/null 2>&1 || true
"${COMPOSE[@]}" down >/dev/null 2>&1 || true
docker volume rm -f "$UPLOADS_VOLUME" >/dev/null 2>&1 || true
[ "$REUSE_CACHE" = 1 ] || docker volume rm -f "$CACHE_VOLUME" >/dev/null 2>&1 || true
BUILD=(docker build --network host -t "$TAG" --build-arg "CPU_BASE=$CPU_BASE")
# The classic builder builds every stage: the CPU base stands in for the CUDA one, which is never used here.
BUILD+=(--build-arg "CUDA_BASE=$CPU_BASE")
if [ -n "$WHEELS" ]; then
  python3 -m http.server "$WHEELS_PORT" --bind 127.0.0.1 --directory "$WHEELS" >"$WORK/wheels.log" 2>&1 &
  WHEELS_PID=$!
  until curl -sf "http://127.0.0.1:$WHEELS_PORT/" >/dev/null; do
    kill -0 "$WHEELS_PID" 2>/dev/null || { cat "$WORK/wheels.log"; fail "cannot serve $WHEELS on port $WHEELS_PORT"; }
    sleep 0.2
  done
  BUILD+=(--build-arg "PIP_FIND_LINKS=http://127.0.0.1:$WHEELS_PORT/")
  [ "$TORCH_INDEX_SET" = 1 ] || BUILD+=(--build-arg "TORCH_INDEX_URL=") # torch from the wheels folder
fi
[ "$TORCH_INDEX_SET" = 0 ] || BUILD+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
[ -z "$PIP_INDEX_URL_ARG" ] || BUILD+=(--build-arg "PIP_INDEX_URL=$PIP_INDEX_URL_ARG")
say "building $TAG: ${BUILD[*]:2} ."
start=$SECONDS
"${BUILD[@]}" . >"$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log"; fail "docker build"; }
note "build: $((SECONDS - start)) s ($(grep -c 'Using cache' "$WORK/build.log" || true) steps from the cache)"
size=$(docker image inspect -f '{{.Size}}' "$TAG")
venv=$(docker run --rm --entrypoint du "$TAG" -sm /opt/venv | cut -f1)
note "image size: $((size / 1000000)) MB ($venv MB of it the venv at /opt/venv)"
docker run --rm --entrypoint sh "$TAG" -c 'for c in gcc cc g++ make; do command -v $c && exit 1; done; exit 0' \
  >/dev/null || fail "the CPU image carries a compiler"
docker run --rm --entrypoint sh "$TAG" -c '! ls -d /root/.cache/pip /home/*/.cache/pip 2>/dev/null' \
  >/dev/null || fail "the image carries a pip cache"
note "no compiler, no pip cache in the image"

# -- 2. first start: the demo builds into the cache volume ----------------------------------------------------
start=$SECONDS
built="demo build included"
docker volume inspect "$CACHE_VOLUME" >/dev/null 2>&1 && built="demo cached by an earlier run (--reuse-cache)"
run_server
say "started $NAME ($built; a build takes minutes on a small CPU)"
wait_healthy "$NAME" 2400 # bounded, generous: a demo build on a 2-core CPU shared with other work took ~25 min
note "first start to healthy ($built): $((SECONDS - start)) s"
user=$(docker exec "$NAME" sh -c 'id -u; awk "/^Uid:/ {print \$2}" /proc/1/status')
! grep -qx 0 <<<"$user" || fail "the server runs as root (uid $user)"
note "runs as uid $(echo "$user" | head -1), not root"

# -- 3. the README's requests ------------------------------------------------------------------------------------
base=$(generate "" "Hello!")
french=$(generate french "Hello!")
pirate=$(generate pirate "Hello!")
[ "$french" != "$base" ] && [ "$pirate" != "$base" ] || fail "an adapter did not change the answer: $base"
say "generate: base '$base' | french '$french' | pirate '$pirate'"
call 200 POST /generate -H 'Content-Type: application/json' \
  -d '{"inputs": "What is your name?", "parameters": {"adapter_id": "pirate", "details": true}}'
[ "$(field "d['details']['generated_tokens'] > 0")" = True ] || fail "no details: $BODY"
call 200 POST /generate_stream -H 'Content-Type: application/json' \
  -d '{"inputs": "good morning", "parameters": {"adapter_id": "french"}}'
events=$(grep -c '^data:' <<<"$BODY" || true)
last=$(grep '^data:' <<<"$BODY" | tail -1 | cut -c6-)
[ "$events" -ge 2 ] && [ "$(BODY=$last field "d['generated_text'] is not None")" = True ] ||
  fail "stream: $events events, last: $last"
say "stream: $events events, generated_text on the last"
call 200 POST /v1/completions -H 'Content-Type: application/json' \
  -d '{"model": "pirate", "prompt": "how are you?", "max_tokens": 20, "temperature": 0}'
say "completions (pirate): '$(field "d['choices'][0]['text']")'"
call 200 POST /v1/chat/completions -H 'Content-Type: application/json' \
  -d '{"model": "french", "messages": [{"role": "user", "content": "thank you"}], "temperature": 0}'
say "chat (french): '$(field "d['choices'][0]['message']['content']")'"
call 200 GET /v1/models
[ "$(field "sorted({'french', 'pirate'} - {m['id'] for m in d['data']})")" = "[]" ] || fail "models: $BODY"
call 404 POST /generate -H 'Content-Type: application/json' \
  -d '{"inputs": "Hello!", "parameters": {"adapter_id": "klingon"}}'
say "unknown adapter: 404 $(field "d['error_type']")"
call 200 GET /health
call 200 GET /ready
call 200 GET /metrics
grep -q '^swapyard_' <<<"$BODY" || fail "/metrics has no swapyard_ series"
note "README requests: generate (base, french, pirate, details), stream, completions, chat, models, 404, probes, metrics"

# An upload through the admin routes into the uploads volume: the demo's french adapter under a new name
# answers exactly as french does.
docker cp "$NAME:/data/cache/swapyard/demo-v1/adapters/french" "$WORK/french" >/dev/null
call 201 POST /v1/adapters -H "Authorization: Bearer $ADMIN_KEY" -F name=mine \
  -F "config=@$WORK/french/adapter_config.json" -F "weights=@$WORK/french/adapter_model.safetensors"
mine=$(generate mine "Hello!")
[ "$mine" = "$french" ] || fail "the uploaded copy of french answers '$mine', french '$french'"
docker exec "$NAME" test -f /data/uploads/mine/adapter_model.safetensors || fail "the upload is not in /data/uploads"
note "upload with the admin key: 201, stored in the uploads volume, answers as french does"

# -- 4. SIGTERM drains an in-flight request -------------------------------------------------------------------
demo_stamp=$(docker exec "$NAME" stat -c %Y /data/cache/swapyard/demo-v1/READY)
python3 - "$PORT" "$NAME" <<'PY' || fail "drain"
"""A streamed request accepted before SIGTERM is answered in full; /ready says 503 meanwhile."""
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

port, name = int(sys.argv[1]), sys.argv[2]
body = json.dumps({"inputs": "good morning", "parameters": {"adapter_id": "french", "max_new_tokens": 64}}).encode()
sock = socket.create_connection(("127.0.0.1", port), timeout=120)
head = (
    f"POST /generate_stream HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
)
sock.sendall(head.encode())
# The server asks for the body only once the app reads it: the request is accepted (counted in flight).
interim = b""
while b"\r\n\r\n" not in interim:
    chunk = sock.recv(4096)
    assert chunk, "the server closed the connection before asking for the body"
    interim += chunk
assert interim.startswith(b"HTTP/1.1 100"), interim
subprocess.run(["docker", "kill", "-s", "TERM", name], check=True, capture_output=True)


def ready() -> int:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5).status
    except urllib.error.HTTPError as e:
        return e.code


deadline = time.monotonic() + 60  # bounded: the signal reaches the server in well under a second
while ready() != 503:
    assert time.monotonic() < deadline, "/ready did not turn 503 after SIGTERM"
    time.sleep(0.1)
sock.sendall(body)
response = b""
while chunk := sock.recv(65536):
    response += chunk
status = response.split(b"\r\n", 1)[0]
assert b" 200 " in status, response[:500]
events = [json.loads(line[5:]) for line in response.decode().splitlines() if line.startswith("data:")]
assert events and events[-1].get("generated_text") is not None, response[-500:]
print(f"drain: /ready 503 after SIGTERM; the in-flight stream finished: {len(events)} events")
PY
code=$(timeout 150 docker wait "$NAME") || fail "the server did not exit after draining"
docker logs "$NAME" 2>&1 | grep -q 'SIGTERM: draining 1 request' || fail "the log shows no drain of 1 request"
note "SIGTERM: /ready 503, the in-flight request answered in full, then exit ($code)"

# -- 5. a new container on the same volumes: cold start with the demo cached ----------------------------------
docker rm -v "$NAME" >/dev/null
start_ns=$(date +%s%N)
run_server
wait_ready "$NAME" 300
cold_ms=$((($(date +%s%N) - start_ns) / 1000000))
[ "$(docker exec "$NAME" stat -c %Y /data/cache/swapyard/demo-v1/READY)" = "$demo_stamp" ] ||
  fail "the demo was rebuilt: the cache volume did not keep it"
call 200 GET /v1/adapters/mine -H "Authorization: Bearer $ADMIN_KEY"
[ "$(generate mine "Hello!")" = "$french" ] || fail "the upload answers differently after the restart"
note "cold start (container start to /ready, demo cached): $((cold_ms / 1000)).$(printf '%03d' $((cold_ms % 1000))) s"
note "restart: demo build and upload 'mine' kept by the volumes"
docker rm -f -v "$NAME" >/dev/null

# -- 6. docker compose with Prometheus --------------------------------------------------------------------------
export SWAPYARD_HOST_PORT=$PORT PROMETHEUS_HOST_PORT=$PROMETHEUS_PORT PROMETHEUS_IMAGE=$PROMETHEUS_IMAGE
"${COMPOSE[@]}" up -d --no-build swapyard prometheus >"$WORK/compose.log" 2>&1 ||
  { cat "$WORK/compose.log"; fail "compose up"; }
server=$("${COMPOSE[@]}" ps -q swapyard)
NAME=$server
wait_healthy "$server" 300
for adapter in "" french pirate mine; do generate "$adapter" "Hello!" >/dev/null; done
PROM=http://127.0.0.1:$PROMETHEUS_PORT
query='count by (__name__) ({__name__=~"swapyard_.+", job="swapyard"})'
until=$((SECONDS + 120)) # bounded: Prometheus scrapes every 5 s
series=0 requests=0
while [ $SECONDS -lt $until ]; do
  BODY=$(curl -s -G "$PROM/api/v1/query" --data-urlencode "query=$query" || true)
  series=$(field "len(d['data']['result'])" 2>/dev/null || echo 0)
  BODY=$(curl -s -G "$PROM/api/v1/query" --data-urlencode 'query=sum(swapyard_adapter_requests_total)' || true)
  requests=$(field "d['data']['result'][0]['value'][1] if d['data']['result'] else 0" 2>/dev/null || echo 0)
  [ "$series" -gt 0 ] && [ "${requests%.*}" -ge 4 ] && break
  sleep 2
done
[ "$series" -gt 0 ] && [ "${requests%.*}" -ge 4 ] || fail "Prometheus holds no swapyard_ series after traffic"
note "compose ($COMPOSE_VERSION): swapyard healthy, Prometheus holds $series swapyard_ metric names, $requests requests counted"

say "PASS in $((SECONDS - T0)) s"
printf '%s\n' "${SUMMARY[@]}" | sed 's/^/  /'
[ -z "${SMOKE_OUT:-}" ] || { mkdir -p "$SMOKE_OUT" && printf '%s\n' "${SUMMARY[@]}" >"$SMOKE_OUT/summary.txt"; }
