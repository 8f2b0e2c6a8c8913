#!/bin/sh
# As the official redis image: no config file, data (AOF) in the working directory /data, and
# protected mode off so that the other containers of the network may connect.
set -eu
if [ "$1" = redis-server ]; then
  shift
  exec redis-server --protected-mode no "$@"
fi
exec "$@"
