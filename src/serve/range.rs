//! HTTP `Range` requests (RFC 9110 §14): which bytes of a file a download sends.
//!
//! One range is served as `206 Partial Content` with `Content-Range`; a range that
//! starts past the end is `416` with `Content-Range: bytes */SIZE`. Several ranges
//! at once (`bytes=0-1,5-9`) are answered with the whole file, which the RFC allows
//! and which every client handles; browsers, players and download managers ask for
//! one range. A header that doesn't parse is ignored, as the RFC says.

/// What to send of a file of a known size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// The whole file (200).
    All,
    /// Bytes `start..end` (206), `end` exclusive.
    Part { start: u64, end: u64 },
    /// Nothing satisfiable (416).
    Unsatisfiable,
}

/// What `header` (the value of `Range`, if any) asks of a file of `size` bytes.
pub fn want(header: Option<&str>, size: u64) -> Want {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Want::All;
    };
    if spec.contains(',') {
        return Want::All;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Want::All;
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        // The last `n` bytes.
        let Ok(n) = last.parse::<u64>() else {
            return Want::All;
        };
        if n == 0 || size == 0 {
            return Want::Unsatisfiable;
        }
        return Want::Part {
            start: size.saturating_sub(n),
            end: size,
        };
    }
    let Ok(start) = first.parse::<u64>() else {
        return Want::All;
    };
    let end = if last.is_empty() {
        size
    } else {
        match last.parse::<u64>() {
            Ok(last) if last >= start => last.saturating_add(1).min(size),
            _ => return Want::All,
        }
    };
    if start >= size {
        return Want::Unsatisfiable;
    }
    Want::Part { start, end }
}

/// The `Content-Range` value of a part sent.
pub fn content_range(start: u64, end: u64, size: u64) -> String {
    format!("bytes {start}-{}/{size}", end - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_range_is_a_part() {
        assert_eq!(
            want(Some("bytes=0-99"), 1000),
            Want::Part { start: 0, end: 100 }
        );
        assert_eq!(
            want(Some("bytes=900-"), 1000),
            Want::Part {
                start: 900,
                end: 1000
            }
        );
        assert_eq!(
            want(Some("bytes=-10"), 1000),
            Want::Part {
                start: 990,
                end: 1000
            }
        );
        assert_eq!(
            want(Some("bytes=-5000"), 1000),
            Want::Part {
                start: 0,
                end: 1000
            }
        );
        // An end past the file is cut at the end.
        assert_eq!(
            want(Some("bytes=500-99999"), 1000),
            Want::Part {
                start: 500,
                end: 1000
            }
        );
        assert_eq!(content_range(0, 100, 1000), "bytes 0-99/1000");
    }

    #[test]
    fn what_cant_be_served_is_said() {
        assert_eq!(want(Some("bytes=1000-"), 1000), Want::Unsatisfiable);
        assert_eq!(want(Some("bytes=0-"), 0), Want::Unsatisfiable);
        assert_eq!(want(Some("bytes=-0"), 1000), Want::Unsatisfiable);
    }

    #[test]
    fn anything_else_is_the_whole_file() {
        for header in [
            None,
            Some("bytes=0-1,5-9"),
            Some("items=0-9"),
            Some("bytes=9-1"),
            Some("bytes=x-"),
            Some("bytes=-"),
            Some("bytes"),
        ] {
            assert_eq!(want(header, 1000), Want::All, "{header:?}");
        }
    }
}
