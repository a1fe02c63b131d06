# shellcheck shell=bash
# Helpers shared by the benchmark scripts (source it; it defines functions only).
#
# A benchmark appends one row per job to the TSV file $BENCH_ROWS:
#
#   section  job  value  unit  baseline  baseline_value  ratio  rss_mib  note
#
# - value: the measured figure (seconds or MB/s, as `unit` says), a median;
# - baseline / baseline_value: what it is compared with, measured in the same run
#   (empty when there is none);
# - ratio: how dcloud-fs compares, >1 better: baseline_time / time for times, value /
#   baseline_value for rates (empty without a baseline); for bytes downloaded (unit
#   MB) it is value / baseline_value, lower better, and the row's note says so;
# - rss_mib: peak RSS of the process that did the job (empty if not measured);
# - note: anything a reader needs (cache size, sizes, 429 count, ...).
#
# scripts/bench.sh turns the rows into a Markdown table and a JSON file.

# median FILE: the median of the numbers in FILE, one per line.
median() {
    sort -g "$1" | awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else print v[int((NR + 1) / 2)] }'
}

# timed NAME COMMAND...: runs COMMAND, appends its wall-clock seconds to NAME.times in
# the current folder. Fails if COMMAND fails.
timed() {
    local name=$1 start
    shift
    start=$(date +%s.%N)
    "$@"
    seconds_since "$start" >> "$name.times"
}

# seconds_since START: the seconds from START (date +%s.%N) to now.
seconds_since() { awk -v s="$1" -v e="$(date +%s.%N)" 'BEGIN { printf "%.4f\n", e - s }'; }

# mb BYTES: BYTES in MB (10^6 bytes).
mb() { awk -v b="$1" 'BEGIN { printf "%.2f", b / 1e6 }'; }

# rate MIB SECONDS: MB/s (10^6 bytes) for MIB mebibytes in SECONDS.
rate() {
    awk -v m="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.1f", m * 1.048576 / s; else print "nan" }'
}

# ratio_time BASELINE_S S: how many times faster than the baseline (baseline / s).
ratio_time() {
    awk -v b="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.2f", b / s; else print "nan" }'
}

# ratio_rate RATE BASELINE_RATE: rate / baseline rate.
ratio_rate() {
    awk -v r="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", r / b; else print "nan" }'
}

# row SECTION JOB VALUE UNIT BASELINE BASELINE_VALUE RATIO RSS_MIB NOTE: appends a row.
row() {
    [ -n "${BENCH_ROWS:-}" ] || { echo "row: BENCH_ROWS is not set" >&2; return 1; }
    local IFS=$'\t'
    printf '%s\n' "$*" >> "$BENCH_ROWS"
}

# peak_rss_mib FILE...: the largest of the kilobyte figures in FILEs, in MiB (the
# output of /usr/bin/time -f %M).
peak_rss_mib() {
    cat "$@" 2> /dev/null | sort -n | tail -1 | awk '{ printf "%.0f", $1 / 1024 }'
}

# drop_caches: empties the page cache (root only; a no-op otherwise).
drop_caches() {
    sync
    if [ -w /proc/sys/vm/drop_caches ]; then echo 3 > /proc/sys/vm/drop_caches; fi
}

# json FILE KEY: a field of the JSON object in FILE.
json() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$1" "$2"; }

# --- the fake Discord server and the mount, for the discord and history sections -----
# These share the variables release, bin, fake (bench_binaries sets them), work, mnt,
# fake_pid, mount_pid (bench_work) and DCLOUD_API (fake_start).

# bench_begin: checks that BENCH_ROWS is set, makes it and CARGO_TARGET_DIR absolute
# (Cargo takes a relative CARGO_TARGET_DIR from the folder it runs in) and goes to the
# top of the checkout, for a section started from anywhere.
bench_begin() {
    [ -n "${BENCH_ROWS:-}" ] || { echo "$0: set BENCH_ROWS to the file to append rows to" >&2; exit 2; }
    BENCH_ROWS=$(realpath -m "$BENCH_ROWS")
    export BENCH_ROWS
    if [ -n "${CARGO_TARGET_DIR:-}" ]; then
        CARGO_TARGET_DIR=$(realpath -m "$CARGO_TARGET_DIR")
        export CARGO_TARGET_DIR
    fi
    cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
}

# bench_binaries: sets release to $CARGO_TARGET_DIR/release (default target/release),
# bin and fake to the dcloud-fs and fake-discord binaries there, building them (release)
# if either is missing.
bench_binaries() {
    release=${CARGO_TARGET_DIR:-$PWD/target}/release
    if [ ! -x "$release/dcloud-fs" ] || [ ! -x "$release/fake-discord" ]; then
        cargo build --release --locked -p dcloud-fs -p fake-discord --quiet
    fi
    bin=$release/dcloud-fs
    fake=$release/fake-discord
}

# bench_example NAME: builds the example NAME of dcloud-fs (release) if it is missing
# from $release/examples.
bench_example() {
    if [ ! -x "$release/examples/$1" ]; then
        cargo build --release --locked -p dcloud-fs --example "$1" --quiet
    fi
}

# bench_work: makes a work folder (work) under $BENCH_DIR (default /var/tmp), with a
# mount point (mnt) in it, and goes there; HOME is a folder in it, and the DCLOUD_*
# and XDG_* variables that would change what is measured are unset. On exit the
# mount, the mount daemon (mount_pid) and the fake server (fake_pid) are stopped and
# the folder removed.
bench_work() {
    work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/dcloud-bench.XXXXXX")
    mnt=$work/mnt
    fake_pid=
    mount_pid=
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
    export HOME=$work/home
    unset DCLOUD_KEY DCLOUD_PASSPHRASE DCLOUD_KEY_FILE DCLOUD_LOCAL DCLOUD_CONFIG DCLOUD_CATEGORY
    unset DCLOUD_CACHE_DIR DCLOUD_MOUNT_POINT DCLOUD_CACHE_SIZE_MIB DCLOUD_DISK_CACHE_MIB
    unset DCLOUD_CHECKPOINTS XDG_CONFIG_HOME XDG_CACHE_HOME XDG_DATA_HOME
    cd "$work" || exit 1
    mkdir -p "$mnt"
}

# bench_cleanup: what bench_work leaves to do on exit.
bench_cleanup() {
    if mountpoint -q "$mnt" 2> /dev/null; then
        fusermount3 -u "$mnt" 2> /dev/null || umount -l "$mnt" 2> /dev/null || true
    fi
    if [ -n "$mount_pid" ]; then # /usr/bin/time, and the daemon under it
        pkill -TERM -P "$mount_pid" 2> /dev/null || true
        kill "$mount_pid" 2> /dev/null || true
    fi
    if [ -n "$fake_pid" ]; then kill "$fake_pid" 2> /dev/null || true; fi
    wait 2> /dev/null || true
    rm -rf "$work"
}

# fake_start LATENCY_MS: starts the fake Discord server on a free port of 127.0.0.1,
# adding LATENCY_MS to every request (its log: fake.log), exports what its fake.env
# says (DCLOUD_API, DCLOUD_TOKEN, ...), and keeps its knobs as it started, Discord's,
# in knobs.json (for `discord`).
fake_start() {
    "$fake" --listen 127.0.0.1:0 --latency-ms "$1" > fake.env 2> fake.log &
    fake_pid=$!
    for _ in $(seq 100); do [ -s fake.env ] && [ "$(wc -l < fake.env)" -ge 3 ] && break; sleep 0.05; done
    [ "$(wc -l < fake.env)" -ge 3 ] || { echo "the fake server did not start:" >&2; cat fake.log >&2; exit 1; }
    set -a
    # shellcheck disable=SC1091 # written by the server
    . ./fake.env
    set +a
    curl -sf "$DCLOUD_API/_fake/knobs" > knobs.json
}

# fake_stat NAME: a counter of the fake server's /_fake/stats.
fake_stat() {
    curl -sf "$DCLOUD_API/_fake/stats" | python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"
}

# knobs JSON: changes the fake server's knobs.
knobs() {
    curl -sf -X POST -H 'Content-Type: application/json' -d "$1" "$DCLOUD_API/_fake/knobs" > /dev/null
}

# fast: the server's limits off and no latency (the limits so high that the rate-limit
# headers don't make the client wait either); discord: back to Discord's.
fast() {
    knobs '{"rate_limits": false, "latency": 0, "message_create_limit": [1000000, 1],
            "message_delete_limit": [1000000, 1], "default_route_limit": [1000000, 1],
            "global_limit_per_sec": 1000000}'
}
discord() { knobs "$(cat knobs.json)"; }

# mount_start NAME CACHE_DIR [MOUNT_ARGS...]: mounts on $mnt in the foreground, under
# /usr/bin/time (peak RSS to rss.NAME, log to mount.NAME.log), with CACHE_DIR as the
# cache folder (mount_pid: the pid of /usr/bin/time); returns once the mount is up,
# which may take minutes where the mount reads a long history first.
mount_start() {
    local name=$1 cache=$2
    shift 2
    /usr/bin/time -f %M -o "rss.$name" "$bin" mount -f --cache-dir "$cache" "$@" "$mnt" \
        2> "mount.$name.log" &
    mount_pid=$!
    for _ in $(seq 30000); do mountpoint -q "$mnt" && break; sleep 0.01; done
    mountpoint -q "$mnt" || { echo "the mount did not come up; its log:" >&2; cat "mount.$name.log" >&2; exit 1; }
}

# mount_stop NAME: unmounts, and waits for the daemon to end.
mount_stop() {
    "$bin" umount "$mnt"
    wait "$mount_pid" || { echo "the mount failed; its log:" >&2; cat "mount.$1.log" >&2; exit 1; }
    mount_pid=
}
