#!/usr/bin/env bash
# The Discord-store benchmarks, as rows (section `discord`) appended to $BENCH_ROWS in
# the format of scripts/bench-lib.sh, against the fake Discord server with Discord's
# limits and rate limits and LATENCY_MS (50) added to every API and CDN request.
#
#   BENCH_ROWS=rows.tsv scripts/bench-discord-rows.sh quick|full
#
#                      quick     full
#   upload file        128 MiB   256 MiB
#   runs (medians)     1         3        (the cold listing runs once)
#   files in channel   1000      10000
#   20 MiB files       20        100      (the reads jobs)
#   tree of small      1000      10000    (the cp -r job)
#
# Jobs:
# - put: `dcloud-fs put` of a random file into an empty channel. Baseline: the
#   rate-limit ceiling for that file. Discord lets a bot post 5 messages per channel
#   every 5 s; a file of M messages (24 MiB each) can't take less than
#   5 s * floor((M - 1) / 5), so the ceiling is the file's size over that time and the
#   ratio is the share of it dcloud-fs reached. The note gives the 429s the server sent
#   during the put (its /_fake/stats). A file of 5 messages or fewer fits in the first
#   window's burst and has no ceiling, which is why even the quick file is 6 messages.
# - get: `dcloud-fs get` of that file, with the disk cache of fetched blocks emptied
#   before each run (`get` reads it but doesn't fill it: the file it writes is the
#   local copy; the index cache `put` left is kept), so every run is a cold download.
#   Baselines: the same chunk attachments fetched from the fake CDN directly with curl,
#   four at a time (what `get` does), into /dev/null, and into files (as `get` writes
#   what it downloads), so the ratio is what dcloud-fs's own work costs (URLs,
#   decryption, writing the file). The note gives the bytes the CDN served to `get`.
# - cp -r of a tree of small files into the mount: N files of 1 to 16 KiB (random
#   sizes and bytes) in 110 folders (10 folders of 10; the folders' records go up with
#   the files, in the same messages) copied into a channel through
#   `dcloud-fs mount` (its default write-back), timed from the start of `cp -r` until
#   `dcloud-fs umount` returns, which waits for every upload, and also until `cp`
#   returns. Baselines: the same `cp -r` onto the local disk, with `sync`; and the time
#   one message a file would take at Discord's pace (N s: 5 messages per 5 s, less the
#   first burst), which is what uploading each file closed cost before packing. The
#   note gives the messages posted and the 429s (/_fake/stats). The files are then
#   counted, with their sizes, through a second mount, and 50 of them compared.
# - first 64 KiB of each file: a channel of N random 20 MiB files (filled with the
#   server's limits and latency off, see below). `dcloud-fs mount` with an empty cache
#   folder, `ls` of the channel (which reads the history; not counted), then one
#   64 KiB read() of each file (`dd bs=64k count=1`) in turn, in one shell loop, then
#   unmount. The figure
#   is the bytes the fake CDN served during the loop (the difference of
#   `bytes_downloaded` in /_fake/stats), in MB (10^6 bytes). Baseline: the bytes read,
#   N * 65536. Here the ratio is downloaded / read, lower better; the target is at
#   most 2. The kernel reads ahead on its own: the one 64 KiB read() asks the mount
#   for 128 KiB (the read, and 64 KiB of read-ahead), i.e. 2 segments; `head -c 65536`,
#   which reads 8 KiB at a time, makes the kernel's read-ahead ramp up (16, 32, 64,
#   128 KiB requests, seen on Linux 6.18) and ask for the first 240 KiB, 4 segments.
#   The note gives the loop's wall time and the bytes per file.
# - second read after a remount: in that channel, with a fresh cache folder, a first
#   mount reads 5 of the files whole (sha256sum, checked), then unmounts; a second
#   mount with the same cache folder (the disk cache persists) reads them again. The
#   figure is the MB downloaded during the second reads (target 0). Baseline: the MB
#   downloaded during the first reads; the ratio is second / first, lower better.
# - get after a remount: then, `dcloud-fs get` of the first of those files with that
#   cache folder: the MB downloaded (target 0). Baseline: the MB the first mount
#   downloaded reading that file; the ratio is get / first, lower better.
# - mount + ls -l, cold: a channel of N tiny files (packed, up to 2,000 to a message,
#   as `put -r` packs them): the time from starting `dcloud-fs mount` to `ls -l` of the channel having
#   listed them all, with an empty cache folder, so the whole history is read. The
#   channel is filled with the server's limits and latency off (see below), which are
#   back on for the measurement.
# - mount + ls -l, warm: the same, with the index cache the cold run left. Baseline:
#   the cold run.
# Peak RSS is that of the `put` or `get` process, or of the mount daemon (run in the
# foreground under /usr/bin/time). The listing jobs' daemon runs with a 256 MiB block
# cache, the reads jobs' with the defaults (64 MiB of memory, 4096 MiB of disk).
#
# Needs root (to mount), fusermount3, curl, python3 and sha256sum. The binaries are
# taken from $CARGO_TARGET_DIR/release (default target/release); they are built
# (release) if missing.
set -euo pipefail

mode=${1:-}
case $mode in
    quick) size_mib=128 runs=1 small=1000 reads_files=20 ;;
    full) size_mib=256 runs=3 small=10000 reads_files=100 ;;
    *)
        echo "usage: BENCH_ROWS=FILE $0 quick|full" >&2
        exit 2
        ;;
esac
# shellcheck source=scripts/bench-lib.sh
. "$(dirname "$0")/bench-lib.sh"
bench_begin
latency_ms=${LATENCY_MS:-50}
cache_mib=64 # the default
reads_mib=20  # size of the reads jobs' files
reads_again=5 # files the remount job reads
section=discord

bench_binaries
section_start=$(date +%s.%N)

bench_work
fake_start "$latency_ms"

# downloaded: the bytes the fake CDN has served.
downloaded() { fake_stat bytes_downloaded; }
# chunk_urls CHANNEL COUNT: writes the URLs of the chunk attachments of the newest COUNT
# messages of CHANNEL to urls.txt.
chunk_urls() {
    local channel
    channel=$("$bin" info "$1" | awk '/^channel id/ {print $3}')
    curl -sf -H "Authorization: Bot $DCLOUD_TOKEN" \
        "$DCLOUD_API/api/v10/channels/$channel/messages?limit=$2" |
        python3 -c 'import json, re, sys
with open("urls.txt", "w") as urls:
    for m in json.load(sys.stdin):
        for a in m["attachments"]:
            if re.fullmatch(r"c[0-9]+\.bin", a["filename"]):
                print(a["url"], file=urls)'
}

"$bin" keygen > /dev/null 2>&1
"$bin" -q mkdir big
"$bin" -q mkdir small
"$bin" -q mkdir reads

# --- fill the channel of small files -------------------------------------------------
# All but the last 45 files go in with the limits off and no latency (and the limits set
# so high that the rate-limit headers don't make the client wait either), which is
# quicker; the last 45 go in 5 s later, with the limits back on. That matters for the
# warm listing: opening a channel with its index cache reads again the messages of the
# 5 s before the newest one, which are then that last message, not the whole channel.
tail_files=45
mkdir head tail
for i in $(seq "$small"); do
    if [ "$i" -le $((small - tail_files)) ]; then dir="head"; else dir="tail"; fi
    printf 'file %d\n' "$i" > "$dir/f$i.txt"
done
fast
(cd head && "$bin" -q --no-cache put ./* small/)
filled=$(date +%s.%N)
rm -r head
# The reads jobs' channel, at the same time: N random files of 20 MiB. What the jobs
# read is kept to check them: each file's first 64 KiB, and the checksums of the files
# the remount job reads whole.
mkdir reads-src heads.want
for i in $(seq "$reads_files"); do
    head -c "${reads_mib}M" /dev/urandom > "reads-src/f$i.bin"
    head -c 65536 "reads-src/f$i.bin" > "heads.want/f$i.bin"
done
again=()
for i in $(seq "$reads_again"); do again+=("f$i.bin"); done
(cd reads-src && sha256sum "${again[@]}") > again.sha256
(cd reads-src && "$bin" -q --no-cache put ./* reads/)
rm -r reads-src
discord

# --- put and get of one file ---------------------------------------------------------
head -c "${size_mib}M" /dev/urandom > src.bin
for run in $(seq "$runs"); do
    [ "$run" = 1 ] || sleep 5 # let the channel's bucket refill, so every run starts alike
    before_429=$(fake_stat rate_limited)
    before_messages=$(fake_stat messages_created)
    timed put /usr/bin/time -f %M -o "rss.put.$run" "$bin" -q put src.bin "big/f$run"
    echo $(($(fake_stat rate_limited) - before_429)) >> put.429
    messages=$(($(fake_stat messages_created) - before_messages))
    echo "$messages" >> put.messages
    chunk_urls big "$messages"
    rm -rf "$HOME/.cache/dcloud-fs/blocks" # the disk cache: every get is a cold download
    before_get=$(downloaded)
    timed get /usr/bin/time -f %M -o "rss.get.$run" "$bin" -q get "big/f$run" out.bin
    echo $(($(downloaded) - before_get)) >> get.bytes
    cmp -s src.bin out.bin || { echo "get returned different bytes" >&2; exit 1; }
    rm out.bin
    timed cdn sh -c 'xargs -P 4 -n 1 curl -sf -o /dev/null < urls.txt'
    mkdir curl-out
    awk '{ print "-o curl-out/c" NR, $0 }' urls.txt > url-files.txt
    timed cdn_files sh -c 'xargs -P 4 -n 3 curl -sf < url-files.txt'
    rm -r curl-out
done
rm src.bin

messages=$(median put.messages)
ceiling_s=$((5 * ((messages - 1) / 5)))
put_rate=$(rate "$size_mib" "$(median put.times)")
ceiling_rate=$(rate "$size_mib" "$ceiling_s")
get_rate=$(rate "$size_mib" "$(median get.times)")
cdn_rate=$(rate "$size_mib" "$(median cdn.times)")
cdn_files_rate=$(rate "$size_mib" "$(median cdn_files.times)")
row "$section" "put ${size_mib} MiB" "$put_rate" MB/s \
    "rate-limit ceiling (${messages} messages, 5 per 5 s)" "$ceiling_rate" \
    "$(ratio_rate "$put_rate" "$ceiling_rate")" "$(peak_rss_mib rss.put.*)" \
    "429s: $(median put.429); ${latency_ms} ms latency; median of $runs"
row "$section" "get ${size_mib} MiB" "$get_rate" MB/s \
    "curl of the chunks from the CDN, 4 at a time" "$cdn_rate" \
    "$(ratio_rate "$get_rate" "$cdn_rate")" "$(peak_rss_mib rss.get.*)" \
    "empty disk cache each run; $(mb "$(median get.bytes)") MB downloaded; ${latency_ms} ms latency; median of $runs"
row "$section" "get ${size_mib} MiB" "$get_rate" MB/s \
    "curl of the chunks into files, 4 at a time" "$cdn_files_rate" \
    "$(ratio_rate "$get_rate" "$cdn_files_rate")" "$(peak_rss_mib rss.get.*)" \
    "as above; curl writes what it downloads to disk, as get does"

# --- cp -r of a tree of small files into the mount ---------------------------------------
python3 - "$small" <<'PY'
import os, random, sys
n = int(sys.argv[1])
rng = random.Random(13)
for i in range(n):
    folder = f"tree/d{i % 10}/e{i // 10 % 10}"
    os.makedirs(folder, exist_ok=True)
    with open(f"{folder}/f{i}.bin", "wb") as f:
        f.write(os.urandom(rng.randint(1024, 16384)))
PY
tree_bytes=$(find tree -type f -printf '%s\n' | awk '{ b += $1 } END { print b }')
"$bin" -q mkdir tree

for run in $(seq "$runs"); do
    [ "$run" = 1 ] || sleep 5 # the channel's bucket refills, so every run starts alike
    mount_start "tree.$run" "$work/cache.tree.$run"
    before_429=$(fake_stat rate_limited)
    before_messages=$(fake_stat messages_created)
    start=$(date +%s.%N)
    cp -r tree "$mnt/tree/r$run"
    seconds_since "$start" >> treecp.times
    mount_stop "tree.$run"
    seconds_since "$start" >> tree.times
    echo $(($(fake_stat messages_created) - before_messages)) >> tree.messages
    echo $(($(fake_stat rate_limited) - before_429)) >> tree.429
    mount_start "treecheck.$run" "$work/cache.tree.$run"
    got=$(find "$mnt/tree/r$run" -type f -printf '%s\n' | awk '{ n++; b += $1 } END { print n, b }')
    [ "$got" = "$small $tree_bytes" ] || { echo "the mount holds $got (files, bytes), not $small $tree_bytes" >&2; exit 1; }
    (cd tree && find . -type f | shuf -n 50 --random-source=<(yes)) | while read -r f; do
        cmp -s "tree/$f" "$mnt/tree/r$run/$f" || { echo "$f differs after cp -r" >&2; exit 1; }
    done
    mount_stop "treecheck.$run"
    rm -rf "$work/cache.tree.$run"
    timed treedisk sh -c 'cp -r tree tree.copy && sync && rm -rf tree.copy'
done
rm -r tree
tree_s=$(median tree.times)
pace_s=$((small - 5))
row "$section" "cp -r of ${small} small files (110 folders), until umount returns" "$tree_s" s \
    "the disk: cp -r and sync" "$(median treedisk.times)" \
    "$(ratio_time "$(median treedisk.times)" "$tree_s")" "$(peak_rss_mib rss.tree.*)" \
    "1-16 KiB each, $(mb "$tree_bytes") MB; cp returned after $(median treecp.times) s; $(median tree.messages) messages, $(median tree.429) 429s; write-back 2 s (default); ${latency_ms} ms latency; median of $runs"
row "$section" "cp -r of ${small} small files (110 folders), until umount returns" "$tree_s" s \
    "one message a file at Discord's pace (computed)" "$pace_s" \
    "$(ratio_time "$pace_s" "$tree_s")" "$(peak_rss_mib rss.tree.*)" \
    "as above; the target is at most 30 s for 10,000 files"

# --- reads through the mount: the first 64 KiB of each file ----------------------------
# Each run mounts with a cache folder of its own, empty. The `ls` opens the channel
# (reading its history and the files' records) before the count starts.
for run in $(seq "$runs"); do
    mount_start "head64.$run" "$work/cache.head64.$run"
    ls "$mnt/reads" > /dev/null
    before=$(downloaded)
    rm -rf heads && mkdir heads
    # shellcheck disable=SC2016 # the loop's own variables
    timed head64 sh -c 'for f in "$1"/*; do dd if="$f" of="heads/${f##*/}" bs=65536 count=1 status=none; done' sh "$mnt/reads"
    echo $(($(downloaded) - before)) >> head64.bytes
    mount_stop "head64.$run"
    diff -r heads.want heads > /dev/null || { echo "head -c 65536 through the mount returned different bytes" >&2; exit 1; }
done
head_bytes=$(median head64.bytes)
head_read=$((reads_files * 65536))
head_s=$(median head64.times)
row "$section" "first 64 KiB of each file" "$(mb "$head_bytes")" MB \
    "bytes read (${reads_files} x 64 KiB)" "$(mb "$head_read")" \
    "$(awk -v d="$head_bytes" -v r="$head_read" 'BEGIN { printf "%.2f", d / r }')" \
    "$(peak_rss_mib rss.head64.*)" \
    "ratio: downloaded / read, lower better (target <= 2); $((head_bytes / reads_files)) bytes downloaded a file; reads took ${head_s} s ($(awk -v s="$head_s" -v n="$reads_files" 'BEGIN { printf "%.0f", s * 1000 / n }') ms a file); ${reads_files} files of ${reads_mib} MiB; empty cache folder; ${latency_ms} ms latency; median of $runs"

# --- a second read after a remount, and a get, from the disk cache ----------------------
# Each run has a cache folder of its own: a first mount reads the files whole (the first
# one apart, for the get's baseline), a second one with the same folder reads them
# again, then `get` of the first one uses that folder too. The reads check the files'
# checksums.
head -1 again.sha256 > again.first.sha256
tail -n +2 again.sha256 > again.rest.sha256
# read_whole SUMS: reads the files SUMS lists through the mount, checking them.
read_whole() { (cd "$mnt/reads" && sha256sum --quiet -c "$1"); }
for run in $(seq "$runs"); do
    cache=$work/cache.again.$run
    mount_start "first.$run" "$cache"
    ls "$mnt/reads" > /dev/null
    start=$(date +%s.%N)
    before=$(downloaded)
    read_whole "$work/again.first.sha256"
    first_file=$(($(downloaded) - before))
    read_whole "$work/again.rest.sha256"
    echo $(($(downloaded) - before)) >> first.bytes
    seconds_since "$start" >> first.times
    mount_stop "first.$run"
    echo "$first_file" >> first_file.bytes

    mount_start "again.$run" "$cache"
    ls "$mnt/reads" > /dev/null
    before=$(downloaded)
    timed again read_whole "$work/again.sha256"
    echo $(($(downloaded) - before)) >> again.bytes
    mount_stop "again.$run"

    before=$(downloaded)
    timed getcached /usr/bin/time -f %M -o "rss.getcached.$run" \
        "$bin" -q --cache-dir "$cache" get "reads/${again[0]}" "$work/got.bin"
    echo $(($(downloaded) - before)) >> getcached.bytes
    (cd "$work" && sed "s/ ${again[0]}\$/ got.bin/" again.first.sha256 | sha256sum --quiet -c -) ||
        { echo "get returned different bytes" >&2; exit 1; }
    rm "$work/got.bin"
done
first_bytes=$(median first.bytes)
again_bytes=$(median again.bytes)
row "$section" "second read after a remount" "$(mb "$again_bytes")" MB \
    "first read, before the remount" "$(mb "$first_bytes")" \
    "$(ratio_rate "$again_bytes" "$first_bytes")" "$(peak_rss_mib rss.first.* rss.again.*)" \
    "ratio: second / first, lower better (target 0); ${reads_again} files of ${reads_mib} MiB read whole (sha256sum); same cache folder, disk cache 4096 MiB; reads took $(median again.times) s, first reads $(median first.times) s; ${latency_ms} ms latency; median of $runs"
getcached_bytes=$(median getcached.bytes)
first_file_bytes=$(median first_file.bytes)
row "$section" "get after a remount" "$(mb "$getcached_bytes")" MB \
    "first read of that file through the mount" "$(mb "$first_file_bytes")" \
    "$(ratio_rate "$getcached_bytes" "$first_file_bytes")" "$(peak_rss_mib rss.getcached.*)" \
    "ratio: get / first, lower better (target 0); dcloud-fs get of a ${reads_mib} MiB file with the remount's cache folder; took $(median getcached.times) s; ${latency_ms} ms latency; median of $runs"
# --- mount and list the channel of small files ----------------------------------------
sleep "$(awk -v f="$filled" -v now="$(date +%s.%N)" 'BEGIN { w = f + 5.5 - now; print (w > 0 ? w : 0) }')"
(cd tail && "$bin" -q --no-cache put ./* small/)
rm -r tail

# mount_ls NAME CACHE_DIR: times mounting with CACHE_DIR and listing the channel.
mount_ls() {
    local name=$1 cache=$2 start listed
    start=$(date +%s.%N)
    mount_start "$name" "$cache" --cache-size "$cache_mib"
    # shellcheck disable=SC2012 # `ls -l` is the job measured
    listed=$(ls -l "$mnt/small" | wc -l)
    seconds_since "$start" >> "${name%%.*}.times"
    [ "$listed" = $((small + 1)) ] || { echo "ls listed $((listed - 1)) files, not $small" >&2; exit 1; }
    mount_stop "$name"
}
# A cold listing is bound by the latency (it reads every record) and varies little; it
# takes a minute for 10,000 files, so it runs once. Each warm run uses the index cache
# the run before left.
mount_ls cold.1 "$work/cache"
for run in $(seq "$runs"); do mount_ls "warm.$run" "$work/cache"; done
cold=$(median cold.times)
warm=$(median warm.times)
row "$section" "mount + ls -l, cold" "$cold" s "" "" "" "$(peak_rss_mib rss.cold.*)" \
    "$small files; empty cache; block cache ${cache_mib} MiB; 1 run"
row "$section" "mount + ls -l, warm" "$warm" s "cold" "$cold" "$(ratio_time "$cold" "$warm")" \
    "$(peak_rss_mib rss.warm.*)" "$small files; index cache; block cache ${cache_mib} MiB; median of $runs"

echo "discord section ($mode): $(awk -v s="$section_start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.0f", e - s }') s wall time"
