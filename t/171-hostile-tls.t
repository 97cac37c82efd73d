#!/bin/sh
# 170-hostile over a tls: listener
HOSTILE_TLS=1 exec /usr/bin/python3 "$(dirname "$0")/170-hostile.t"
