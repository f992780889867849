#!/usr/bin/env bash
# Debian packages the tests and the demo need, installed only when missing.
set -euo pipefail
need=()
command -v git >/dev/null || need+=(git)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v curl >/dev/null || need+=(curl)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
command -v gpg >/dev/null || need+=(gpg)
command -v setsid >/dev/null || need+=(util-linux)
command -v prlimit >/dev/null || need+=(util-linux)
command -v kubectl >/dev/null || need+=(kubernetes-client)
command -v openssl >/dev/null || need+=(openssl)
# ACME tests: a real ACME server (pebble) and its mock DNS (pebble-challtestsrv)
{ command -v pebble && command -v pebble-challtestsrv; } >/dev/null || need+=(pebble)
# backups: a PostgreSQL server the tests start themselves (initdb, pgbench, pg_dump/pg_restore) and restic
ls /usr/lib/postgresql/*/bin/pgbench >/dev/null 2>&1 || need+=(postgresql)
command -v restic >/dev/null || need+=(restic)
command -v runuser >/dev/null || need+=(util-linux)
command -v chromium >/dev/null || need+=(chromium)  # the dashboard's browser tests
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then
  echo "missing: ${need[*]}; install them with: sudo apt-get install -y ${need[*]}" >&2
  exit 1
fi
echo "installing ${need[*]} with apt-get" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
