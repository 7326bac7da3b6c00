#!/bin/sh
# Puts JANUS_ADMIN_SECRET (or the file JANUS_ADMIN_SECRET_FILE names) in janus.jcfg, then runs
# Janus in the foreground, logging to stdout.
set -eu
secret="${JANUS_ADMIN_SECRET:-}"
if [ -n "${JANUS_ADMIN_SECRET_FILE:-}" ]; then
  secret="$(cat "$JANUS_ADMIN_SECRET_FILE")"
fi
if [ -n "$secret" ]; then
  sed -i "s|admin_secret = \"janusoverlord\"|admin_secret = \"$secret\"|" /etc/janus/janus.jcfg
fi
exec janus -o
