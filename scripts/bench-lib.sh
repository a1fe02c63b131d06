# shellcheck shell=bash
# Helpers shared by the benchmark scripts (source it; it defines functions only).
#
# A benchmark appends one row per job to the TSV file $BENCH_ROWS:
#
#   section  job  value  unit  baseline  baseline_value  ratio  rss_mib  note
#
# - value: the measured figure (seconds or MB/s, as `unit` says), a median;
# - baseline / baseline_value: what it is compared with, measured in the same run
#   (empty when there is none);
# - ratio: how dcloud-fs compares, >1 better: baseline_time / time for times, value /
#   baseline_value for rates (empty without a baseline); for bytes downloaded (unit
#   MB) it is value / baseline_value, lower better, and the row's note says so;
# - rss_mib: peak RSS of the process that did the job (empty if not measured);
# - note: anything a reader needs (cache size, sizes, 429 count, ...).
#
# scripts/bench.sh turns the rows into a Markdown table and a JSON file.

# median FILE: the median of the numbers in FILE, one per line.
median() {
    sort -g "$1" | awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else print v[int((NR + 1) / 2)] }'
}

# timed NAME COMMAND...: runs COMMAND, appends its wall-clock seconds to NAME.times in
# the current folder. Fails if COMMAND fails.
timed() {
    local name=$1 start end
    shift
    start=$(date +%s.%N)
    "$@"
    end=$(date +%s.%N)
    awk -v s="$start" -v e="$end" 'BEGIN { printf "%.4f\n", e - s }' >> "$name.times"
}

# rate MIB SECONDS: MB/s (10^6 bytes) for MIB mebibytes in SECONDS.
rate() {
    awk -v m="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.1f", m * 1.048576 / s; else print "nan" }'
}

# ratio_time BASELINE_S S: how many times faster than the baseline (baseline / s).
ratio_time() {
    awk -v b="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.2f", b / s; else print "nan" }'
}

# ratio_rate RATE BASELINE_RATE: rate / baseline rate.
ratio_rate() {
    awk -v r="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", r / b; else print "nan" }'
}

# row SECTION JOB VALUE UNIT BASELINE BASELINE_VALUE RATIO RSS_MIB NOTE: appends a row.
row() {
    [ -n "${BENCH_ROWS:-}" ] || { echo "row: BENCH_ROWS is not set" >&2; return 1; }
    local IFS=$'\t'
    printf '%s\n' "$*" >> "$BENCH_ROWS"
}

# peak_rss_mib FILE...: the largest of the kilobyte figures in FILEs, in MiB (the
# output of /usr/bin/time -f %M).
peak_rss_mib() {
    cat "$@" 2> /dev/null | sort -n | tail -1 | awk '{ printf "%.0f", $1 / 1024 }'
}

# drop_caches: empties the page cache (root only; a no-op otherwise).
drop_caches() {
    sync
    if [ -w /proc/sys/vm/drop_caches ]; then echo 3 > /proc/sys/vm/drop_caches; fi
}
