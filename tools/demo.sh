#!/usr/bin/env bash
# bbal in front of two demo backends, in the foreground; Ctrl-C stops all.
set -euo pipefail
cd "$(dirname "$0")/.."
port=${DEMO_PORT:-10053}
dir=$(mktemp -d /tmp/bbal-demo.XXXXXX)
mkdir "$dir/sockets"
pids=()
cleanup() {
	for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$dir"
}
trap cleanup EXIT INT TERM

bin/demo-backend -socket "$dir/sockets/5301" -name one & pids+=($!)
bin/demo-backend -socket "$dir/sockets/5302" -name two & pids+=($!)
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

cat <<MSG

bbal is listening on $addrs port $port, in front of backends 5301 ("one")
and 5302 ("two"). In another terminal, try:

    dig @127.0.0.1 -p $port who.example TXT +short
    dig @127.0.0.1 -p $port who.example TXT +short +tcp
    dig @127.0.0.1 -p $port who.example TXT +short -b 127.0.0.2
$v6
Each answer names the client address the backend saw and the backend that
answered; a client address keeps its backend. bbal's own view:

    bin/balstat -S $dir/bbal.sock

bbal's log follows (bunyan JSON). Ctrl-C stops everything.

MSG
bin/bbal -s "$dir/sockets" "${listen[@]}" -p "$port" -S "$dir/bbal.sock" & pids+=($!)
wait "${pids[2]}"
