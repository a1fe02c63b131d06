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
# a user has just made. BENCH_DIR picks the disk (default /var/tmp). Expects the release
# build (scripts/bench.sh makes it; run alone, this builds it).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh

case ${1:-quick} in
    quick) size_mib=64 runs=3 ;;
    full) size_mib=1024 runs=3 ;;
    *) echo "usage: $0 quick|full" >&2; exit 2 ;;
esac
[ -n "${BENCH_ROWS:-}" ] || { echo "$0: set BENCH_ROWS to the rows file (see scripts/bench-lib.sh)" >&2; exit 2; }
[ "${BENCH_BUILT:-}" = 1 ] || cargo build --release --locked --quiet -p dcloud-fs
bin=$PWD/target/release/dcloud-fs

work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/dcloud-bench.XXXXXX")
trap 'rm -rf --one-file-system "$work"' EXIT
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
