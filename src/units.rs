//! How sizes and times are shown to people, by the command line and the web page alike.

/// A size for people: `512 B`, `1.5 KiB`, `12.0 MiB`, ...
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A time in nanoseconds since the epoch as local `YYYY-MM-DD HH:MM`.
pub fn local_time(mtime_ns: i64) -> String {
    let seconds = mtime_ns.div_euclid(1_000_000_000) as libc::time_t;
    // SAFETY: localtime_r writes only into the `tm` we pass and reads `seconds`.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let converted = unsafe { libc::localtime_r(&seconds, &mut tm) };
    if converted.is_null() {
        return "????-??-?? ??:??".to_string();
    }
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min
    )
}
