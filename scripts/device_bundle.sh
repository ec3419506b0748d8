#!/bin/bash
# Prepares what a bare many-core device machine (this workplace's GPU tasks lend one: 16 cores, Python
# 3.12, no package index) needs to run the workers benchmark with stand-ins: .devbin/ holds nginx, wrk,
# redis-server and redis-cli copied from this Debian host with their libraries (glibc excepted) behind
# wrappers that set LD_LIBRARY_PATH, .whl/ the gateway's runtime pins as cp312 manylinux wheels. Both
# are git-ignored; carry both, then run scripts/device_workers.sh there. Needs the binaries installed
# here (apt-get install nginx-light wrk redis-server).
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .devbin .whl
mkdir -p .devbin/bin .devbin/lib .devbin/real .whl
for binary in /usr/sbin/nginx /usr/bin/wrk /usr/bin/redis-server /usr/bin/redis-cli; do
  cp -L "$binary" .devbin/real/
  name=$(basename "$binary")
  printf '#!/bin/sh\nhere=$(cd "$(dirname "$0")/.." && pwd)\nLD_LIBRARY_PATH="$here/lib" exec "$here/real/%s" "$@"\n' \
    "$name" > ".devbin/bin/$name"
  chmod +x ".devbin/bin/$name"
done
for library in $(ldd .devbin/real/* | awk '/=>/ {print $3}' | sort -u); do
  case $(basename "$library") in libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*) ;;
    *) cp -L "$library" .devbin/lib/ ;; esac
done
pins=$(python3 -c 'import tomllib; print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))')
httpx=$(python3 -c 'import tomllib; print([d for d in tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["test"] if d.startswith("httpx")][0])')
# shellcheck disable=SC2086
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_27_x86_64 --platform manylinux1_x86_64 -d .whl $pins "$httpx"
du -sh .devbin .whl
