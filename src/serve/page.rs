//! The web page's HTML, rendered on the server: a folder's listing, the login form,
//! an error. No template engine and no build step: a few functions that write
//! escaped text into a string, with the style sheet and the script (uploads with
//! progress, drag-and-drop, rename, delete, share) served from the binary
//! (`assets/`). Everything shown that came from a user (names, paths, messages) goes
//! through [`escape`]; every link to a name through [`href`].

use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use super::tree::TreePath;
use crate::units::{human_size, local_time};

/// The style sheet and the script, as served under `/assets/`.
pub const STYLE: &str = include_str!("assets/app.css");
pub const SCRIPT: &str = include_str!("assets/app.js");

/// How a listing is sorted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sort {
    #[default]
    Name,
    Size,
    Date,
}

impl Sort {
    pub fn parse(text: Option<&str>) -> Sort {
        match text {
            Some("size") => Sort::Size,
            Some("date") => Sort::Date,
            _ => Sort::Name,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Sort::Name => "name",
            Sort::Size => "size",
            Sort::Date => "date",
        }
    }
}

/// One row of a listing.
#[derive(Debug, Clone)]
pub struct Row {
    /// What the row shows: a name, or (in search results) a path.
    pub label: String,
    pub path: TreePath,
    pub is_dir: bool,
    pub size: u64,
    pub mtime: SystemTime,
}

/// A folder's page.
#[derive(Debug, Clone)]
pub struct FolderView {
    pub path: TreePath,
    pub rows: Vec<Row>,
    /// Rows in the folder (more than shown when cut at the limit).
    pub total: usize,
    pub sort: Sort,
    pub descending: bool,
    /// The search this page shows the results of.
    pub search: Option<String>,
    /// The token the script sends with each change.
    pub csrf: Option<String>,
    pub read_only: bool,
    /// A session to log out of.
    pub logged_in: bool,
}

/// Sorts `rows` as asked: folders first, then by the key, names breaking ties.
pub fn sort_rows(rows: &mut [Row], sort: Sort, descending: bool) {
    rows.sort_by(|a, b| {
        let key = match sort {
            Sort::Name => a.label.to_lowercase().cmp(&b.label.to_lowercase()),
            Sort::Size => a.size.cmp(&b.size),
            Sort::Date => a.mtime.cmp(&b.mtime),
        };
        let key = if descending { key.reverse() } else { key };
        b.is_dir
            .cmp(&a.is_dir)
            .then(key)
            .then_with(|| a.label.cmp(&b.label))
    });
}

/// `text` made safe inside HTML text and quoted attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The bytes of a path segment that may stand in a URL as they are.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `name` percent-encoded as one URL path segment.
pub fn encode_segment(name: &str) -> String {
    percent_encoding::utf8_percent_encode(name, SEGMENT).to_string()
}

/// The URL of `path` under `prefix` (`/files`), a folder's ending in `/`.
pub fn href(prefix: &str, path: &TreePath, is_dir: bool) -> String {
    let mut url = String::from(prefix);
    for name in path.names() {
        url.push('/');
        url.push_str(&encode_segment(name));
    }
    if is_dir {
        url.push('/');
    }
    url
}

/// Milliseconds since the epoch (negative before it), as the script and `?json` take
/// times.
pub fn epoch_ms(time: SystemTime) -> i64 {
    let ms = match time.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i128,
        Err(e) => -(e.duration().as_millis() as i128),
    };
    ms.clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

fn ns(time: SystemTime) -> i64 {
    epoch_ms(time).saturating_mul(1_000_000)
}

/// The top of every page.
fn head(out: &mut String, title: &str, csrf: Option<&str>) {
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · dcloud-fs</title>\
         <link rel=\"stylesheet\" href=\"/assets/app.css\">",
        escape(title)
    );
    if let Some(csrf) = csrf {
        let _ = write!(
            out,
            "<meta name=\"csrf-token\" content=\"{}\">",
            escape(csrf)
        );
    }
    out.push_str("<script src=\"/assets/app.js\" defer></script></head>\n");
}

/// The path as links, one per folder on the way.
fn breadcrumbs(out: &mut String, path: &TreePath) {
    out.push_str("<nav class=\"crumbs\"><a href=\"/files/\">channels</a>");
    let mut at = TreePath::root();
    for name in path.names() {
        at = at.join(name);
        let _ = write!(
            out,
            "<span>/</span><a href=\"{}\">{}</a>",
            escape(&href("/files", &at, true)),
            escape(name)
        );
    }
    out.push_str("</nav>");
}

fn sort_link(view: &FolderView, sort: Sort, label: &str) -> String {
    let descending = view.sort == sort && !view.descending;
    let arrow = match (view.sort == sort, view.descending) {
        (true, false) => " ↑",
        (true, true) => " ↓",
        _ => "",
    };
    let mut query = format!("?sort={}", sort.as_str());
    if descending {
        query.push_str("&amp;order=desc");
    }
    if let Some(search) = &view.search {
        query.push_str("&amp;q=");
        query.push_str(&encode_segment(search));
    }
    format!("<a href=\"{query}\">{label}{arrow}</a>")
}

/// A folder's page (the root's: the channels).
pub fn folder_page(view: &FolderView) -> String {
    let title = if view.path.is_root() {
        "channels".to_string()
    } else {
        view.path.display()
    };
    let mut out = String::with_capacity(4096 + view.rows.len() * 320);
    head(&mut out, &title, view.csrf.as_deref());
    let _ = write!(
        out,
        "<body data-path=\"{}\" data-read-only=\"{}\" data-root=\"{}\">\n<header>",
        escape(&view.path.display()),
        view.read_only,
        view.path.is_root()
    );
    breadcrumbs(&mut out, &view.path);
    if view.logged_in {
        out.push_str(
            "<form method=\"post\" action=\"/logout\" class=\"logout\">\
             <button type=\"submit\">Log out</button></form>",
        );
    }
    out.push_str("</header>\n<main>");
    toolbar(&mut out, view);
    if let Some(search) = &view.search {
        let _ = write!(
            out,
            "<p class=\"note\">{} found for “{}” — <a href=\"?\">show the folder</a></p>",
            count(view.total, "name"),
            escape(search)
        );
    }
    listing(&mut out, view);
    if view.total > view.rows.len() {
        let _ = write!(
            out,
            "<p class=\"note\">Showing {} of {}. <a href=\"?limit=all\">Show all</a> or search.</p>",
            view.rows.len(),
            view.total
        );
    }
    out.push_str(
        "<section id=\"uploads\" hidden><h2>Uploads</h2><ul id=\"upload-list\"></ul></section>\
         <div id=\"drop\" hidden>Drop files or folders to upload</div>\
         <p id=\"message\" role=\"status\"></p></main></body></html>\n",
    );
    out
}

fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn toolbar(out: &mut String, view: &FolderView) {
    out.push_str("<div class=\"toolbar\">");
    if !view.path.is_root() {
        let _ = write!(
            out,
            "<form class=\"search\" method=\"get\"><input type=\"search\" name=\"q\" \
             placeholder=\"Search in {}\" value=\"{}\" aria-label=\"Search\"></form>",
            escape(view.path.names()[0].as_str()),
            escape(view.search.as_deref().unwrap_or(""))
        );
    }
    if !view.read_only {
        if view.path.is_root() {
            out.push_str("<button type=\"button\" id=\"new-folder\">New channel</button>");
        } else {
            out.push_str(
                "<label class=\"button\">Upload files<input type=\"file\" id=\"pick-files\" \
                 multiple hidden></label>\
                 <label class=\"button\">Upload a folder<input type=\"file\" id=\"pick-folder\" \
                 webkitdirectory multiple hidden></label>\
                 <button type=\"button\" id=\"new-folder\">New folder</button>\
                 <label class=\"replace\"><input type=\"checkbox\" id=\"replace\"> replace \
                 existing files</label>",
            );
        }
    }
    out.push_str("</div>");
}

fn listing(out: &mut String, view: &FolderView) {
    if view.rows.is_empty() {
        out.push_str(if view.search.is_some() {
            "<p class=\"empty\">Nothing matches.</p>"
        } else if view.path.is_root() {
            "<p class=\"empty\">No channels yet.</p>"
        } else {
            "<p class=\"empty\">This folder is empty. Drop files here to upload them.</p>"
        });
        return;
    }
    let _ = writeln!(
        out,
        "<table class=\"listing\"><thead><tr><th class=\"name\">{}</th>\
         <th class=\"size\">{}</th><th class=\"date\">{}</th><th class=\"actions\">\
         <span class=\"hidden-label\">Actions</span></th></tr></thead><tbody>",
        sort_link(view, Sort::Name, "Name"),
        sort_link(view, Sort::Size, "Size"),
        sort_link(view, Sort::Date, "Modified")
    );
    for row in &view.rows {
        let link = href("/files", &row.path, row.is_dir);
        let size = if row.is_dir {
            "—".to_string()
        } else {
            human_size(row.size)
        };
        let _ = write!(
            out,
            "<tr data-path=\"{}\" data-dir=\"{}\"><td class=\"name\"><a href=\"{}\"{}>{}{}</a></td>\
             <td class=\"size\" data-bytes=\"{}\">{}</td>\
             <td class=\"date\"><time data-ms=\"{}\">{}</time></td><td class=\"actions\">",
            escape(&row.path.display()),
            row.is_dir,
            escape(&link),
            if row.is_dir { "" } else { " class=\"file\"" },
            escape(&row.label),
            if row.is_dir { "/" } else { "" },
            row.size,
            size,
            epoch_ms(row.mtime),
            local_time(ns(row.mtime)),
        );
        if !row.is_dir {
            let _ = write!(
                out,
                "<a class=\"action\" href=\"{}?download\" download>Download</a>",
                escape(&link)
            );
        }
        if !view.read_only && !view.path.is_root() {
            out.push_str(
                "<button type=\"button\" class=\"action rename\">Rename</button>\
                 <button type=\"button\" class=\"action delete\">Delete</button>",
            );
            if !row.is_dir {
                out.push_str("<button type=\"button\" class=\"action share\">Share</button>");
            }
        }
        out.push_str("</td></tr>\n");
    }
    out.push_str("</tbody></table>");
}

/// The login form.
pub fn login_page(error: Option<&str>, next: &str) -> String {
    let mut out = String::new();
    head(&mut out, "log in", None);
    out.push_str("<body class=\"login\"><main><h1>dcloud-fs</h1>");
    if let Some(error) = error {
        let _ = write!(
            out,
            "<p class=\"error\" role=\"alert\">{}</p>",
            escape(error)
        );
    }
    let _ = writeln!(
        out,
        "<form method=\"post\" action=\"/login\"><input type=\"hidden\" name=\"next\" \
         value=\"{}\"><label>Password <input type=\"password\" name=\"password\" \
         autocomplete=\"current-password\" autofocus required></label>\
         <button type=\"submit\">Log in</button></form></main></body></html>",
        escape(next)
    );
    out
}

/// A page that says what went wrong, in one line.
pub fn error_page(status: u16, message: &str) -> String {
    let mut out = String::new();
    head(&mut out, &status.to_string(), None);
    let _ = writeln!(
        out,
        "<body><header><nav class=\"crumbs\"><a href=\"/files/\">channels</a></nav></header>\
         <main><p class=\"error\" role=\"alert\">{}</p></main></body></html>",
        escape(message)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(label: &str, is_dir: bool, size: u64, secs: u64) -> Row {
        Row {
            label: label.into(),
            path: TreePath::parse(&format!("chan/{}", label.replace('/', "_"))).unwrap(),
            is_dir,
            size,
            mtime: UNIX_EPOCH + std::time::Duration::from_secs(secs),
        }
    }

    #[test]
    fn names_are_escaped_and_links_encoded() {
        let view = FolderView {
            path: TreePath::parse("chan").unwrap(),
            rows: vec![row("<script>a b&c<_script>.txt", false, 10, 0)],
            total: 1,
            sort: Sort::Name,
            descending: false,
            search: None,
            csrf: Some("tok\"en".into()),
            read_only: false,
            logged_in: false,
        };
        let html = folder_page(&view);
        assert!(!html.contains("<script>a"), "{html}");
        assert!(html.contains("&lt;script&gt;a b&amp;c&lt;_script&gt;.txt"));
        assert!(html.contains("/files/chan/%3Cscript%3Ea%20b%26c%3C_script%3E.txt"));
        assert!(html.contains("content=\"tok&quot;en\""));
    }

    #[test]
    fn folders_come_first_then_the_key() {
        let mut rows = vec![
            row("b", false, 5, 3),
            row("a", false, 50, 1),
            row("z", true, 0, 2),
        ];
        sort_rows(&mut rows, Sort::Size, true);
        let labels: Vec<&str> = rows.iter().map(|r| r.label.as_str()).collect();
        assert_eq!(labels, ["z", "a", "b"]);
        sort_rows(&mut rows, Sort::Date, false);
        let labels: Vec<&str> = rows.iter().map(|r| r.label.as_str()).collect();
        assert_eq!(labels, ["z", "a", "b"]);
        sort_rows(&mut rows, Sort::Name, true);
        let labels: Vec<&str> = rows.iter().map(|r| r.label.as_str()).collect();
        assert_eq!(labels, ["z", "b", "a"]);
    }
}
