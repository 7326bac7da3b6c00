#!/bin/sh
# Preload jemalloc for KMS, then hand over to the image's own entrypoint.
# MALLOC_CONF (the image's background_thread:true, or any value the container is given) is
# passed through as set.
set -eu
# The Dockerfile links the architecture's own library here.
JEMALLOC=/usr/local/lib/libjemalloc.so.2
if [ ! -f "$JEMALLOC" ]; then
    echo "jemalloc-entrypoint: $JEMALLOC is missing; starting KMS on glibc malloc" >&2
    exec /entrypoint.sh "$@"
fi
export LD_PRELOAD="$JEMALLOC${LD_PRELOAD:+:$LD_PRELOAD}"
exec /entrypoint.sh "$@"
