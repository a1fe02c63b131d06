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
#
# Jobs:
# - put: `dcloud-fs put` of a random file into an empty channel. Baseline: the
#   rate-limit ceiling for that file. Discord lets a bot post 5 messages per channel
#   every 5 s; a file of M messages (24 MiB each) can't take less than
#   5 s * floor((M - 1) / 5), so the ceiling is the file's size over that time and the
#   ratio is the share of it dcloud-fs reached. The note gives the 429s the server sent
#   during the put (its /_fake/stats). A file of 5 messages or fewer fits in the first
#   window's burst and has no ceiling, which is why even the quick file is 6 messages.
# - get: `dcloud-fs get` of that file. Baseline: the same chunk attachments fetched
#   from the fake CDN directly with curl, four at a time (what `get` does), so the
#   ratio is what dcloud-fs's own work costs (URLs, decryption, writing the file).
# - mount + ls -l, cold: a channel of N tiny files (9 to a message, as `put` packs
#   them): the time from starting `dcloud-fs mount` to `ls -l` of the channel having
#   listed them all, with an empty cache folder, so the whole history is read. The
#   channel is filled with the server's limits and latency off (see below), which are
#   back on for the measurement.
# - mount + ls -l, warm: the same, with the index cache the cold run left. Baseline:
#   the cold run.
# Peak RSS is that of the `put` or `get` process, or of the mount daemon (run in the
# foreground under /usr/bin/time), which runs with a 256 MiB chunk cache.
#
# Needs root (to mount), fusermount3, curl and python3. Builds the release binaries if
# they are missing.
set -euo pipefail

mode=${1:-}
case $mode in
    quick) size_mib=128 runs=1 small=1000 ;;
    full) size_mib=256 runs=3 small=10000 ;;
    *)
        echo "usage: BENCH_ROWS=FILE $0 quick|full" >&2
        exit 2
        ;;
esac
[ -n "${BENCH_ROWS:-}" ] || { echo "$0: set BENCH_ROWS to the file to append rows to" >&2; exit 2; }
BENCH_ROWS=$(realpath -m "$BENCH_ROWS")
export BENCH_ROWS
latency_ms=${LATENCY_MS:-50}
cache_mib=256
section=discord

cd "$(dirname "$0")/.."
# shellcheck source=bench-lib.sh disable=SC1091
. scripts/bench-lib.sh
if [ ! -x target/release/dcloud-fs ] || [ ! -x target/release/fake-discord ]; then
    cargo build --release --locked -p dcloud-fs -p fake-discord --quiet
fi
bin=$PWD/target/release/dcloud-fs
fake=$PWD/target/release/fake-discord
section_start=$(date +%s.%N)

work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/dcloud-bench.XXXXXX")
mnt=$work/mnt
fake_pid=
mount_pid=
cleanup() {
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
trap cleanup EXIT
trap 'exit 130' INT TERM
export HOME=$work/home
unset DCLOUD_KEY DCLOUD_PASSPHRASE DCLOUD_KEY_FILE DCLOUD_LOCAL DCLOUD_CONFIG DCLOUD_CATEGORY
unset DCLOUD_CACHE_DIR DCLOUD_MOUNT_POINT DCLOUD_CACHE_SIZE_MIB
unset XDG_CONFIG_HOME XDG_CACHE_HOME XDG_DATA_HOME
cd "$work"
mkdir -p "$mnt"

"$fake" --listen 127.0.0.1:0 --latency-ms "$latency_ms" > fake.env 2> fake.log &
fake_pid=$!
for _ in $(seq 100); do [ -s fake.env ] && [ "$(wc -l < fake.env)" -ge 3 ] && break; sleep 0.05; done
[ "$(wc -l < fake.env)" -ge 3 ] || { echo "the fake server did not start:" >&2; cat fake.log >&2; exit 1; }
set -a
# shellcheck disable=SC1091
. ./fake.env
set +a

# fake_stat NAME: a counter of the fake server's /_fake/stats.
fake_stat() {
    curl -sf "$DCLOUD_API/_fake/stats" | python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"
}
# knobs JSON: changes the fake server's knobs.
knobs() {
    curl -sf -X POST -H 'Content-Type: application/json' -d "$1" "$DCLOUD_API/_fake/knobs" > /dev/null
}
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

# --- fill the channel of small files -------------------------------------------------
# At Discord's pace (5 messages of 9 files per 5 s) 10,000 files take 20 minutes. So all
# but the last 45 go in with the limits off and no latency (and the limits set so high
# that the rate-limit headers don't make the client wait either); the last 45 (5
# messages, what Discord takes in 5 s) go in over 5 s later, with the limits back on.
# That matters for the warm listing: opening a channel with its index cache reads again
# the messages of the 5 s before the newest one, which at Discord's pace are those 5
# messages, not the whole channel.
tail_files=45
mkdir head tail
for i in $(seq "$small"); do
    if [ "$i" -le $((small - tail_files)) ]; then dir="head"; else dir="tail"; fi
    printf 'file %d\n' "$i" > "$dir/f$i.txt"
done
curl -sf "$DCLOUD_API/_fake/knobs" > knobs.json # Discord's, as the server started
knobs '{"rate_limits": false, "latency": 0, "message_create_limit": [1000000, 1],
        "default_route_limit": [1000000, 1], "global_limit_per_sec": 1000000}'
(cd head && "$bin" -q --no-cache put ./* small/)
knobs "$(cat knobs.json)"
filled=$(date +%s.%N)
rm -r head

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
    timed get /usr/bin/time -f %M -o "rss.get.$run" "$bin" -q get "big/f$run" out.bin
    cmp -s src.bin out.bin || { echo "get returned different bytes" >&2; exit 1; }
    rm out.bin
    timed cdn sh -c 'xargs -P 4 -n 1 curl -sf -o /dev/null < urls.txt'
done
rm src.bin

messages=$(median put.messages)
ceiling_s=$((5 * ((messages - 1) / 5)))
put_rate=$(rate "$size_mib" "$(median put.times)")
ceiling_rate=$(rate "$size_mib" "$ceiling_s")
get_rate=$(rate "$size_mib" "$(median get.times)")
cdn_rate=$(rate "$size_mib" "$(median cdn.times)")
row "$section" "put ${size_mib} MiB" "$put_rate" MB/s \
    "rate-limit ceiling (${messages} messages, 5 per 5 s)" "$ceiling_rate" \
    "$(ratio_rate "$put_rate" "$ceiling_rate")" "$(peak_rss_mib rss.put.*)" \
    "429s: $(median put.429); ${latency_ms} ms latency; median of $runs"
row "$section" "get ${size_mib} MiB" "$get_rate" MB/s \
    "curl of the chunks from the CDN, 4 at a time" "$cdn_rate" \
    "$(ratio_rate "$get_rate" "$cdn_rate")" "$(peak_rss_mib rss.get.*)" \
    "${latency_ms} ms latency; median of $runs"

# --- mount and list the channel of small files ----------------------------------------
sleep "$(awk -v f="$filled" -v now="$(date +%s.%N)" 'BEGIN { w = f + 5.5 - now; print (w > 0 ? w : 0) }')"
(cd tail && "$bin" -q --no-cache put ./* small/)
rm -r tail

# mount_ls NAME CACHE_DIR: times mounting with CACHE_DIR and listing the channel.
mount_ls() {
    local name=$1 cache=$2 start end listed
    start=$(date +%s.%N)
    /usr/bin/time -f %M -o "rss.$name" "$bin" mount -f --cache-dir "$cache" \
        --cache-size "$cache_mib" "$mnt" 2> "mount.$name.log" &
    mount_pid=$!
    for _ in $(seq 3000); do mountpoint -q "$mnt" && break; sleep 0.01; done
    mountpoint -q "$mnt" || { echo "the mount did not come up; its log:" >&2; cat "mount.$name.log" >&2; exit 1; }
    # shellcheck disable=SC2012 # `ls -l` is the job measured
    listed=$(ls -l "$mnt/small" | wc -l)
    end=$(date +%s.%N)
    awk -v s="$start" -v e="$end" 'BEGIN { printf "%.4f\n", e - s }' >> "${name%%.*}.times"
    [ "$listed" = $((small + 1)) ] || { echo "ls listed $((listed - 1)) files, not $small" >&2; exit 1; }
    "$bin" umount "$mnt"
    wait "$mount_pid" || { echo "the mount failed; its log:" >&2; cat "mount.$name.log" >&2; exit 1; }
    mount_pid=
}
# A cold listing is bound by the latency (it reads every record) and varies little; it
# takes a minute for 10,000 files, so it runs once. Each warm run uses the index cache
# the run before left.
mount_ls cold.1 "$work/cache"
for run in $(seq "$runs"); do mount_ls "warm.$run" "$work/cache"; done
cold=$(median cold.times)
warm=$(median warm.times)
row "$section" "mount + ls -l, cold" "$cold" s "" "" "" "$(peak_rss_mib rss.cold.*)" \
    "$small files; empty cache; chunk cache ${cache_mib} MiB; 1 run"
row "$section" "mount + ls -l, warm" "$warm" s "cold" "$cold" "$(ratio_time "$cold" "$warm")" \
    "$(peak_rss_mib rss.warm.*)" "$small files; index cache; chunk cache ${cache_mib} MiB; median of $runs"

echo "discord section ($mode): $(awk -v s="$section_start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.0f", e - s }') s wall time"
