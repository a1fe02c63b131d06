//! A `multipart/form-data` parser for a body already in memory, enough for what Discord
//! clients send (twilight: a `payload_json` part, then `files[N]` parts with filenames).
//! Parts are zero-copy slices of the body.

use bytes::Bytes;

/// One part of a form.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    /// `name` of its Content-Disposition.
    pub name: String,
    /// `filename` of its Content-Disposition, for file parts.
    pub filename: Option<String>,
    /// Its Content-Type header, if any.
    pub content_type: Option<String>,
    /// Its bytes.
    pub data: Bytes,
}

/// Why a body is not a well-formed form.
#[derive(Debug, PartialEq, Eq)]
pub struct MalformedForm(pub &'static str);

/// The boundary of a `multipart/form-data; boundary=...` content type.
pub fn boundary(content_type: &str) -> Option<String> {
    let (mime, params) = content_type.split_once(';')?;
    if !mime.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params.split(';').find_map(|param| {
        let (key, value) = param.split_once('=')?;
        key.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| value.trim().trim_matches('"').to_owned())
    })
}

/// Splits `body` into its parts.
pub fn parse(body: &Bytes, boundary: &str) -> Result<Vec<Part>, MalformedForm> {
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    let mut at = find(body, delimiter, 0).ok_or(MalformedForm("no opening boundary"))?;
    let mut parts = Vec::new();
    loop {
        at += delimiter.len();
        if body[at..].starts_with(b"--") {
            return Ok(parts);
        }
        at = skip_line_end(body, at).ok_or(MalformedForm("boundary not followed by CRLF"))?;
        let headers_end =
            find(body, b"\r\n\r\n", at).ok_or(MalformedForm("unterminated headers"))?;
        let headers = std::str::from_utf8(&body[at..headers_end])
            .map_err(|_| MalformedForm("headers are not UTF-8"))?;
        let data_start = headers_end + 4;
        let mut closing = b"\r\n".to_vec();
        closing.extend_from_slice(delimiter);
        let data_end =
            find(body, &closing, data_start).ok_or(MalformedForm("unterminated part"))?;
        parts.push(part_from(headers, body.slice(data_start..data_end))?);
        at = data_end + 2;
    }
}

fn part_from(headers: &str, data: Bytes) -> Result<Part, MalformedForm> {
    let mut disposition = None;
    let mut content_type = None;
    for line in headers.split("\r\n") {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.trim().eq_ignore_ascii_case("content-disposition") {
            disposition = Some(value.trim());
        } else if name.trim().eq_ignore_ascii_case("content-type") {
            content_type = Some(value.trim().to_owned());
        }
    }
    let disposition = disposition.ok_or(MalformedForm("part without Content-Disposition"))?;
    Ok(Part {
        name: disposition_param(disposition, "name").ok_or(MalformedForm("part without a name"))?,
        filename: disposition_param(disposition, "filename"),
        content_type,
        data,
    })
}

/// A parameter of a Content-Disposition value (`form-data; name="a"; filename="b"`).
fn disposition_param(disposition: &str, wanted: &str) -> Option<String> {
    disposition.split(';').skip(1).find_map(|param| {
        let (key, value) = param.split_once('=')?;
        (key.trim() == wanted).then(|| value.trim().trim_matches('"').to_owned())
    })
}

fn skip_line_end(body: &[u8], at: usize) -> Option<usize> {
    if body[at..].starts_with(b"\r\n") {
        Some(at + 2)
    } else if body[at..].starts_with(b"\n") {
        Some(at + 1)
    } else {
        None
    }
}

/// The first position of `needle` in `haystack` at or after `from`.
fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    let first = *needle.first()?;
    let mut at = from;
    while at + needle.len() <= haystack.len() {
        let offset = haystack[at..].iter().position(|&b| b == first)?;
        at += offset;
        if haystack[at..].starts_with(needle) {
            return Some(at);
        }
        at += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_twilight_shaped_form() {
        let body = Bytes::from_static(
            b"--XyZ\r\nContent-Disposition: form-data; name=\"payload_json\"\r\n\
              Content-Type: application/json\r\n\r\n{\"content\":\"hi\"}\r\n--XyZ\r\n\
              Content-Disposition: form-data; name=\"files[0]\"; filename=\"a.bin\"\r\n\r\n\
              \x00\r\n--Xy\x01\r\n--XyZ--",
        );
        let parts = parse(&body, "XyZ").unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].name, "payload_json");
        assert_eq!(parts[0].content_type.as_deref(), Some("application/json"));
        assert_eq!(&parts[0].data[..], b"{\"content\":\"hi\"}");
        assert_eq!(parts[1].name, "files[0]");
        assert_eq!(parts[1].filename.as_deref(), Some("a.bin"));
        assert_eq!(&parts[1].data[..], b"\x00\r\n--Xy\x01");
    }

    #[test]
    fn finds_the_boundary_and_rejects_garbage() {
        assert_eq!(
            boundary("multipart/form-data; boundary=abc").as_deref(),
            Some("abc")
        );
        assert_eq!(boundary("application/json"), None);
        assert!(parse(&Bytes::from_static(b"nothing"), "abc").is_err());
        assert!(parse(&Bytes::from_static(b"--abc\r\n\r\nunterminated"), "abc").is_err());
    }
}
