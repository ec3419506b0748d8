#!/bin/bash
# On the device machine, with .devbin/ and .whl/ carried (scripts/device_bundle.sh makes them): the
# workers benchmark with stand-ins at 1, 2, 4 and 8 workers, for each pipeline in PIPELINES (default
# "off full"), results under $OUT (SUFFIX added to the names). LOCAL=1 runs it here instead, with the
# project's venv and the Redis already on 6379.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/device-workers}; mkdir -p "$OUT"
if [ -z "${LOCAL:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
  PY=python3
else
  export PYTHONPATH=$PWD
  PY=.venv/bin/python
fi
export PATH=$PWD/.devbin/bin:$PATH PYTHONUNBUFFERED=1
{ nproc; $PY --version; head -2 /etc/os-release; uname -a; grep -m1 "model name" /proc/cpuinfo
  nginx -v 2>&1; wrk -v 2>&1 | head -1; redis-server --version; } 2>&1 | tee "$OUT/machine.txt"
if ! redis-cli ping >/dev/null 2>&1; then
  redis-server --port 6379 --save '' --appendonly no --daemonize yes --logfile /tmp/redis.log
  sleep 1; redis-cli ping || exit 1
fi
$PY -c "import gateway.cli, litestar, uvloop, redis, hiredis, msgspec" || exit 1
for pipeline in ${PIPELINES:-off full}; do
  timeout 200 $PY -m benchmarks.workers --stand-ins --pipeline "$pipeline" --worker-counts "${COUNTS:-1,2,4,8}" \
    --wrk-threads 4 --connections 256 --seconds "${SECONDS_PER_BATCH:-6}" \
    --out "$OUT/workers_many_cores_${pipeline}${SUFFIX:-}.json" > "$OUT/${pipeline}${SUFFIX:-}.log" 2>&1
  echo "pipeline $pipeline rc=$?"
  grep -A5 '"scaling"' "$OUT/${pipeline}${SUFFIX:-}.log" | head -6
done
