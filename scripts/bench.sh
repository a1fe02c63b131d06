#!/usr/bin/env bash
# The benchmarks in one command: builds in release mode, runs the sections, and writes
# the results as Markdown ($OUT/bench.md, printed at the end) and JSON ($OUT/bench.json).
#
#   scripts/bench.sh [--quick|--full] [--out DIR] [--only SECTION,...]
#
# --only runs the sections named, from local, mount, discord, serve, micro and history;
# by default the run is local,mount,discord,serve,micro: history runs only when named (e.g.
# --only history), as it takes about 20 minutes in full mode (about a minute quick).
# --full (the default) is the real benchmark, the default sections under 15 minutes on
# 2 cores; --quick runs the same jobs on smaller sizes, the default sections in under 2
# minutes, to check that everything works.
# DIR defaults to target/bench. BENCH_DIR picks the disk the sections work on (default
# /var/tmp). Run it as root: the mount jobs mount filesystems and drop the page cache
# (without root they are skipped, and say so). Missing tools (fio, rclone, fuse3, time)
# are installed with apt-get (as root or through sudo); if that fails, the jobs that
# need them are skipped with a note (curl and python3, for the discord section, too).
# The machine should be otherwise idle.
#
# Sections (each measures its baselines in the same run, on the same disk):
# - local (scripts/bench-local-rows.sh): `dcloud-fs put` / `get` of a random file on
#   the local store (64 MiB quick, 1 GiB full), beside `cp` + `sync` / `cat > file` of
#   the same file on the disk; peak RSS of each command. And (as root) small files
#   created through the mount into a folder of 100,000 (10,000 quick) beside the same
#   into an empty folder: the cost of a file must not grow with its folder.
# - mount (scripts/bench-mount-rows.sh): through `dcloud-fs mount` on the local store,
#   through `rclone mount` of an rclone crypt remote over a local folder
#   (`--vfs-cache-mode writes`), and on the plain disk: cp in until close returns, cold
#   and warm sequential reads, random 4 KiB reads (fio), `ls -l` of a folder of small
#   files (500 quick, 10,000 full), creating small files (200 quick, 1,000 full), patching
#   4 KiB in the middle of the file; peak RSS of both daemons, with their cache sizes.
#   Each job is two rows, the dcloud-fs figure against the disk and against rclone (the
#   script's header says why rclone's baseline is its upload, not its close).
# - discord (scripts/bench-discord-rows.sh): through the fake Discord server (Discord's
#   limits, 50 ms latency): put / get of a random file, the bytes downloaded reading the
#   first 64 KiB of each of a channel's 20 MiB files through the mount and reading files
#   again after a remount (and with `get`) from the disk cache, and mount + ls -l of a
#   channel of small files, cold and warm.
# - serve (scripts/bench-serve-rows.sh): through `dcloud-fs serve` on the fake Discord
#   server: a random file uploaded with curl (stored when it returns) and downloaded
#   again, beside `put` and `get` of the same file; the server's peak RSS.
# - micro (examples/crypto_bench.rs): micro-benchmarks of the hot paths.
# - history (scripts/bench-history-rows.sh; only when named in --only, see above): a
#   channel whose history holds 200,000 messages (5,000 quick) of puts, overwrites,
#   deletes and chat, leaving 100,000 live files (2,500 quick), through the fake Discord
#   server: a fresh machine's mount + ls -lR beside the same without
#   checkpoints, a warm one beside ls -lR on the disk, gc, verify --read-data, the
#   daemon's peak RSS, the sizes of the index cache and the checkpoint.
# Every figure is a median of runs (3, in both modes; history: 1 quick).
#
# Each section is a program given `quick` or `full` that appends rows to the TSV file
# $BENCH_ROWS (format and helpers: scripts/bench-lib.sh), with BENCH_BUILT=1 meaning
# the release build is done. A section missing from the checkout is skipped with a
# note; a section that fails is noted in its table and makes the run exit 1, after the
# report is written.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

mode=full out=target/bench only=local,mount,discord,serve,micro
usage() { echo "usage: $0 [--quick|--full] [--out DIR] [--only SECTION,...] (sections: local,mount,discord,serve,micro by default; history too if named)" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case $1 in
        --quick) mode=quick ;;
        --full) mode=full ;;
        --out) [ $# -ge 2 ] || usage; out=$2; shift ;;
        --out=*) out=${1#--out=} ;;
        --only) [ $# -ge 2 ] || usage; only=$2; shift ;;
        --only=*) only=${1#--only=} ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) usage ;;
    esac
    shift
done
sections=()
IFS=, read -ra wanted <<< "$only"
for s in "${wanted[@]}"; do
    case $s in
        local | mount | discord | serve | micro | history) sections+=("$s") ;;
        *) echo "$0: unknown section '$s' (local, mount, discord, serve, micro, history)" >&2; exit 2 ;;
    esac
done
[ ${#sections[@]} -gt 0 ] || usage
wants() { [[ " ${sections[*]} " == *" $1 "* ]]; }

mkdir -p "$out"
out=$(cd "$out" && pwd)
export BENCH_ROWS=$out/rows.tsv BENCH_BUILT=1
: > "$BENCH_ROWS"
run_start=$(date +%s.%N)

# Tools: install what is missing, where we can.
missing=()
if wants mount; then
    command -v fio > /dev/null || missing+=(fio)
    command -v rclone > /dev/null || missing+=(rclone)
    command -v fusermount3 > /dev/null || missing+=(fuse3)
fi
if wants discord || wants history || wants serve; then
    command -v curl > /dev/null || missing+=(curl)
    command -v python3 > /dev/null || missing+=(python3)
fi
if wants history; then
    command -v fusermount3 > /dev/null || missing+=(fuse3)
fi
[ -x /usr/bin/time ] || missing+=(time)
if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing ${missing[*]}"
    sudo=()
    [ "$(id -u)" = 0 ] || sudo=(sudo -n)
    if command -v apt-get > /dev/null && { [ ${#sudo[@]} -eq 0 ] || sudo -n true 2> /dev/null; } \
        && "${sudo[@]}" apt-get update -qq \
        && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" > /dev/null; then
        echo "installed ${missing[*]}"
    else
        echo "could not install ${missing[*]} (needs apt-get, as root or through sudo):" \
            "the jobs that need them are skipped" >&2
    fi
fi
[ -x /usr/bin/time ] || { echo "$0: /usr/bin/time is missing (Debian package time)" >&2; exit 1; }
if wants mount && [ "$(id -u)" != 0 ]; then
    echo "** not root: the mount jobs are skipped (they mount and drop the page cache); run as root for them" >&2
fi

echo "== cargo build --release"
build_start=$(date +%s.%N)
cargo build --release --locked -p dcloud-fs -p fake-discord
# The micro section's program too, so that its time is the measurement's alone.
if [[ " ${sections[*]} " == *" micro "* ]]; then
    cargo build --release --locked -p dcloud-fs --example crypto_bench
fi
if wants history && [ -f examples/seed_history.rs ]; then
    cargo build --release --locked -p dcloud-fs --example seed_history
fi
build=$(awk -v s="$build_start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.0f", e - s }')

# section NAME COMMAND...: runs a section, timing it; a failure is noted, not fatal.
failed=0 section_secs=
section() {
    local name=$1 start secs status=0
    shift
    echo "== $name"
    start=$(date +%s.%N)
    "$@" || status=$?
    secs=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
    if [ "$status" != 0 ]; then
        row "$name" "section failed" "" "" "" "" "" "" "exit status $status; see the run's output"
        failed=1
    fi
    section_secs="$section_secs $name=$secs"
    echo "== $name: $secs s"
}
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
for s in "${sections[@]}"; do
    case $s in
        local) section local scripts/bench-local-rows.sh "$mode" ;;
        mount) section mount scripts/bench-mount-rows.sh "$mode" ;;
        discord)
            if [ -f scripts/bench-discord-rows.sh ]; then
                section discord bash scripts/bench-discord-rows.sh "$mode"
            else
                row discord "section" "" "" "" "" "" "" "skipped: scripts/bench-discord-rows.sh is not in this checkout"
            fi
            ;;
        serve)
            if [ -f scripts/bench-serve-rows.sh ]; then
                section serve bash scripts/bench-serve-rows.sh "$mode"
            else
                row serve "section" "" "" "" "" "" "" "skipped: scripts/bench-serve-rows.sh is not in this checkout"
            fi
            ;;
        history)
            if [ -f scripts/bench-history-rows.sh ]; then
                section history bash scripts/bench-history-rows.sh "$mode"
            else
                row history "section" "" "" "" "" "" "" "skipped: scripts/bench-history-rows.sh is not in this checkout"
            fi
            ;;
        micro)
            if [ -f examples/crypto_bench.rs ]; then
                section micro cargo run --release --locked --quiet --example crypto_bench -- "$mode"
            else
                row micro "section" "" "" "" "" "" "" "skipped: examples/crypto_bench.rs is not in this checkout"
            fi
            ;;
    esac
done
total=$(awk -v s="$run_start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.0f", e - s }')

# The report.
date=$(date -u '+%Y-%m-%d %H:%M UTC')
kernel=$(uname -srm)
cpu=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)
[ -n "$cpu" ] || cpu=$(uname -m)
cores=$(nproc)
ram_mib=$(awk '/^MemTotal:/ { printf "%.0f", $2 / 1024 }' /proc/meminfo)
rev=$(git -C "$root" describe --always --dirty 2> /dev/null || echo unknown)

awk -F'\t' -v date="$date" -v kernel="$kernel" -v cpu="$cpu" -v cores="$cores" -v ram="$ram_mib" \
    -v mode="$mode" -v secs="$section_secs" -v total="$total" -v build="$build" -v rev="$rev" '
    function cell(s) { gsub(/\|/, "\\|", s); return s }
    BEGIN {
        n = split(secs, parts, " ")
        for (i = 1; i <= n; i++) { split(parts[i], kv, "="); took[kv[1]] = kv[2] }
        print "# dcloud-fs benchmarks"
        print ""
        printf "- date: %s, dcloud-fs %s\n", date, rev
        printf "- machine: %s; %s; %d cores; %.1f GiB RAM\n", kernel, cpu, cores, ram / 1024
        printf "- mode: %s; the run took %d s, %d s of it building\n", mode, total, build
        print "- ratio: how dcloud-fs compares with the baseline, > 1 better (baseline time / time, or rate / baseline rate)"
    }
    $1 != section {
        section = $1
        print ""
        if (section in took) printf "## %s (%s s)\n", section, took[section]
        else printf "## %s\n", section
        print ""
        print "| job | value | unit | baseline | baseline value | ratio | peak RSS MiB | note |"
        print "|---|---:|---|---|---:|---:|---:|---|"
    }
    {
        printf "| %s | %s | %s | %s | %s | %s | %s | %s |\n", cell($2), cell($3), cell($4), cell($5), cell($6), cell($7), cell($8), cell($9)
    }
' "$BENCH_ROWS" > "$out/bench.md"

awk -F'\t' -v date="$date" -v kernel="$kernel" -v cpu="$cpu" -v cores="$cores" -v ram="$ram_mib" \
    -v mode="$mode" -v secs="$section_secs" -v total="$total" -v build="$build" -v rev="$rev" '
    function str(s) {
        gsub(/\\/, "\\\\", s); gsub(/"/, "\\\"", s); gsub(/\t/, "\\t", s); gsub(/\r/, "\\r", s)
        gsub(/[\001-\037]/, " ", s)
        return "\"" s "\""
    }
    function num(s) {
        if (s ~ /^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?$/) return s
        if (s == "" || tolower(s) ~ /^-?(nan|inf)/) return "null"
        return str(s)
    }
    function strn(s) { return s == "" ? "null" : str(s) }
    BEGIN {
        printf "{\n  \"date\": %s,\n  \"revision\": %s,\n", str(date), str(rev)
        printf "  \"machine\": {\"kernel\": %s, \"cpu\": %s, \"cores\": %s, \"ram_mib\": %s},\n", str(kernel), str(cpu), num(cores), num(ram)
        printf "  \"mode\": %s,\n  \"seconds\": %s,\n  \"build_seconds\": %s,\n  \"section_seconds\": {", str(mode), num(total), num(build)
        n = split(secs, parts, " ")
        for (i = 1; i <= n; i++) { split(parts[i], kv, "="); printf "%s%s: %s", (i > 1 ? ", " : ""), str(kv[1]), num(kv[2]) }
        printf "},\n  \"rows\": ["
    }
    {
        printf "%s\n    {\"section\": %s, \"job\": %s, \"value\": %s, \"unit\": %s, \"baseline\": %s, \"baseline_value\": %s, \"ratio\": %s, \"rss_mib\": %s, \"note\": %s}", \
            (NR > 1 ? "," : ""), str($1), str($2), num($3), strn($4), strn($5), num($6), num($7), num($8), strn($9)
    }
    END { printf "%s]\n}\n", (NR > 0 ? "\n  " : "") }
' "$BENCH_ROWS" > "$out/bench.json"

echo
cat "$out/bench.md"
echo
echo "written: $out/bench.md, $out/bench.json (rows: $BENCH_ROWS)"
exit "$failed"
