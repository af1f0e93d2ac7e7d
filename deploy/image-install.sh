#!/bin/sh
# The runtime stage of deploy/Dockerfile: shadowtap from its wheel into a venv of its own, and a
# check that the data path runs compiled there.
#   deploy/image-install.sh WHEEL_DIR PREFIX [EXTRAS]
set -eu
wheels=$1
prefix=$2
extras=${3:-}
python3 -m venv "$prefix"
"$prefix/bin/pip" install --quiet --upgrade pip
wheel=$(ls "$wheels"/shadowtap-*.whl)
"$prefix/bin/pip" install --quiet --no-cache-dir "$wheel${extras:+[$extras]}"
"$prefix/bin/python" -c '
import sys
from shadowtap.wire import native
print("shadowtap data path:", native.STATUS)
sys.exit(0 if native.STATUS.startswith("compiled") else 1)
'
