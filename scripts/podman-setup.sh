#!/usr/bin/env bash
# Podman for the container runtime's tests and bench: packages and engine config.
# Idempotent: installs podman, runc and busybox-static only when missing, and
# writes /etc/containers/containers.conf only when it is missing or lacks the
# settings below (runc as the OCI runtime, ulimits a container may lower to).
set -euo pipefail

CONF=${PODMAN_CONF:-/etc/containers/containers.conf}

need=()
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "ok installed" || need+=(busybox-static)
# `podman kube play` builds its pods' pause image around catatonit
command -v catatonit >/dev/null || need+=(catatonit)

conf_ok() {
  [ -f "$CONF" ] &&
    grep -Eq '^[[:space:]]*runtime[[:space:]]*=[[:space:]]*"runc"' "$CONF" &&
    grep -Eq '^[[:space:]]*default_ulimits[[:space:]]*=.*nofile=1024:1024' "$CONF"
}

if [ ${#need[@]} -eq 0 ] && conf_ok; then
  echo "podman-setup: podman, runc, busybox-static and $CONF are in place"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "podman-setup: needs root (missing: ${need[*]:-none}; conf ok: $(conf_ok && echo yes || echo no));" \
    "run: sudo bash $0" >&2
  exit 1
fi

if [ ${#need[@]} -gt 0 ]; then
  echo "podman-setup: installing ${need[*]} with apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! conf_ok; then
  if [ -f "$CONF" ]; then
    backup="$CONF.ondeck-backup.$(date +%s)"
    echo "podman-setup: $CONF lacks runc/ulimit settings; saving it as $backup"
    cp -p "$CONF" "$backup"
  fi
  echo "podman-setup: writing $CONF (runtime runc, default_ulimits nofile/nproc)"
  mkdir -p "$(dirname "$CONF")"
  tmp=$(mktemp "$CONF.XXXXXX")
  cat >"$tmp" <<'CONFEOF'
# Written by ondeck scripts/podman-setup.sh.
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1000:1000"]

[engine]
runtime = "runc"
CONFEOF
  chmod 0644 "$tmp"
  mv "$tmp" "$CONF"
fi
echo "podman-setup: done ($(podman --version))"
