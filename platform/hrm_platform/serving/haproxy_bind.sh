#!/bin/sh
# Ray Serve's HAProxy with every wildcard listener bound to one host (HRM_HAPROXY_BIND_HOST).
#
# Ray 2.60 renders `bind *:<stats_port>` (stats page) and `bind :<metrics_port>` (Prometheus exporter) into
# the HAProxy config it writes, and no Serve option moves them off all interfaces. hrm_platform points
# RAY_SERVE_HAPROXY_BINARY_PATH at this file (serving/ingress.py), so Serve runs it as `<this> -db -f CONFIG
# [reload flags]`. It rewrites every `bind [*|0.0.0.0]:PORT` line of CONFIG to HRM_HAPROXY_BIND_HOST:PORT,
# then replaces itself with the real HAProxy (HRM_HAPROXY_BINARY) and the same arguments: Serve's reloads,
# signals and /proc checks see HAProxy itself. Binds that name a host (the HTTP front end) are left as they are.
set -eu

: "${HRM_HAPROXY_BINARY:?HRM_HAPROXY_BINARY must name the HAProxy executable}"
bind_host="${HRM_HAPROXY_BIND_HOST:-127.0.0.1}"

config=""
previous=""
for argument in "$@"; do
    if [ "$previous" = "-f" ]; then
        config="$argument"
    fi
    previous="$argument"
done

if [ -n "$config" ]; then
    # Write beside CONFIG, then rename over it: HAProxy never reads a half-written file.
    rewritten="$config.bind.$$"
    sed -E "s/^([[:space:]]*bind[[:space:]]+)(\*|0\.0\.0\.0)?:([0-9]+)/\1${bind_host}:\3/" "$config" > "$rewritten"
    mv "$rewritten" "$config"
fi

exec "$HRM_HAPROXY_BINARY" "$@"
