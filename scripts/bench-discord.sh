#!/usr/bin/env bash
# Throughput, 429s and peak memory of `dcloud-fs put` and `get` through the Discord
# store, against the fake Discord server with Discord's limits and rate limits, beside
# baselines measured in the same run.
#
#   scripts/bench-discord.sh [SIZE_MIB] [RUNS] [LATENCY_MS]   (defaults: 256, 3, 50)
#
# Baselines:
# - upload: the rate-limit ceiling. Discord lets a bot post about 5 messages per channel
#   every 5 s; at 24 MiB a message, a file of M messages can't take less than
#   5 s * floor((M - 1) / 5) once the first window's burst is spent. The table gives
#   that bound for the file and dcloud-fs's share of it.
# - download: the same attachments fetched from the fake CDN directly with curl, four at
#   a time (what `get` does), so the difference is dcloud-fs's own cost (decryption,
#   writing the file, URL handling).
# - both: `put`/`get` of the same file on the local store, in the same run.
# Every figure is the median of RUNS runs; the fake server adds LATENCY_MS to every
# request, as a network would.
set -euo pipefail
cd "$(dirname "$0")/.."

size_mib=${1:-256}
runs=${2:-3}
latency_ms=${3:-50}
cargo build --release --locked --quiet -p dcloud-fs -p fake-discord
bin=$PWD/target/release/dcloud-fs
fake=$PWD/target/release/fake-discord

work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/dcloud-bench.XXXXXX")
fake_pid=
cleanup() {
    if [ -n "$fake_pid" ]; then kill "$fake_pid" 2> /dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
export HOME=$work/home
unset DCLOUD_KEY DCLOUD_PASSPHRASE DCLOUD_KEY_FILE DCLOUD_LOCAL DCLOUD_CONFIG DCLOUD_CATEGORY
unset XDG_CONFIG_HOME XDG_CACHE_HOME XDG_DATA_HOME
cd "$work"

"$fake" --listen 127.0.0.1:0 --latency-ms "$latency_ms" > fake.env 2> fake.log &
fake_pid=$!
for _ in $(seq 50); do [ -s fake.env ] && [ "$(wc -l < fake.env)" -ge 3 ] && break; sleep 0.1; done
set -a
# shellcheck source=/dev/null
. ./fake.env
set +a

head -c "${size_mib}M" /dev/urandom > src.bin
"$bin" keygen > /dev/null 2>&1
"$bin" mkdir bench
"$bin" --local "$work/store" mkdir bench

timed() {
    local name=$1
    shift
    /usr/bin/time -f "%e %M" -o time.out "$@"
    cat time.out >> "$name.times"
}

stat_429() {
    curl -s "$DCLOUD_API/_fake/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["rate_limited"])'
}

# Writes the channel's attachment URLs (oldest first) to urls.txt and prints how many
# messages the channel holds (one page is enough: a run's file is under 100 messages).
list_channel() {
    local channel
    channel=$("$bin" info bench | awk '/^channel id/ {print $3}')
    curl -s -H "Authorization: Bot $DCLOUD_TOKEN" \
        "$DCLOUD_API/api/v10/channels/$channel/messages?limit=100" |
        python3 -c 'import json,sys
messages = json.load(sys.stdin)
with open("urls.txt", "w") as urls:
    for m in reversed(messages):
        for a in m["attachments"]:
            print(a["url"], file=urls)
print(len(messages))'
}

messages=0
for run in $(seq "$runs"); do
    before=$(stat_429)
    timed put "$bin" -q put src.bin "bench/f$run"
    echo $(($(stat_429) - before)) >> put.429
    count=$(list_channel)
    # The channel also holds one tombstone per earlier run's `rm`.
    messages=$((count - run + 1))
    timed get "$bin" -q get "bench/f$run" out.bin
    cmp -s src.bin out.bin || { echo "get returned different bytes" >&2; exit 1; }
    rm out.bin
    timed cdn sh -c 'xargs -P 4 -n 1 curl -s -o /dev/null < urls.txt'
    "$bin" -q rm "bench/f$run"
    timed local_put "$bin" -q --local "$work/store" put src.bin "bench/f$run"
    timed local_get "$bin" -q --local "$work/store" get "bench/f$run" out.bin
    rm out.bin
    "$bin" -q --local "$work/store" rm "bench/f$run"
    sleep 5 # let the channel's bucket refill, so every run starts alike
done

median() {
    sort -n -k"$1","$1" "$2" | awk -v c="$1" '{v[NR]=$c} END {m=int((NR+1)/2); print v[m]}'
}

ceiling_s=$(( 5 * ((messages - 1) / 5) ))
echo
echo "dcloud-fs through the fake Discord server (Discord's limits and rate limits, ${latency_ms} ms latency),"
echo "${size_mib} MiB random file in ${messages} messages, median of $runs runs ($(date -u +%Y-%m-%d), $(nproc) cores)"
echo
echo "| job | median s | MB/s | baseline | baseline s | ratio | 429s | peak RSS MiB |"
echo "|---|---:|---:|---|---:|---:|---:|---:|"
row() { # label times-file baseline-label baseline-seconds 429s
    local s rss
    s=$(median 1 "$2")
    rss=$(median 2 "$2")
    awk -v label="$1" -v s="$s" -v rss="$rss" -v mib="$size_mib" -v bl="$3" -v bs="$4" -v r="$5" 'BEGIN {
        mbps = (s > 0) ? mib * 1.048576 / s : 0
        ratio = (s > 0 && bs > 0) ? bs / s : 0
        printf "| %s | %.2f | %.0f | %s | %.2f | %.2f | %s | %.1f |\n", label, s, mbps, bl, bs, ratio, r, rss / 1024
    }'
}
row "put (Discord store)" put.times "rate-limit floor" "$ceiling_s" "$(median 1 put.429)"
row "get (Discord store)" get.times "curl from the CDN" "$(median 1 cdn.times)" "-"
row "put (local store)" local_put.times "-" 0 "-"
row "get (local store)" local_get.times "-" 0 "-"
