#!/bin/sh
# The build stage of deploy/Dockerfile: a platform wheel of shadowtap with the compiled data path.
#   deploy/image-build.sh SOURCE_DIR WHEEL_DIR [BUILD_VENV]
# tests/shadowtap/test_packaging_functional.py runs it too (in a fresh venv), so the steps cannot rot.
set -eu
src=$1
out=$2
venv=${3:-/tmp/shadowtap-build-venv}
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
# mypyc type-checks what it compiles against the installed dependencies: install them (and the
# compiler, the 'native' extra) into the build venv, then build there without isolation.
"$venv/bin/pip" install --quiet "$src[native]" "build>=1"
SHADOWTAP_NATIVE=1 "$venv/bin/python" -m build --no-isolation --wheel --outdir "$out" "$src"
