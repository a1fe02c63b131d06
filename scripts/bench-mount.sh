#!/usr/bin/env bash
# Throughput through `dcloud-fs mount` on the local store, beside the same jobs on the
# local disk, measured in the same run; and the daemon's peak memory.
#
#   scripts/bench-mount.sh [SIZE_MIB] [RUNS] [SMALL_FILES]   (defaults: 1024, 3, 10000)
#
# Jobs (each the median of RUNS runs):
# - cp in: `cp` of a SIZE_MIB random file into the mount, until close returns (the
#   upload is done then); baseline: `cp` + sync of the same file on the local disk.
# - cold read: `cat` of the file through a fresh mount (nothing cached); warm read: the
#   same again (chunk cache and page cache); baseline: `cat` of the file on the disk
#   after dropping the page cache (cold) and again (warm).
# - ls -l of a folder of SMALL_FILES small files (put there with `dcloud-fs put -r`
#   first), through a fresh mount; baseline: `ls -l` of the same folder on the disk.
# - patch: `dd` of 4 KiB into the middle of the file (conv=notrunc), until close
#   returns: the file is fetched into the spool, then only the changed chunk is
#   uploaded; baseline: the same `dd` + sync on the disk.
# Needs root (to drop the page cache and to mount) and fusermount3.
set -euo pipefail
cd "$(dirname "$0")/.."

size_mib=${1:-1024}
runs=${2:-3}
small=${3:-10000}
cache_mib=256
cargo build --release --locked --quiet
bin=$PWD/target/release/dcloud-fs

work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/dcloud-bench.XXXXXX")
mnt=$work/mnt
pid=
cleanup() {
    if mountpoint -q "$mnt" 2> /dev/null; then fusermount3 -u "$mnt" || umount -l "$mnt" || true; fi
    [ -n "$pid" ] && kill "$pid" 2> /dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
export HOME=$work/home DCLOUD_LOCAL=$work/store
unset DCLOUD_KEY DCLOUD_PASSPHRASE DCLOUD_KEY_FILE DCLOUD_TOKEN DCLOUD_CONFIG
unset XDG_CONFIG_HOME XDG_CACHE_HOME XDG_DATA_HOME
cd "$work"
mkdir -p "$mnt" disk
"$bin" keygen > /dev/null 2>&1
"$bin" mkdir bench
head -c "${size_mib}M" /dev/urandom > src.bin
mkdir small
for i in $(seq "$small"); do printf 'file %d\n' "$i" > "small/f$i.txt"; done
"$bin" -q put -r small bench/

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }

# The daemon runs in the foreground under /usr/bin/time, which writes its peak RSS.
mount_fs() {
    /usr/bin/time -f "%M" -o "rss.$1" "$bin" mount -f --cache-size "$cache_mib" "$mnt" 2> "mount.$1.log" &
    pid=$!
    for _ in $(seq 200); do mountpoint -q "$mnt" && return; sleep 0.05; done
    echo "the mount did not come up; its log:" >&2
    cat "mount.$1.log" >&2
    exit 1
}
unmount_fs() {
    fusermount3 -u "$mnt"
    wait "$pid" || true
    pid=
}

timed() { # NAME COMMAND...: appends seconds to NAME.times
    local name=$1 start end
    shift
    start=$(date +%s.%N)
    "$@"
    end=$(date +%s.%N)
    awk -v s="$start" -v e="$end" 'BEGIN { print e - s }' >> "$name.times"
}

for run in $(seq "$runs"); do
    timed disk_cp sh -c "cp src.bin disk/copy.bin && sync disk/copy.bin"
    drop_caches
    timed disk_cold sh -c "cat disk/copy.bin > /dev/null"
    timed disk_warm sh -c "cat disk/copy.bin > /dev/null"
    timed disk_ls sh -c "ls -l small > /dev/null"
    timed disk_patch sh -c "dd if=/dev/urandom of=disk/copy.bin bs=4k count=1 seek=$((size_mib * 128)) conv=notrunc status=none && sync disk/copy.bin"
    rm disk/copy.bin

    mount_fs "$run"
    timed mnt_cp cp src.bin "$mnt/bench/f$run.bin"
    unmount_fs
    drop_caches
    mount_fs "$run.read"
    timed mnt_cold sh -c "cat '$mnt/bench/f$run.bin' > /dev/null"
    timed mnt_warm sh -c "cat '$mnt/bench/f$run.bin' > /dev/null"
    cmp -s src.bin "$mnt/bench/f$run.bin" || { echo "read back different bytes" >&2; exit 1; }
    timed mnt_ls sh -c "ls -l '$mnt/bench/small' > /dev/null"
    timed mnt_patch dd if=/dev/urandom of="$mnt/bench/f$run.bin" bs=4k count=1 seek=$((size_mib * 128)) conv=notrunc status=none
    unmount_fs
    "$bin" -q rm "bench/f$run.bin"
done

median() { sort -n "$1" | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
rss_mib() { cat rss.* | sort -n | tail -1 | awk '{printf "%.0f", $1 / 1024}'; }

echo
echo "dcloud-fs mount on the local store: ${size_mib} MiB random file, a folder of ${small} small files,"
echo "median of $runs runs ($(date -u +%Y-%m-%d), $(nproc) cores), chunk cache ${cache_mib} MiB"
echo
echo "| job | mount s | disk s | mount MB/s | disk MB/s | mount / disk |"
echo "|---|---:|---:|---:|---:|---:|"
row() { # label mount-times disk-times bytes-in-MiB (0: no MB/s)
    awk -v label="$1" -v m="$(median "$2")" -v d="$(median "$3")" -v mib="$4" 'BEGIN {
        mr = (mib > 0 && m > 0) ? sprintf("%.0f", mib * 1.048576 / m) : "-"
        dr = (mib > 0 && d > 0) ? sprintf("%.0f", mib * 1.048576 / d) : "-"
        printf "| %s | %.2f | %.2f | %s | %s | %.2f |\n", label, m, d, mr, dr, (m > 0 ? d / m : 0)
    }'
}
row "cp in (until close returns)" mnt_cp.times disk_cp.times "$size_mib"
row "sequential read, cold" mnt_cold.times disk_cold.times "$size_mib"
row "sequential read, warm" mnt_warm.times disk_warm.times "$size_mib"
row "ls -l of ${small} files" mnt_ls.times disk_ls.times 0
row "patch 4 KiB in the middle (until close returns)" mnt_patch.times disk_patch.times 0
echo
echo "peak RSS of the daemon: $(rss_mib) MiB (chunk cache ${cache_mib} MiB)"
