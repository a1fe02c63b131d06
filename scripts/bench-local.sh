#!/usr/bin/env bash
# Throughput and peak memory of `dcloud-fs put` and `get` on the local store, beside
# `cp` of the same file on the same disk, measured in the same run.
#
#   scripts/bench-local.sh [SIZE_MIB] [RUNS]      (defaults: 1024 MiB, 3 runs)
#
# Every figure is the median of RUNS runs. The source file is in the page cache for all
# of them (it was just written), like a file a user has just made. The local store
# fsyncs every attachment it writes (a stored file must survive a crash), which `cp`
# does not, so `cp + sync` is reported too; and `cp` copies inside the kernel
# (copy_file_range), while dcloud-fs must bring every byte through its own memory to
# seal or open it, so `cat > file` (the same copy through a user buffer) is reported as
# well. BENCH_DIR picks the disk (default /var/tmp).
set -euo pipefail
cd "$(dirname "$0")/.."

size_mib=${1:-1024}
runs=${2:-3}
cargo build --release --locked --quiet
bin=$PWD/target/release/dcloud-fs

work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/dcloud-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
export HOME=$work/home DCLOUD_LOCAL=$work/store
unset DCLOUD_KEY DCLOUD_PASSPHRASE DCLOUD_KEY_FILE XDG_CONFIG_HOME XDG_CACHE_HOME XDG_DATA_HOME
cd "$work"

head -c "${size_mib}M" /dev/urandom > src.bin
"$bin" keygen > /dev/null 2>&1
"$bin" mkdir bench

# timed NAME COMMAND...: appends "seconds max_rss_kib" to NAME.times
timed() {
    local name=$1
    shift
    /usr/bin/time -f "%e %M" -o time.out "$@"
    cat time.out >> "$name.times"
}

for run in $(seq "$runs"); do
    timed cp cp src.bin copy.bin
    rm copy.bin
    timed cp_sync sh -c 'cp src.bin copy.bin && sync copy.bin'
    rm copy.bin
    timed cat sh -c 'cat src.bin > copy.bin'
    rm copy.bin
    timed put "$bin" -q put src.bin "bench/f$run"
    timed get "$bin" -q get "bench/f$run" out.bin
    cmp -s src.bin out.bin || { echo "get returned different bytes" >&2; exit 1; }
    rm out.bin
    "$bin" -q rm "bench/f$run"
done

# median of column $1 of a file
median() {
    sort -n -k"$1","$1" "$2" | awk -v c="$1" '{v[NR]=$c} END {m=int((NR+1)/2); print v[m]}'
}

cp_s=$(median 1 cp.times)
echo
echo "dcloud-fs on the local store, ${size_mib} MiB random file, median of $runs runs ($(date -u +%Y-%m-%d), $(nproc) cores)"
echo
echo "| job | median s | MB/s | vs cp | peak RSS MiB |"
echo "|---|---:|---:|---:|---:|"
for job in cp cp_sync cat put get; do
    s=$(median 1 "$job.times")
    rss=$(median 2 "$job.times")
    awk -v job="$job" -v s="$s" -v rss="$rss" -v mib="$size_mib" -v base="$cp_s" 'BEGIN {
        label = job; if (job == "cp_sync") label = "cp + sync"
        if (job == "cat") label = "cat > file"
        if (job == "put") label = "dcloud-fs put"
        if (job == "get") label = "dcloud-fs get"
        mbps = (s > 0) ? mib * 1.048576 / s : 0
        printf "| %s | %.2f | %.0f | %.2f | %.1f |\n", label, s, mbps, (s > 0 ? base / s : 0), rss / 1024
    }'
done
