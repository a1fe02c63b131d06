#!/usr/bin/env bash
# Section `mount` of scripts/bench.sh: the same jobs through `dcloud-fs mount` on the
# local store, through `rclone mount` of an rclone crypt remote over a local folder, and
# on the plain disk, in the same run; and the peak RSS of both daemons.
#
#   BENCH_ROWS=rows.tsv scripts/bench-mount-rows.sh quick|full
#
#           file     ls -l of   created   runs  fio
#   quick   64 MiB   500 files  200 files  3     1 s
#   full    1 GiB    10000      1000       3     5 s
#
# Every job gives two rows with the dcloud-fs figure as the value: one with the disk as
# the baseline (what the hardware does), one with rclone (what another encrypting FUSE
# filesystem does with the same disk); ratio > 1 means dcloud-fs is faster. The figure
# is the median of the runs; the row's peak RSS is the dcloud-fs daemon's, over the
# mounts that ran that job. Jobs:
# - cp in: `cp` of the random file into the mount, timed twice: until close returns,
#   and until the file is stored. dcloud-fs (write-back, its default 2 s) returns from
#   close once the file is in its spool; it is stored when `dcloud-fs umount`, which
#   waits for the uploads, returns. Disk: `cp`, and `cp` + `sync`. rclone
#   (`--vfs-cache-mode writes --vfs-write-back 0s`) returns from close once the file is
#   in its cache; it is stored when its log says the upload is done (`Copied`).
# - sequential read, cold: `cat` through a fresh mount after dropping the page cache;
#   warm: the same again through the same mount. Disk: `cat` after dropping the page
#   cache, and again.
# - random 4 KiB reads: fio, psync, buffered, time-based, on a fresh mount after
#   dropping the page cache; in IOPS.
# - ls -l of a folder of small files put there before (`dcloud-fs put -r`, `rclone
#   copy`), through a fresh mount. Disk: `ls -l` of the same folder (dentries cached).
# - creating small files, one `printf > file` each, until the last close returns and
#   until stored, as for cp (disk: no fsync, and `sync -f`).
# - patch: `dd` of 4 KiB into the middle of the file (conv=notrunc), until close
#   returns and until stored, as for cp (disk: `dd`, and `dd` + `sync`).
# - peak RSS of the daemon over all its mounts, beside rclone's; the note gives the
#   caches they ran with (dcloud-fs: its default 64 MiB block cache in memory; rclone: its VFS
#   cache on disk and --buffer-size 16 MiB per open file).
# Needs root (to mount and to drop the page cache) and fusermount3; without rclone or
# fio their rows say they were skipped. BENCH_DIR picks the disk (default /var/tmp).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh

case ${1:-quick} in
    quick) size_mib=64 ls_n=500 create_n=200 runs=3 fio_secs=1 ;;
    full) size_mib=1024 ls_n=10000 create_n=1000 runs=3 fio_secs=5 ;;
    *) echo "usage: $0 quick|full" >&2; exit 2 ;;
esac
cache_mib=64 # the default
[ -n "${BENCH_ROWS:-}" ] || { echo "$0: set BENCH_ROWS to the rows file (see scripts/bench-lib.sh)" >&2; exit 2; }
if [ "$(id -u)" != 0 ]; then
    echo "$0: not root: skipping the mount jobs (they mount and drop the page cache)" >&2
    row mount "mount jobs" "" "" "" "" "" "" "skipped: needs root (to mount and to drop the page cache)"
    exit 0
fi
if ! command -v fusermount3 > /dev/null; then
    echo "$0: fusermount3 is missing (Debian: fuse3): skipping the mount jobs" >&2
    row mount "mount jobs" "" "" "" "" "" "" "skipped: fusermount3 is missing (Debian package fuse3)"
    exit 0
fi
have_rclone=1 have_fio=1
command -v rclone > /dev/null || have_rclone=
command -v fio > /dev/null || have_fio=
[ "${BENCH_BUILT:-}" = 1 ] || cargo build --release --locked --quiet -p dcloud-fs
bin=$PWD/target/release/dcloud-fs

work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/dcloud-bench.XXXXXX")
mnt=$work/mnt rmnt=$work/rmnt
pid='' rpid=''
cleanup() {
    local m
    for m in "$mnt" "$rmnt"; do
        if mountpoint -q "$m" 2> /dev/null; then
            fusermount3 -u "$m" 2> /dev/null || umount -l "$m" || true
        fi
    done
    # The daemons run under /usr/bin/time, which a signal ends without its child.
    for m in $pid $rpid; do
        # shellcheck disable=SC2046 # a list of ids
        kill $(pgrep -P "$m") "$m" 2> /dev/null || true
    done
    wait 2> /dev/null || true
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
export HOME=$work/home DCLOUD_LOCAL=$work/store
unset DCLOUD_KEY DCLOUD_PASSPHRASE DCLOUD_KEY_FILE DCLOUD_TOKEN DCLOUD_CONFIG DCLOUD_CACHE_SIZE_MIB
unset XDG_CONFIG_HOME XDG_CACHE_HOME XDG_DATA_HOME
cd "$work"
mkdir -p "$mnt" "$rmnt" disk/small rclone-back

now() { date +%s.%N; }
# since START NAME: appends the seconds since START to NAME.times.
since() { awk -v s="$1" -v e="$(now)" 'BEGIN { printf "%.4f\n", e - s }' >> "$2.times"; }
# progress WHAT: says how long WHAT took since the last progress.
step=$(now)
progress() {
    awk -v w="$1" -v s="$step" -v e="$(now)" 'BEGIN { printf "  %s: %.1f s\n", w, e - s }'
    step=$(now)
}

# wait_mounted DIR PID LOG: waits for the daemon PID to mount DIR; fails with its log.
wait_mounted() {
    for _ in $(seq 1200); do # 30 s
        mountpoint -q "$1" && return 0
        kill -0 "$2" 2> /dev/null || break
        sleep 0.025
    done
    echo "the mount on $1 did not come up; its log:" >&2
    cat "$3"* >&2 || true
    exit 1
}

# mount_dc NAME: mounts dcloud-fs on $mnt, its peak RSS going to rss.dc.NAME.
mount_dc() {
    /usr/bin/time -f %M -o "rss.dc.$1" "$bin" mount -f --cache-size "$cache_mib" "$mnt" 2> "dc.$1.log" &
    pid=$!
    wait_mounted "$mnt" "$pid" "dc.$1.log"
}
unmount_dc() {
    fusermount3 -u "$mnt"
    wait "$pid" || true
    pid=
}
# stored_dc: unmounts with `dcloud-fs umount`, which returns once every file closed
# before is uploaded.
stored_dc() {
    "$bin" umount "$mnt"
    wait "$pid" || true
    pid=
}

# mount_rc NAME: mounts the crypt remote on $rmnt with an empty VFS cache, logging to
# rc.NAME.log (the uploads show there), its peak RSS going to rss.rc.NAME.
rlog=
mount_rc() {
    rm -rf rclone-cache
    rlog=$work/rc.$1.log
    /usr/bin/time -f %M -o "rss.rc.$1" rclone --config "$work/rclone.conf" mount secret: "$rmnt" \
        --vfs-cache-mode writes --vfs-write-back 0s --cache-dir "$work/rclone-cache" \
        -v --log-file "$rlog" 2> "$rlog.err" &
    rpid=$!
    wait_mounted "$rmnt" "$rpid" "$rlog"
}
unmount_rc() {
    fusermount3 -u "$rmnt"
    wait "$rpid" || true
    rpid=
}
# uploaded PATTERN COUNT: waits until the rclone log has COUNT lines saying a file
# matching PATTERN (an extended regex on its path) was uploaded.
uploaded() {
    local deadline n
    deadline=$(($(date +%s) + 900))
    while :; do
        n=$(grep -cE "INFO  : $1: Copied" "$rlog" || true)
        [ "$n" -ge "$2" ] && return 0
        if [ "$(date +%s)" -gt "$deadline" ]; then
            echo "rclone did not upload $2 files matching $1 in time; its log:" >&2
            tail -20 "$rlog" >&2
            exit 1
        fi
        sleep 0.02
    done
}

# create DIR N: N small files in DIR, each its own `printf > file`.
create() {
    # shellcheck disable=SC2016 # expanded by the inner shell
    sh -c 'i=1; while [ "$i" -le "$1" ]; do printf "file %d\n" "$i" > "$0/f$i"; i=$((i + 1)); done' "$1" "$2"
}

# fio_iops NAME FILE: random 4 KiB reads of FILE for $fio_secs s; appends the IOPS to
# NAME.times.
fio_iops() {
    fio --name=randread --filename="$2" --readonly --rw=randread --bs=4k --size="${size_mib}M" \
        --ioengine=psync --direct=0 --time_based --runtime="$fio_secs" \
        --output-format=terse --terse-version=3 > fio.out 2> fio.err || {
        echo "fio failed on $2:" >&2
        cat fio.err fio.out >&2
        exit 1
    }
    # Terse version 3: field 1 is the version, field 8 the read IOPS.
    awk -F';' '$1 == 3 { printf "%.0f\n", $8; found = 1 } END { exit !found }' fio.out >> "$1.times" || {
        echo "no IOPS in fio's output:" >&2
        cat fio.out >&2
        exit 1
    }
}

# The source file, the folder of small files, each filled in on the three targets.
head -c "${size_mib}M" /dev/urandom > src.bin
create disk/small "$ls_n"
"$bin" keygen > /dev/null 2>&1
"$bin" mkdir bench
"$bin" -q put -r disk/small bench/
if [ -n "$have_rclone" ]; then
    {
        echo "[secret]"
        echo "type = crypt"
        echo "remote = $work/rclone-back"
        echo "password = $(rclone obscure "bench-$RANDOM-$RANDOM")"
        echo "password2 = $(rclone obscure "salt-$RANDOM-$RANDOM")"
    } > rclone.conf
    rclone --config rclone.conf copy disk/small secret:small
fi
progress "setup (a ${size_mib} MiB file, $ls_n small files in each target)"

middle=$((size_mib * 128)) # in 4 KiB blocks
for run in $(seq "$runs"); do
    # The disk.
    start=$(now)
    timed disk_cpclose cp src.bin disk/r.bin
    sync disk/r.bin
    since "$start" disk_cpstored
    drop_caches
    timed disk_cold sh -c "cat disk/r.bin > /dev/null"
    timed disk_warm sh -c "cat disk/r.bin > /dev/null"
    if [ -n "$have_fio" ]; then drop_caches; fio_iops disk_fio disk/r.bin; fi
    timed disk_ls sh -c "ls -l disk/small > /dev/null"
    mkdir "disk/c$run"
    start=$(now)
    timed disk_createclose create "disk/c$run" "$create_n"
    sync -f "disk/c$run"
    since "$start" disk_createstored
    start=$(now)
    timed disk_patchclose dd if=/dev/urandom of=disk/r.bin bs=4k count=1 seek="$middle" conv=notrunc status=none
    sync disk/r.bin
    since "$start" disk_patchstored
    rm -r disk/r.bin "disk/c$run"
    progress "run $run of $runs, disk"

    # dcloud-fs on the local store.
    f=$mnt/bench/r$run.bin
    mount_dc "cp.$run"
    start=$(now)
    timed dc_cpclose cp src.bin "$f"
    stored_dc
    since "$start" dc_cpstored
    drop_caches
    mount_dc "read.$run"
    timed dc_cold sh -c "cat '$f' > /dev/null"
    timed dc_warm sh -c "cat '$f' > /dev/null"
    cmp -s src.bin "$f" || { echo "dcloud-fs read back different bytes" >&2; exit 1; }
    unmount_dc
    if [ -n "$have_fio" ]; then
        drop_caches
        mount_dc "fio.$run"
        fio_iops dc_fio "$f"
        unmount_dc
    fi
    mount_dc "meta.$run"
    timed dc_ls sh -c "ls -l '$mnt/bench/small' > /dev/null"
    mkdir "$mnt/bench/c$run"
    start=$(now)
    timed dc_createclose create "$mnt/bench/c$run" "$create_n"
    stored_dc
    since "$start" dc_createstored
    mount_dc "patch.$run"
    start=$(now)
    timed dc_patchclose dd if=/dev/urandom of="$f" bs=4k count=1 seek="$middle" conv=notrunc status=none
    stored_dc
    since "$start" dc_patchstored
    mount_dc "clean.$run"
    rm -r "$f" "$mnt/bench/c$run"
    unmount_dc
    progress "run $run of $runs, dcloud-fs"

    # rclone crypt over a local folder.
    [ -n "$have_rclone" ] || continue
    f=$rmnt/r$run.bin
    mount_rc "cp.$run"
    start=$(now)
    timed rc_cpclose cp src.bin "$f"
    uploaded "r$run\.bin" 1
    since "$start" rc_cpstored
    unmount_rc
    drop_caches
    mount_rc "read.$run"
    timed rc_cold sh -c "cat '$f' > /dev/null"
    timed rc_warm sh -c "cat '$f' > /dev/null"
    unmount_rc
    if [ -n "$have_fio" ]; then
        drop_caches
        mount_rc "fio.$run"
        fio_iops rc_fio "$f"
        unmount_rc
    fi
    mount_rc "meta.$run"
    timed rc_ls sh -c "ls -l '$rmnt/small' > /dev/null"
    mkdir "$rmnt/c$run"
    start=$(now)
    timed rc_createclose create "$rmnt/c$run" "$create_n"
    uploaded "c$run/f[0-9]+" "$create_n"
    since "$start" rc_createstored
    start=$(now)
    timed rc_patchclose dd if=/dev/urandom of="$f" bs=4k count=1 seek="$middle" conv=notrunc status=none
    uploaded "r$run\.bin" 1
    since "$start" rc_patchstored
    rm -r "$f" "$rmnt/c$run"
    unmount_rc
    progress "run $run of $runs, rclone"
done

# The rows. fig NAME KIND: the median of NAME's runs as the row shows it (KIND: rate:
# MB/s from seconds, s: seconds, n: as measured); empty if NAME wasn't measured.
fig() {
    [ -s "$1.times" ] || return 0
    case $2 in
        rate) rate "$size_mib" "$(median "$1.times")" ;;
        s) awk -v s="$(median "$1.times")" 'BEGIN { printf "%.3f", s }' ;;
        n) median "$1.times" ;;
    esac
}
# better KIND VALUE BASELINE: how many times better VALUE is than BASELINE (for seconds,
# baseline / value; else value / baseline), with two significant digits below 0.1.
better() {
    awk -v k="$1" -v v="$2" -v b="$3" 'BEGIN {
        r = (k == "s") ? (v > 0 ? b / v : -1) : (b > 0 ? v / b : -1)
        if (r < 0) print "nan"; else if (r < 0.1) printf "%.2g", r; else printf "%.2f", r
    }'
}
# pair JOB NAME KIND UNIT RSS DISK_LABEL NOTE RC_LABEL RC_NOTE: the two rows of a job,
# dc_NAME beside disk_NAME, then beside rc_NAME. RSS names the dcloud-fs mounts whose
# peak RSS the rows show.
pair() {
    local job=$1 name=$2 kind=$3 unit=$4 rss dc disk rc
    rss=$(peak_rss_mib rss.dc."$5".* || true) # none if the job was skipped
    dc=$(fig "dc_$name" "$kind")
    disk=$(fig "disk_$name" "$kind")
    if [ -z "$dc" ]; then
        row mount "$job" "" "$unit" "" "" "" "" "skipped: fio is not installed"
        return
    fi
    row mount "$job" "$dc" "$unit" "$6" "$disk" "$(better "$kind" "$dc" "$disk")" "$rss" "$7"
    if [ -z "$have_rclone" ]; then
        row mount "$job" "$dc" "$unit" "$8" "" "" "$rss" "skipped: rclone is not installed"
        return
    fi
    rc=$(fig "rc_$name" "$kind")
    row mount "$job" "$dc" "$unit" "$8" "$rc" "$(better "$kind" "$dc" "$rc")" "$rss" "$9"
}
file="${size_mib} MiB random file"
stored_note="dcloud-fs: until \`dcloud-fs umount\` returns, which waits for the uploads"
pair "cp in, until close returns" cpclose rate MB/s cp \
    "disk: cp" "$file; dcloud-fs: write-back, in the spool" \
    "rclone: until close returns" "in its VFS cache"
pair "cp in, until stored" cpstored rate MB/s cp \
    "disk: cp + sync" "$file; $stored_note" \
    "rclone: until uploaded" "until its log says Copied"
pair "sequential read, cold" cold rate MB/s read \
    "disk: cat" "$file; fresh mount, page cache dropped" \
    rclone "fresh mount and VFS cache, page cache dropped"
pair "sequential read, warm" warm rate MB/s read \
    "disk: cat" "$file; the same mount again" \
    rclone "the same mount again"
pair "random 4 KiB reads (fio)" fio n IOPS fio \
    disk "fio psync, buffered, ${fio_secs} s over the $file; fresh mount, page cache dropped" \
    rclone "fresh mount, page cache dropped"
pair "ls -l of $ls_n small files" ls s s meta \
    "disk" "fresh mount; disk: dentries cached" \
    rclone "fresh mount"
pair "create $create_n small files, until the last close returns" createclose s s meta \
    "disk: no fsync" "one printf > file each" \
    "rclone: until close returns" ""
pair "create $create_n small files, until stored" createstored s s meta \
    "disk: sync -f" "$stored_note" \
    "rclone: until uploaded" ""
pair "patch 4 KiB in the middle, until close returns" patchclose s s patch \
    "disk: dd" "dd conv=notrunc into the $file" \
    "rclone: until close returns" ""
pair "patch 4 KiB in the middle, until stored" patchstored s s patch \
    "disk: dd + sync" "$stored_note" \
    "rclone: until uploaded" ""

dc_rss=$(peak_rss_mib rss.dc.*)
rss_note="dcloud-fs: block cache ${cache_mib} MiB (in memory, the default)"
if [ -n "$have_rclone" ]; then
    rc_rss=$(peak_rss_mib rss.rc.*)
    row mount "peak RSS of the daemon" "$dc_rss" MiB rclone "$rc_rss" "$(better s "$dc_rss" "$rc_rss")" \
        "$dc_rss" "$rss_note; rclone: --vfs-cache-mode writes (its cache on disk), --buffer-size 16 MiB; ratio: rclone / dcloud-fs"
else
    row mount "peak RSS of the daemon" "$dc_rss" MiB "" "" "" "$dc_rss" "$rss_note"
fi
