#!/usr/bin/env bash
# bbal in front of two demo backends, in the foreground; Ctrl-C stops all.
# bbal's bunyan log goes to stdout, everything else to stderr.
#
# Ctrl-C reaches bbal alone (the backends run in a session of their own),
# so that bbal shuts down first and then the backends are stopped: their
# sockets closing under a running bbal would be logged as faults. If
# whoever started the demo (make) goes away, the demo stops too.
set -euo pipefail
cd "$(dirname "$0")/.."
port=${DEMO_PORT:-10053}
bin=${DEMO_BIN:-bin}
parent=$PPID
dir=$(mktemp -d /tmp/bbal-demo.XXXXXX)
mkdir "$dir/sockets"
backends=()
bbal=""
watchdog=""
cleanup() {
	set +e
	trap - EXIT INT TERM
	[ -n "$watchdog" ] && kill "$watchdog" 2>/dev/null
	if [ -n "$bbal" ]; then
		kill -TERM "$bbal" 2>/dev/null || true
		wait "$bbal" 2>/dev/null || true
	fi
	for pid in "${backends[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for b in 5301:one 5302:two; do
	setsid "$bin/demo-backend" -socket "$dir/sockets/${b%%:*}" -name "${b#*:}" >&2 &
	backends+=($!)
done
for _ in $(seq 50); do
	[ -S "$dir/sockets/5301" ] && [ -S "$dir/sockets/5302" ] && break
	sleep 0.1
done

# IPv6 too where the host has ::1.
listen=(-b 127.0.0.1)
addrs="127.0.0.1"
v6=""
if grep -qs '^00000000000000000000000000000001 ' /proc/net/if_inet6; then
	listen+=(-b ::1)
	addrs="127.0.0.1 and ::1"
	v6="    dig @::1 -p $port who.example TXT +short       (IPv6: the backend sees a stand-in)
"
fi

"$bin/bbal" -s "$dir/sockets" "${listen[@]}" -p "$port" -S "$dir/bbal.sock" &
bbal=$!

# Stop when the parent is gone (make killed, the terminal closed): this
# script is then given another parent.
ppid() { local stat; read -r stat </proc/$$/stat; stat=${stat##*) }; set -- $stat; echo "$2"; }
(while [ "$(ppid)" = "$parent" ]; do sleep 1; done; kill -TERM $$ 2>/dev/null) &
watchdog=$!

# Wait until bbal answers on its debug socket: by then it has bound its
# UDP and TCP sockets.
until "$bin/balstat" -S "$dir/bbal.sock" >/dev/null 2>&1; do
	if ! kill -0 "$bbal" 2>/dev/null; then
		status=0
		wait "$bbal" || status=$?
		bbal=""
		cat >&2 <<MSG

bbal exited (status $status) before it was ready. If port $port is in use
("address already in use" above), pick another: DEMO_PORT=10054 make demo
MSG
		exit 1
	fi
	sleep 0.1
done

cat >&2 <<MSG

bbal is listening on $addrs port $port, in front of backends 5301 ("one")
and 5302 ("two"). In another terminal, try:

    dig @127.0.0.1 -p $port who.example TXT +short
    dig @127.0.0.1 -p $port who.example TXT +short +tcp
    dig @127.0.0.1 -p $port who.example TXT +short -b 127.0.0.2
$v6
Each answer names the client address the backend saw and the backend that
answered; a client address keeps its backend. bbal's own view:

    $bin/balstat -S $dir/bbal.sock

bbal's log is above and goes on below (bunyan JSON). Ctrl-C stops everything.

MSG
status=0
wait "$bbal" || status=$?
bbal=""
exit "$status"
