#!/usr/bin/env bash
# The benchmarks of `dcloud-fs serve` (issue 15), as rows (section `serve`) appended to
# $BENCH_ROWS in the format of scripts/bench-lib.sh, against the fake Discord server
# with Discord's limits and rate limits and LATENCY_MS (50) added to every API and CDN
# request, each beside the same transfer with the CLI in the same run.
#
#   BENCH_ROWS=rows.tsv scripts/bench-serve-rows.sh quick|full
#
#                      quick     full
#   file               64 MiB    256 MiB
#   runs (medians)     1         3
#
# Jobs:
# - upload through HTTP: `curl -T` of a random file to `serve`'s
#   `/files/CHANNEL/NAME?wait=1`, which answers once the file is stored in the channel
#   (as `fsync`), timed until curl returns. Baseline: `dcloud-fs put` of the same
#   file. The target: at least 0.8 of put's rate.
# - download through HTTP: `curl` of that file from `serve` into a file, with serve's
#   caches cold (it never read the file before; its own cache folder). Baseline:
#   `dcloud-fs get` of the file `put` stored, as cold (its disk cache emptied first).
#   The target: at least 0.9 of get's rate. Both downloads are compared with the
#   source.
# - the server's peak RSS over the whole section (/usr/bin/time), beside the CLI's.
#
# Needs curl. The binaries are taken from $CARGO_TARGET_DIR/release (default
# target/release); they are built (release) if missing.
set -euo pipefail

mode=${1:-}
case $mode in
    quick) size_mib=64 runs=1 ;;
    full) size_mib=256 runs=3 ;;
    *)
        echo "usage: BENCH_ROWS=FILE $0 quick|full" >&2
        exit 2
        ;;
esac
# shellcheck source=scripts/bench-lib.sh
. "$(dirname "$0")/bench-lib.sh"
bench_begin
latency_ms=${LATENCY_MS:-50}
section=serve

bench_binaries
bench_work
fake_start "$latency_ms"

"$bin" keygen > /dev/null 2>&1
"$bin" -q mkdir big
head -c "${size_mib}M" /dev/urandom > src.bin

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
address=127.0.0.1:$port
/usr/bin/time -f %M -o rss.serve "$bin" serve --listen "$address" --cache-dir "$work/cache.serve" \
    2> serve.log &
serve_pid=$!
stop_serve() {
    if [ -n "${serve_pid:-}" ]; then
        pkill -TERM -P "$serve_pid" 2> /dev/null || true
        wait "$serve_pid" 2> /dev/null || true
        serve_pid=
    fi
}
trap 'stop_serve; bench_cleanup' EXIT
for _ in $(seq 200); do curl -sf "http://$address/files/?json" > /dev/null 2>&1 && break; sleep 0.05; done
curl -sf "http://$address/files/?json" > /dev/null || { echo "serve did not start:" >&2; cat serve.log >&2; exit 1; }

for run in $(seq "$runs"); do
    timed put /usr/bin/time -f %M -o "rss.put.$run" "$bin" -q put src.bin "big/p$run"
    rm -rf "$HOME/.cache/dcloud-fs/blocks"
    timed get /usr/bin/time -f %M -o "rss.get.$run" "$bin" -q get "big/p$run" out.cli
    cmp -s src.bin out.cli || { echo "get returned different bytes" >&2; exit 1; }
    rm out.cli
    sleep 5 # the channel's bucket refills, so both uploads start alike
    timed http_put curl -sf -o /dev/null -T src.bin "http://$address/files/big/h$run?wait=1"
    timed http_get curl -sf -o out.http "http://$address/files/big/h$run"
    cmp -s src.bin out.http || { echo "serve returned different bytes" >&2; exit 1; }
    rm out.http
    "$bin" -q rm "big/p$run"
    sleep 5
done
stop_serve
serve_rss=$(peak_rss_mib rss.serve)
put_rss=$(peak_rss_mib rss.put.*)
get_rss=$(peak_rss_mib rss.get.*)

put_s=$(median put.times)
get_s=$(median get.times)
http_put_s=$(median http_put.times)
http_get_s=$(median http_get.times)
row "$section" "upload through HTTP (curl -T, ?wait=1)" "$(rate "$size_mib" "$http_put_s")" MB/s \
    "dcloud-fs put" "$(rate "$size_mib" "$put_s")" "$(ratio_time "$put_s" "$http_put_s")" "$serve_rss" \
    "${size_mib} MiB random file, stored in the channel when curl returns; median of $runs; ${latency_ms} ms latency; target ratio >= 0.8; put's peak RSS ${put_rss} MiB; the RSS column is serve's peak over the section"
row "$section" "download through HTTP (curl)" "$(rate "$size_mib" "$http_get_s")" MB/s \
    "dcloud-fs get" "$(rate "$size_mib" "$get_s")" "$(ratio_time "$get_s" "$http_get_s")" "$serve_rss" \
    "the same file, both cold; median of $runs; target ratio >= 0.9; get's peak RSS ${get_rss} MiB"
