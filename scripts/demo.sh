#!/usr/bin/env bash
# `make demo`: scaffold an example GitOps repo, run `ondeck up` on it, show what to try.
# Interactive: the controller stays in the foreground until Ctrl-C (instances keep running:
# `make demo-stop` ends them). Non-interactive (CI): runs the tour itself and cleans up.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEMO=$ROOT/demo
export ONDECK_STATE_DIR=$DEMO/state
ONDECK=$ROOT/.venv/bin/ondeck
API=127.0.0.1:${ONDECK_DEMO_API_PORT:-7070}
LISTEN=127.0.0.1:${ONDECK_DEMO_PORT:-8080}

instances() { # pids of the demo's app instances, from the controller's own status
  "$ONDECK" status --json 2>/dev/null | python3 -c 'import json,sys
for e in json.load(sys.stdin)["environments"]:
    for s in e["services"]:
        for i in s["instances"]:
            print(i["pid"]) if i["pid"] else None' 2>/dev/null || true
}

stop_all() {
  local pids
  pids=$(instances)
  [ -f "$DEMO/up.pid" ] && kill "$(cat "$DEMO/up.pid")" 2>/dev/null || true
  for pid in $pids; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  [ -f "$DEMO/state/router.pid" ] && kill "$(cat "$DEMO/state/router.pid")" 2>/dev/null || true
  rm -f "$DEMO/up.pid" "$DEMO/state/router.pid"
}

if [ "${1:-}" = stop ]; then stop_all; echo "demo stopped"; exit 0; fi

[ -d "$DEMO" ] && stop_all
for addr in "$API" "$LISTEN"; do  # fail early and clearly rather than demo someone else's server
  if ! python3 -c 'import socket,sys; h,p=sys.argv[1].rsplit(":",1); socket.create_server((h,int(p))).close()' "$addr" 2>/dev/null; then
    echo "port ${addr##*:} is busy: run with ONDECK_DEMO_API_PORT=... or ONDECK_DEMO_PORT=... set to free ports" >&2
    exit 1
  fi
done
rm -rf "$DEMO"
"$ONDECK" init "$DEMO/repo"
"$ONDECK" up "$DEMO/repo" --api "$API" --listen "$LISTEN" --poll 5s >"$DEMO/up.log" 2>&1 &
echo $! >"$DEMO/up.pid"

for _ in $(seq 1 100); do  # wait (bounded) for the first sync to settle
  if "$ONDECK" status --json 2>/dev/null | grep -q '"health": "Healthy"'; then break; fi
  sleep 0.2
done
echo; "$ONDECK" status; echo
echo "The app, behind ondeck's router:  curl http://$LISTEN/"
for _ in 1 2; do curl -s "http://$LISTEN/" || true; done
cat <<TRY

Try it (in another terminal, with: export ONDECK_STATE_DIR=$ONDECK_STATE_DIR):
  while true; do curl -s http://$LISTEN/ || echo FAILED; sleep 0.1; done   # watch a redeploy drop nothing
  sed -i 's/version: "1.0.0"/version: "1.1.0"/' $DEMO/repo/ondeck.yaml
  git -C $DEMO/repo commit -qam "release 1.1.0"
  $ONDECK sync --wait          # or wait for the next poll (5s): a rolling, health-gated redeploy
  $ONDECK history              # every sync: commit, author, result, actions
  kill -9 <a pid from status>  # restarted at once; a crash loop backs off
  git -C $DEMO/repo revert --no-edit HEAD && $ONDECK sync --wait   # rollback is a revert
Controller log: $DEMO/up.log.  Stop everything: make demo-stop
TRY

if [ -t 0 ] && [ -z "${CI:-}" ]; then
  echo; echo "ondeck up is running; Ctrl-C stops the controller (instances keep serving)."
  trap 'kill "$(cat "$DEMO/up.pid")" 2>/dev/null; exit 0' INT TERM
  tail -n +1 -f "$DEMO/up.log"
else
  echo; echo "(non-interactive: running the redeploy once, then cleaning up)"
  sed -i 's/version: "1.0.0"/version: "1.1.0"/' "$DEMO/repo/ondeck.yaml"
  git -C "$DEMO/repo" -c user.name=demo -c user.email=demo@localhost commit -qam "release 1.1.0"
  "$ONDECK" sync --wait
  "$ONDECK" history --limit 2
  curl -s "http://$LISTEN/"
  stop_all
fi
