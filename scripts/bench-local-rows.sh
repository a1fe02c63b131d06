#!/usr/bin/env bash
# Section `local` of scripts/bench.sh: `dcloud-fs put` and `get` of a random file on the
# local store, beside the same copy on the same disk, measured in the same run.
#
#   BENCH_ROWS=rows.tsv scripts/bench-local-rows.sh quick|full
#
# quick: a 64 MiB file, 3 runs; full: 1024 MiB, 3 runs. Every figure is the median of the
# runs, in MB/s (10^6 bytes a second); the row's peak RSS is the dcloud-fs command's.
# - put, beside `cp` + `sync` of the file: the local store fsyncs every attachment it
#   writes (a stored file must survive a crash), so the copy is synced too;
# - get, beside `cat file > copy`: a copy through a user buffer, as dcloud-fs must bring
#   every byte through its own memory to open it (`cp` copies inside the kernel).
# The source file is in the page cache for all of them (it was just written), like a file
# a user has just made.
# - creating small files in a big folder, beside the same into an empty folder: through
#   `dcloud-fs mount` (write-back), one `printf > file` each, 1,000 files (quick: 200)
#   into a folder of 100,000 (quick: 10,000) that `dcloud-fs put -r` stored before, and
#   the same number into an empty folder of an empty channel, in the same runs (the
#   order alternating), timed until the last close returns and until stored (`dcloud-fs
#   umount`, which waits for the uploads, returns). The cost of a file must not grow
#   with its folder: the aim is a ratio of at least 0.83 (at most 1.2 times the time).
#   Needs root and fusermount3 (to mount); skipped otherwise.
# BENCH_DIR picks the disk (default /var/tmp). Expects the release build (scripts/bench.sh
# makes it; run alone, this builds it).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh

case ${1:-quick} in
    quick) size_mib=64 runs=3 big_n=10000 create_n=200 ;;
    full) size_mib=1024 runs=3 big_n=100000 create_n=1000 ;;
    *) echo "usage: $0 quick|full" >&2; exit 2 ;;
esac
[ -n "${BENCH_ROWS:-}" ] || { echo "$0: set BENCH_ROWS to the rows file (see scripts/bench-lib.sh)" >&2; exit 2; }
[ "${BENCH_BUILT:-}" = 1 ] || cargo build --release --locked --quiet -p dcloud-fs
bin=$PWD/target/release/dcloud-fs

work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/dcloud-bench.XXXXXX")
mnt=$work/mnt pid=''
cleanup() {
    if mountpoint -q "$mnt" 2> /dev/null; then
        fusermount3 -u "$mnt" 2> /dev/null || umount -l "$mnt" || true
    fi
    # The daemon runs under /usr/bin/time, which a signal ends without its child.
    if [ -n "$pid" ]; then
        # shellcheck disable=SC2046 # a list of ids
        kill $(pgrep -P "$pid") "$pid" 2> /dev/null || true
    fi
    wait 2> /dev/null || true
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
export HOME=$work/home DCLOUD_LOCAL=$work/store
unset DCLOUD_KEY DCLOUD_PASSPHRASE DCLOUD_KEY_FILE DCLOUD_TOKEN DCLOUD_CONFIG
unset XDG_CONFIG_HOME XDG_CACHE_HOME XDG_DATA_HOME
cd "$work"

head -c "${size_mib}M" /dev/urandom > src.bin
"$bin" keygen > /dev/null 2>&1
"$bin" mkdir bench

# rss_timed NAME COMMAND...: like `timed`, and appends the command's peak RSS (KiB) to
# NAME.rss.
rss_timed() {
    local name=$1
    shift
    timed "$name" /usr/bin/time -f %M -o time.out "$@"
    cat time.out >> "$name.rss"
}

for run in $(seq "$runs"); do
    timed cp_sync sh -c 'cp src.bin copy.bin && sync copy.bin'
    rm copy.bin
    timed cat sh -c 'cat src.bin > copy.bin'
    rm copy.bin
    rss_timed put "$bin" -q put src.bin "bench/f$run"
    rss_timed get "$bin" -q get "bench/f$run" out.bin
    cmp -s src.bin out.bin || { echo "get returned different bytes" >&2; exit 1; }
    rm out.bin
    "$bin" -q rm "bench/f$run"
done

put=$(rate "$size_mib" "$(median put.times)")
get=$(rate "$size_mib" "$(median get.times)")
cp_sync=$(rate "$size_mib" "$(median cp_sync.times)")
cat=$(rate "$size_mib" "$(median cat.times)")
note="${size_mib} MiB random file, median of $runs"
row local "put (local store)" "$put" MB/s "cp + sync" "$cp_sync" "$(ratio_rate "$put" "$cp_sync")" \
    "$(peak_rss_mib put.rss)" "$note; the store fsyncs what it writes"
row local "get (local store)" "$get" MB/s "cat > file" "$cat" "$(ratio_rate "$get" "$cat")" \
    "$(peak_rss_mib get.rss)" "$note"

# Creating small files in a big folder, beside an empty one.
if [ "$(id -u)" != 0 ] || ! command -v fusermount3 > /dev/null; then
    row local "create $create_n small files in a folder of $big_n" "" "" "" "" "" "" \
        "skipped: needs root and fusermount3 (it mounts)"
    exit 0
fi
mkdir -p "$mnt" tree/big
# The big folder's files, made quickly (one awk, not a process per file).
awk -v d=tree/big -v n="$big_n" 'BEGIN { for (i = 1; i <= n; i++) { f = d "/f" i; printf "file %d\n", i > f; close(f) } }'
"$bin" mkdir many
"$bin" mkdir few
timed populate "$bin" -q put -r tree/big many/
rm -r tree
# create DIR N PREFIX: N small files PREFIX1, PREFIX2, ... in DIR, each its own `printf > file`.
create() {
    # shellcheck disable=SC2016 # expanded by the inner shell
    sh -c 'i=1; while [ "$i" -le "$1" ]; do printf "file %d\n" "$i" > "$0/$2$i"; i=$((i + 1)); done' "$@"
}
# create_job NAME DIR PREFIX: mounts, creates the files in DIR (made first, outside the
# timing, which also opens its channel), times until the last close and until stored.
create_job() {
    local name=$1 dir=$2 prefix=$3 start
    /usr/bin/time -f %M -o time.out "$bin" mount -f "$mnt" 2> "dc.$name.log" &
    pid=$!
    for _ in $(seq 1200); do # 30 s
        mountpoint -q "$mnt" && break
        kill -0 "$pid" 2> /dev/null || break
        sleep 0.025
    done
    mountpoint -q "$mnt" || { echo "the mount did not come up; its log:" >&2; cat "dc.$name.log" >&2; exit 1; }
    mkdir -p "$mnt/$dir"
    start=$(date +%s.%N)
    timed "${name}_close" create "$mnt/$dir" "$create_n" "$prefix"
    "$bin" umount "$mnt"
    wait "$pid" || true
    pid=
    awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.4f\n", e - s }' >> "${name}_stored.times"
    cat time.out >> "$name.rss"
}
for run in $(seq "$runs"); do
    if [ $((run % 2)) = 1 ]; then
        create_job empty "few/e$run" f
        create_job big many/big "r${run}_"
    else
        create_job big many/big "r${run}_"
        create_job empty "few/e$run" f
    fi
done
note="median of $runs; the folder of $big_n stored by put -r in $(median populate.times) s"
for until in close stored; do
    big=$(median "big_$until.times")
    empty=$(median "empty_$until.times")
    what="until the last close returns"
    [ "$until" = stored ] && what="until stored (umount returns)"
    row local "create $create_n small files in a folder of $big_n, $what" "$big" s \
        "the same into an empty folder" "$empty" "$(ratio_time "$empty" "$big")" \
        "$(peak_rss_mib big.rss)" "$note; aim: ratio >= 0.83 (at most 1.2x the time)"
done
