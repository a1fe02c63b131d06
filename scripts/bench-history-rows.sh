#!/usr/bin/env bash
# The benchmark of a big channel's history (issue 14), as rows (section `history`)
# appended to $BENCH_ROWS in the format of scripts/bench-lib.sh, against the fake Discord
# server with Discord's limits and rate limits and LATENCY_MS (50) added to every API and
# CDN request.
#
#   BENCH_ROWS=rows.tsv scripts/bench-history-rows.sh quick|full
#
#                      quick    full
#   live files         2500     100000   (in 100 folders, a few dozen bytes each)
#   created            3125     125000   (a fifth of them packed 10 to a message, the
#                                         others one a message, as the mount stores them)
#   overwrites         1250     50000    (one a message)
#   deletes            625      25000    (one tombstone a message)
#   chat               625      25000    (messages by someone else, in between)
#   messages           ~5000    ~200000  (with the checkpoints and their pin notices)
#   runs (medians)     1        3        (the replay without checkpoints runs once)
#
# The history is made by examples/seed_history.rs (its header says how), through the
# library, with the server's limits off and no latency, and with the server dating the
# messages from 48 to 25 hours back (its `backdate` knob, lowered as the steps go): a
# history that big is days old, `gc` never touches messages younger than a day, and a
# mount with a cache reads again the 5 s before its newest message, which must hold
# what 5 s of a channel hold, not thousands of messages made in those seconds. Nothing is freed while seeding, so the history
# keeps every version and tombstone. A checkpoint is posted every 1,000 records, as the
# mount does, and the last 570 steps (about 500 records, the average tail between two
# checkpoints, and their chat) come after the newest one. The fake server keeps everything in memory, so the history is made again
# in every run. The live files are also written to the disk (same paths, same bytes).
# Then, with Discord's limits and the latency back on:
#
# - mount + ls -lR, fresh machine: the time from starting `dcloud-fs mount` (in the
#   foreground, under /usr/bin/time, with an empty cache folder) until `ls -lR` of the
#   channel has listed every file (checked: the count of files), then unmounted.
#   These mounts post no checkpoint (DCLOUD_CHECKPOINT_EVERY=0; a clean unmount would
#   post one after the tail), so every run starts from the seeded checkpoint and reads
#   the seeded tail after it, as a fresh machine does between two checkpoints.
#   Baseline: the same with `checkpoints = false` (DCLOUD_CHECKPOINTS=false): the whole
#   history replayed, what an open did before checkpoints existed. The target: at
#   most 1 s more than the warm figure (the second row).
# - mount + ls -lR, warm: the same with the index cache a fresh run left (each run then
#   leaves it for the next). Baseline: `ls -lR` of the same tree on the local disk, with
#   its dentries and inodes cached (the first listing warms them; the note gives the
#   listing after dropping the page cache too). The target: at most 2 times the disk.
# - ls -lR again: on one warm mount, listed once, then `ls -lR` again after the
#   attributes' time to live, alternately with the disk: the listing without the cost
#   of a new mount (the kernel making a dentry and an inode per name).
# - gc: `dcloud-fs gc` of the channel, timed, twice (the second a day later, under
#   faketime, when it is installed: see the gc section), with its report line in the note (messages
#   and bytes freed, deletes kept) and the requests it made (messages younger than two
#   weeks go a hundred to a bulk delete; one by one, at Discord's 5 deletes a second in
#   a channel, 100,000 would take five and a half hours). Then the channel's whole history is read again
#   (`seed_history count`: no cache, no checkpoint, the limits off): the tombstone
#   messages left and how many are older than the newest checkpoint: none after the
#   second run (the first repacks the packs still partly in use, whose records still
#   put the dead files' paths and so keep their deletes; the second frees the old packs
#   and those deletes); `gc --dry-run` then must find no tombstone message to delete.
# - verify: `dcloud-fs verify CHANNEL --read-data --sample 1`, timed, with its exit
#   status (0: clean) and summary line.
# - peak RSS of the mount daemon with the channel listed (fresh and warm), the size of
#   the index cache (the folder `index/` of the cache folder: the cache file and its
#   journal) and of the newest checkpoint (its attachments).
#
# Needs root (to mount), fusermount3, curl and python3. The binaries (and the example)
# are taken from $CARGO_TARGET_DIR/release (default target/release); they are built
# (release) if missing.
set -euo pipefail

mode=${1:-}
case $mode in
    quick) live=2500 runs=1 ;;
    full) live=100000 runs=3 ;;
    *)
        echo "usage: BENCH_ROWS=FILE $0 quick|full" >&2
        exit 2
        ;;
esac
# shellcheck source=scripts/bench-lib.sh
. "$(dirname "$0")/bench-lib.sh"
bench_begin
latency_ms=${LATENCY_MS:-50}
created=$((live * 5 / 4))
overwrites=$((live / 2))
deletes=$((created - live))
chat=$((live / 4))
tail_steps=570 # about 500 records and 70 chat messages after the newest checkpoint
backdate_secs=$((2 * 24 * 3600))
span_secs=$((23 * 3600)) # the history is dated from 48 h to 25 h ago
channel=hist
section=history

bench_binaries
bench_example seed_history
seeder=$release/examples/seed_history
section_start=$(date +%s.%N)

bench_work
fake_start "$latency_ms"

# --- the history ------------------------------------------------------------------------
fast
knobs "{\"backdate\": $backdate_secs}" # the channel too: it is older than its messages
"$bin" keygen > /dev/null 2>&1
"$bin" -q mkdir "$channel"
key=$HOME/.config/dcloud-fs/key
before_messages=$(fake_stat messages_created)
start=$(date +%s.%N)
"$seeder" seed "$channel" --key "$key" --files "$live" --overwrites "$overwrites" \
    --deletes "$deletes" --chat "$chat" --folders 100 --pack-share 0.2 --pack 10 \
    --jobs 16 --tail "$tail_steps" --span "$span_secs" --tree tree > seed.json
seed_s=$(seconds_since "$start")
seeded_messages=$(($(fake_stat messages_created) - before_messages))
knobs '{"backdate": 0}'
"$seeder" count "$channel" --key "$key" > count.before.json
messages=$(json count.before.json messages)
[ "$(json count.before.json live_files)" = "$live" ] ||
    { echo "the history holds $(json count.before.json live_files) live files, not $live" >&2; exit 1; }
tail_messages=$(json count.before.json messages_after_newest_checkpoint)
row "$section" "make the history (seed_history)" "$seed_s" s "" "" "" "" \
    "$messages messages in the channel ($seeded_messages posted: $(json seed.json single_file_messages) one-file puts, $(json seed.json pack_messages) packs of 10, $overwrites overwrites, $deletes deletes, $chat chat, $(json seed.json checkpoints_posted) checkpoints); $live live files; $tail_messages messages after the newest checkpoint; limits off, no latency, 16 clients"
discord

# --- ls -lR on the disk -----------------------------------------------------------------
files_on_disk=$(find tree -type f | wc -l)
[ "$files_on_disk" = "$live" ] || { echo "the tree on disk holds $files_on_disk files, not $live" >&2; exit 1; }
drop_caches
timed diskcold sh -c 'ls -lR tree > /dev/null'
for _ in $(seq "$runs"); do timed disk sh -c 'ls -lR tree > /dev/null'; done

# --- mount + ls -lR ----------------------------------------------------------------------
# mount_ls NAME CACHE_DIR: times mounting with CACHE_DIR until `ls -lR` of the channel
# has listed it, appending the seconds to NAME's times file (NAME up to its first dot);
# checks the count of files; unmounts. The daemon's peak RSS goes to rss.NAME, its log
# to mount.NAME.log. Variables set before it (DCLOUD_CHECKPOINTS=false mount_ls ...)
# are the mount's environment too.
mount_ls() {
    local name=$1 cache=$2 start listed
    start=$(date +%s.%N)
    mount_start "$name" "$cache"
    # shellcheck disable=SC2010 # `ls -lR` is the job measured
    listed=$(ls -lR "$mnt/$channel" | grep -c '^-')
    seconds_since "$start" >> "${name%%.*}.times"
    [ "$listed" = "$live" ] || { echo "ls -lR listed $listed files, not $live" >&2; exit 1; }
    mount_stop "$name"
}
for run in $(seq "$runs"); do
    before=$(fake_stat bytes_downloaded)
    before_requests=$(fake_stat requests)
    DCLOUD_CHECKPOINT_EVERY=0 mount_ls "fresh.$run" "$work/cache.fresh.$run"
    echo $(($(fake_stat bytes_downloaded) - before)) >> fresh.bytes
    echo $(($(fake_stat requests) - before_requests)) >> fresh.requests
done
index_bytes=$(find "$work/cache.fresh.1/index" -type f -printf '%s\n' | awk '{ b += $1 } END { print b + 0 }')
before_requests=$(fake_stat requests)
DCLOUD_CHECKPOINTS=false mount_ls "replay.1" "$work/cache.replay"
replay_requests=$(($(fake_stat requests) - before_requests))
for run in $(seq "$runs"); do
    before_requests=$(fake_stat requests)
    mount_ls "warm.$run" "$work/cache.fresh.1"
    echo $(($(fake_stat requests) - before_requests)) >> warm.requests
done
fresh=$(median fresh.times)
replay=$(median replay.times)
warm=$(median warm.times)
disk=$(median disk.times)
row "$section" "fresh mount + ls -lR ($live files)" "$fresh" s \
    "the same without checkpoints (a full replay)" "$replay" "$(ratio_time "$replay" "$fresh")" \
    "$(peak_rss_mib rss.fresh.*)" \
    "empty cache folder; $(mb "$(median fresh.bytes)") MB downloaded, $(median fresh.requests) requests (baseline: $replay_requests requests, $(peak_rss_mib rss.replay.*) MiB); $messages messages in the history; ${latency_ms} ms latency; median of $runs, the baseline 1 run"
row "$section" "fresh mount + ls -lR ($live files)" "$fresh" s \
    "warm mount + ls -lR" "$warm" "$(ratio_time "$warm" "$fresh")" "$(peak_rss_mib rss.fresh.*)" \
    "fresh - warm = $(awk -v f="$fresh" -v w="$warm" 'BEGIN { printf "%.2f", f - w }') s (target: at most 1 s)"
row "$section" "warm mount + ls -lR ($live files)" "$warm" s \
    "ls -lR of the same tree on the disk" "$disk" "$(ratio_time "$disk" "$warm")" \
    "$(peak_rss_mib rss.warm.*)" \
    "the index cache a fresh mount left; $(median warm.requests) requests; target: at most 2x the disk (ratio >= 0.5); the disk after dropping the page cache: $(median diskcold.times) s; ${latency_ms} ms latency; median of $runs"
row "$section" "mount daemon peak RSS, channel listed" "$(peak_rss_mib rss.fresh.* rss.warm.*)" MiB \
    "" "" "" "$(peak_rss_mib rss.fresh.* rss.warm.*)" \
    "fresh: $(peak_rss_mib rss.fresh.*) MiB, warm: $(peak_rss_mib rss.warm.*) MiB, without checkpoints: $(peak_rss_mib rss.replay.*) MiB; $live files, block cache 64 MiB (default)"

# --- ls -lR again, on a mount that is up ---------------------------------------------------
# The warm figure above includes what any new mount costs: the kernel has never seen the
# names, and makes a dentry and an inode for each of the 100,000 (the disk's are cached).
# This is the listing once the mount has been listed before, after the attributes'
# time to live (1 s) has run out, so that every name is asked again; the disk beside
# it in the same runs, alternately.
mount_start again "$work/cache.fresh.1"
# shellcheck disable=SC2010 # the first listing warms the kernel's caches
listed=$(ls -lR "$mnt/$channel" | grep -c '^-')
[ "$listed" = "$live" ] || { echo "ls -lR listed $listed files, not $live" >&2; exit 1; }
for run in $(seq "$runs"); do
    sleep 1.1
    timed again sh -c "ls -lR '$mnt/$channel' > /dev/null"
    timed disk.again sh -c 'ls -lR tree > /dev/null'
done
mount_stop again
row "$section" "ls -lR again on a mount that is up ($live files)" "$(median again.times)" s \
    "ls -lR of the same tree on the disk" "$(median disk.again.times)" \
    "$(ratio_time "$(median disk.again.times)" "$(median again.times)")" "$(peak_rss_mib rss.again)" \
    "the channel listed once before on this mount, the attributes' time to live (1 s) run out; the disk in the same runs, alternately; median of $runs"

# --- gc ------------------------------------------------------------------------------------
# gc_run NAME [WRAPPER...]: one `gc` of the channel, timed (NAME.times), its peak RSS
# (rss.NAME), its last line (NAME.out), and the messages it deleted and the requests it
# made (NAME.deleted, NAME.requests).
gc_run() {
    local name=$1 before_deleted before_requests
    shift
    before_deleted=$(fake_stat messages_deleted)
    before_requests=$(fake_stat requests)
    timed "$name" "$@" /usr/bin/time -f %M -o "rss.$name" "$bin" gc "$channel" > "$name.out"
    echo $(($(fake_stat messages_deleted) - before_deleted)) > "$name.deleted"
    echo $(($(fake_stat requests) - before_requests)) > "$name.requests"
}
# The first run repacks the packs whose dead files keep deletes; what they kept goes
# once the repacks are older than the grace (a day). The second run is that day later:
# under faketime (Debian's package faketime), the clock 25 h ahead, nothing posted
# meanwhile. Without faketime there is no second run.
gc_run gc
if command -v faketime > /dev/null; then
    gc_run gc2 env FAKETIME_DONT_FAKE_MONOTONIC=1 faketime '+25 hours'
fi
gc_line=$(tail -1 gc.out)
"$bin" gc --json --dry-run "$channel" > gc.dry.json
dry_tombstones=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[0]["tombstones"])' gc.dry.json)
dry_kept=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[0]["tombstones_kept"])' gc.dry.json)
fast
"$seeder" count "$channel" --key "$key" > count.after.json
discord
left=$(json count.after.json tombstone_messages_older_than_newest_checkpoint)
row "$section" "gc" "$(median gc.times)" s "" "" "" "$(peak_rss_mib rss.gc)" \
    "$gc_line; $(cat gc.deleted) messages deleted, $(cat gc.requests) requests; ${latency_ms} ms latency"
if [ -e gc2.out ]; then
    row "$section" "gc, a day later (faketime +25 h)" "$(median gc2.times)" s "" "" "" "$(peak_rss_mib rss.gc2)" \
        "$(tail -1 gc2.out); $(cat gc2.deleted) messages deleted, $(cat gc2.requests) requests; ${latency_ms} ms latency"
fi
row "$section" "tombstones older than the newest checkpoint, after gc" "$left" messages "" "" "" "" \
    "target 0; the history after: $(json count.after.json messages) messages, $(json count.after.json tombstone_messages) tombstone messages holding $(json count.after.json deletes_held) deletes; gc --dry-run after: $dry_tombstones tombstone messages to delete, $dry_kept deletes kept"

# --- verify --------------------------------------------------------------------------------
status=0
start=$(date +%s.%N)
/usr/bin/time -f %M -o rss.verify "$bin" verify "$channel" --read-data --sample 1 > verify.out 2>&1 || status=$?
verify_s=$(seconds_since "$start")
row "$section" "verify --read-data --sample 1" "$verify_s" s "" "" "" "$(peak_rss_mib rss.verify)" \
    "exit status $status (target 0); $(tail -1 verify.out); after gc; ${latency_ms} ms latency"
[ "$status" = 0 ] || { echo "verify found problems:" >&2; cat verify.out >&2; exit 1; }

# --- sizes -----------------------------------------------------------------------------------
row "$section" "index cache" "$(mb "$index_bytes")" MB "" "" "" "" \
    "the index/ folder a fresh mount left (cache file and journal), $live files"
row "$section" "newest checkpoint" "$(mb "$(json count.before.json checkpoint_bytes)")" MB "" "" "" "" \
    "its attachments, in $(json count.before.json checkpoint_message_count) message(s), before gc; after gc: $(mb "$(json count.after.json checkpoint_bytes)") MB"

echo "history section ($mode): $(awk -v s="$section_start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.0f", e - s }') s wall time"
