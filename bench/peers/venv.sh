#!/usr/bin/env bash
# Makes (or refreshes) a virtualenv from a requirements file, only when the file changed:
#   bench/peers/venv.sh build/venv-peers bench/peers/requirements.txt
set -euo pipefail
venv=$1 requirements=$2
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$requirements" "$venv/.requirements.txt"; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$venv/.requirements.txt"
fi
