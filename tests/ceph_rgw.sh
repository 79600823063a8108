#!/usr/bin/env bash
# A throwaway single-node Ceph cluster with a RADOS gateway (S3) for the tests.
#
#   tests/ceph_rgw.sh start DIR   start mon + OSD (memstore) + radosgw; print the endpoint
#   tests/ceph_rgw.sh stop DIR    stop exactly the daemons started in DIR; remove DIR
#
# Everything lives in DIR: ceph.conf, mon and OSD data, pid files (DIR/pids), logs (DIR/log).
# Needs Debian's ceph-mon, ceph-osd, radosgw and ceph-common; no network beyond 127.0.0.1.
# The OSD keeps objects in RAM (memstore, capped by CEPH_RGW_MEMSTORE_BYTES), one replica,
# no cephx, no mgr. S3 requests are still signed: a user with fixed keys is created.
#
# Environment (all optional):
#   CEPH_RGW_PORT            S3 port on 127.0.0.1 (default 7480; 0 picks a free one)
#   CEPH_RGW_ACCESS_KEY      the test user's keys (default vbtest-rgw-access /
#   CEPH_RGW_SECRET_KEY        vbtest-rgw-secret-key)
#   CEPH_RGW_SWIFT_KEY       the Swift subuser vbtest:swift's key (default vbtest-rgw-swift-key;
#                            Swift v1 auth at ENDPOINT/auth/1.0, tests/opendal_servers.py)
#   CEPH_RGW_MEMSTORE_BYTES  RAM cap of the OSD (default 3 GiB)
#   CEPH_RGW_TIMEOUT         seconds to wait for each step (default 60)
#
# stdout carries only the endpoint (http://127.0.0.1:PORT); progress goes to stderr.
# DIR/env holds the same as shell assignments (VOLBACKUP_RGW_ENDPOINT, ..._ACCESS_KEY, ...).
set -euo pipefail

MARKER=.volbackup-ceph-rgw   # stop removes only a directory that start made
DAEMONS=(radosgw osd mon)

say() { echo "ceph_rgw: $*" >&2; }
die() { say "$*"; exit 1; }

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

port_busy() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

alive() {  # alive NAME: the daemon whose pid DIR/pids/NAME holds is running
    local pid
    pid=$(cat "$dir/pids/$1" 2>/dev/null) || return 1
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null
}

launch() {  # launch NAME COMMAND...: in a session of its own, pid in DIR/pids/NAME
    local name=$1
    shift
    setsid "$@" >>"$dir/log/$name.out" 2>&1 </dev/null &
    echo $! >"$dir/pids/$name"
}

wait_for() {  # wait_for WHAT DAEMON COMMAND...: until COMMAND succeeds, DAEMON dies, or timeout
    local what=$1 daemon=$2
    shift 2
    local end=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        if ! alive "$daemon"; then
            tail -n 20 "$dir/log/$daemon.out" "$dir/log/"*"$daemon"*.log >&2 2>/dev/null || true
            die "$daemon died while waiting for $what (logs in $dir/log)"
        fi
        ((SECONDS < end)) || die "no $what after ${timeout}s (logs in $dir/log)"
        sleep 0.2
    done
}

ceph_() { ceph -c "$conf" --connect-timeout 10 "$@"; }

term_and_wait() {  # term_and_wait NAME...: SIGTERM those daemons together, SIGKILL after 10 s
    local name pid pids=()
    for name in "$@"; do
        pid=$(cat "$dir/pids/$name" 2>/dev/null) || continue
        [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && kill -TERM "$pid" && pids+=("$pid")
        rm -f -- "$dir/pids/$name"
    done
    for pid in "${pids[@]}"; do
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            say "pid $pid ignored SIGTERM for 10 s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
            for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        fi
    done
}

kill_daemons() {  # by the pids in DIR/pids only; radosgw first (it hangs without its OSD)
    term_and_wait radosgw
    term_and_wait osd mon
}

stop() {
    [[ -d "$dir" ]] || return 0
    [[ -e "$dir/$MARKER" ]] || die "$dir was not made by $0 start; not touching it"
    kill_daemons
    rm -rf -- "$dir"
}

start() {
    local port=${CEPH_RGW_PORT:-7480}
    local access=${CEPH_RGW_ACCESS_KEY:-vbtest-rgw-access}
    local secret=${CEPH_RGW_SECRET_KEY:-vbtest-rgw-secret-key}
    local swift_key=${CEPH_RGW_SWIFT_KEY:-vbtest-rgw-swift-key}
    local memstore=${CEPH_RGW_MEMSTORE_BYTES:-$((3 << 30))}
    timeout=${CEPH_RGW_TIMEOUT:-60}
    local name
    for name in ceph-mon ceph-osd radosgw radosgw-admin ceph monmaptool; do
        command -v "$name" >/dev/null ||
            die "$name is missing: apt-get install --no-install-recommends ceph-mon ceph-osd radosgw ceph-common"
    done
    if [[ -e "$dir/$MARKER" ]]; then
        for name in "${DAEMONS[@]}"; do
            alive "$name" && die "$dir already has a running cluster ($name); stop it first"
        done
        say "$dir holds a dead cluster; removing it"
        stop
    fi
    if [[ -d "$dir" && -n "$(ls -A "$dir")" ]]; then
        die "$dir exists and is not empty"
    fi
    [[ "$port" == 0 ]] && port=$(free_port)
    port_busy "$port" && die "127.0.0.1:$port is in use (another RGW? set CEPH_RGW_PORT)"
    local mon_port
    mon_port=$(free_port)

    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    conf=$dir/ceph.conf
    touch "$dir/$MARKER"
    created=1   # from here on, a failure stops what this run started
    mkdir -p "$dir/pids" "$dir/log" "$dir/run" "$dir/mon" "$dir/osd"
    local fsid started=$SECONDS
    fsid=$(uuidgen)
    cat >"$conf" <<EOF
[global]
fsid = $fsid
mon host = v2:127.0.0.1:$mon_port
mon initial members = a
auth cluster required = none
auth service required = none
auth client required = none
ms mon client mode = crc secure
run dir = $dir/run
admin socket = $dir/run/\$name.asok
log file = $dir/log/\$name.log
pid file =
keyring = $dir/keyring
crash dir = $dir/crash
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
paxos propose interval = 0.1

[mon]
mon data = $dir/mon

[osd]
osd data = $dir/osd
osd objectstore = memstore
memstore device bytes = $memstore
osd crush update on start = true
osd mon shutdown timeout = 0.5

[client.rgw]
rgw frontends = beast endpoint=127.0.0.1:$port
rgw data = $dir/rgw
rgw dns name = 127.0.0.1
rgw gc processor period = 60
rgw gc obj min wait = 60
EOF
    # No cephx, but mkfs still wants a keyring to read the mon. key from.
    ceph-authtool --create-keyring "$dir/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
    monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$mon_port]" "$dir/monmap" >/dev/null
    ceph-mon -c "$conf" --mkfs -i a --monmap "$dir/monmap" --keyring "$dir/keyring" \
        >>"$dir/log/mon.out" 2>&1 || { cat "$dir/log/mon.out" >&2; die "ceph-mon --mkfs failed"; }
    launch mon ceph-mon -c "$conf" -f -i a
    wait_for "monitor" mon ceph_ mon stat

    local osd_uuid osd_id
    osd_uuid=$(uuidgen)
    osd_id=$(ceph_ osd new "$osd_uuid")
    ceph-osd -c "$conf" -i "$osd_id" --mkfs --osd-uuid "$osd_uuid" \
        >>"$dir/log/osd.out" 2>&1 || { cat "$dir/log/osd.out" >&2; die "ceph-osd --mkfs failed"; }
    launch osd ceph-osd -c "$conf" -f -i "$osd_id"
    wait_for "OSD up" osd bash -c "ceph -c '$conf' --connect-timeout 10 osd dump | grep -q '^osd.$osd_id up'"

    launch radosgw radosgw -c "$conf" -f -n client.rgw
    wait_for "S3 on 127.0.0.1:$port" radosgw curl -sf -o /dev/null "http://127.0.0.1:$port/"
    radosgw-admin -c "$conf" -n client.rgw user create --uid vbtest --display-name "volbackup tests" \
        --access-key "$access" --secret "$secret" >"$dir/log/user.json" 2>>"$dir/log/radosgw-admin.out" \
        || { tail -n 20 "$dir/log/radosgw-admin.out" >&2; die "radosgw-admin user create failed"; }
    radosgw-admin -c "$conf" -n client.rgw subuser create --uid vbtest --subuser vbtest:swift \
        --access full --key-type swift --secret "$swift_key" >"$dir/log/subuser.json" \
        2>>"$dir/log/radosgw-admin.out" \
        || { tail -n 20 "$dir/log/radosgw-admin.out" >&2; die "radosgw-admin subuser create failed"; }

    local endpoint=http://127.0.0.1:$port
    cat >"$dir/env" <<EOF
VOLBACKUP_RGW_ENDPOINT=$endpoint
VOLBACKUP_RGW_ACCESS_KEY=$access
VOLBACKUP_RGW_SECRET_KEY=$secret
VOLBACKUP_RGW_SWIFT_USER=vbtest:swift
VOLBACKUP_RGW_SWIFT_KEY=$swift_key
EOF
    say "up in $((SECONDS - started))s: $endpoint (pids in $dir/pids, logs in $dir/log)"
    echo "$endpoint"
}

usage() { die "usage: $0 start|stop DIR"; }

(($# == 2)) || usage
dir=$2
conf=$dir/ceph.conf
timeout=60
created=0
case "$1" in
    start)
        # A failed start leaves no daemon behind; DIR stays for its logs (stop removes it).
        trap 'rc=$?; if ((rc && created)); then
                  say "start failed; stopped what it started; logs in $dir/log"; kill_daemons || true
              fi' EXIT
        start
        trap - EXIT
        ;;
    stop) stop ;;
    *) usage ;;
esac
