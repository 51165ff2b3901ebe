#!/bin/sh
# As the official image does: without a config file, redis-server starts in protected mode and
# refuses every other container, so protected mode is turned off (the network is the stack's own).
set -eu
if [ "${1:-}" = redis-server ]; then
    shift
    set -- redis-server --protected-mode no "$@"
fi
exec "$@"
