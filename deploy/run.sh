#!/usr/bin/env bash
# deploy/run.sh - set up if needed, then run picogradd in the foreground on the default socket
# (unix://$XDG_RUNTIME_DIR/picogradd.sock, else unix:///tmp/picogradd-$UID.sock).
# Extra arguments go to picogradd, e.g. (TCP needs a token file, or --insecure):
#   deploy/run.sh --listen tcp://127.0.0.1:7777 --token-file ~/.picograd-token
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh >&2
exec build/bin/picogradd "$@"
