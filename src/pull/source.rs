//! The URL an image is pulled from, and what follows from it: the name the
//! image gets when none is given, and where its `SHA256SUMS` is.

use super::Error;

/// An `http://` or `https://` URL of an image file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    url: String,
    /// Where the file name starts in `url`.
    file_start: usize,
    /// Where the file name ends (a query or fragment follows).
    file_end: usize,
}

/// Compression suffixes, stripped first from a file name to make an image name.
const COMPRESSION_SUFFIXES: &[&str] = &[".xz", ".gz", ".zst", ".zstd", ".bz2"];
/// Then one of these.
const FORMAT_SUFFIXES: &[&str] = &[".raw", ".tar", ".img", ".tgz", ".txz", ".squashfs", ".erofs", ".ext4"];

impl Source {
    pub fn parse(url: &str) -> Result<Source, Error> {
        let bad = |reason: &str| Error::Argument(format!("'{}': {reason}", printable(url)));
        if url.chars().any(|c| c.is_ascii_control() || c.is_whitespace()) {
            return Err(bad("a URL has no blanks or control characters"));
        }
        let rest = if let Some(rest) = url.strip_prefix("https://") {
            rest
        } else if let Some(rest) = url.strip_prefix("http://") {
            rest
        } else {
            return Err(bad("only http:// and https:// URLs can be pulled"));
        };
        let scheme_len = url.len() - rest.len();
        let path_start = rest.find('/').map(|i| scheme_len + i).ok_or_else(|| bad("the URL names no file"))?;
        if path_start == scheme_len {
            return Err(bad("the URL names no host"));
        }
        let path_end = url[path_start..].find(['?', '#']).map_or(url.len(), |i| path_start + i);
        let file_start = url[..path_end].rfind('/').map_or(path_start, |i| i + 1);
        let file = &url[file_start..path_end];
        if file.is_empty() || file == "." || file == ".." {
            return Err(bad("the URL names no file"));
        }
        Ok(Source { url: url.to_string(), file_start, file_end: path_end })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The file name, as the URL spells it.
    pub fn file_name(&self) -> &str {
        &self.url[self.file_start..self.file_end]
    }

    /// The name an image pulled from here gets by default: the file name
    /// without its compression and format suffixes (`f28.raw.xz`: `f28`).
    pub fn local_name(&self) -> String {
        let mut name = self.file_name();
        if let Some(stripped) = COMPRESSION_SUFFIXES.iter().find_map(|s| name.strip_suffix(s)) {
            name = stripped;
        }
        if let Some(stripped) = FORMAT_SUFFIXES.iter().find_map(|s| name.strip_suffix(s)) {
            name = stripped;
        }
        name.to_string()
    }

    /// The URL of another file in the same directory (`SHA256SUMS`).
    pub fn beside(&self, file: &str) -> String {
        format!("{}{file}", &self.url[..self.file_start])
    }

    /// The URL of this file with `suffix` added to its name (`.sha256`).
    pub fn with_suffix(&self, suffix: &str) -> String {
        format!("{}{suffix}", &self.url[..self.file_end])
    }
}

/// `text` with control characters shown escaped, for a message.
fn printable(text: &str) -> String {
    text.chars().flat_map(char::escape_debug).collect::<String>().chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_file_name_without_its_suffixes() {
        for (url, name) in [
            ("https://example.org/pub/Fedora-Cloud-Base-28-1.1.x86_64.raw.xz", "Fedora-Cloud-Base-28-1.1.x86_64"),
            ("http://127.0.0.1:8080/f28.tar.gz", "f28"),
            ("http://h/a/b/debian.tar", "debian"),
            ("http://h/debian.tgz", "debian"),
            ("http://h/img.raw.zst?token=1", "img"),
            ("http://h/plain", "plain"),
        ] {
            let source = Source::parse(url).unwrap();
            assert_eq!(source.local_name(), name, "{url}");
        }
    }

    #[test]
    fn sums_and_signatures_are_found_beside_the_file() {
        let source = Source::parse("https://example.org/pub/f28.raw.xz?x=1#top").unwrap();
        assert_eq!(source.file_name(), "f28.raw.xz");
        assert_eq!(source.beside("SHA256SUMS"), "https://example.org/pub/SHA256SUMS");
        assert_eq!(source.with_suffix(".sha256"), "https://example.org/pub/f28.raw.xz.sha256");
    }

    #[test]
    fn only_web_urls_of_a_file_are_taken() {
        for (url, reason) in [
            ("file:///etc/shadow", "only http:// and https://"),
            ("ftp://h/f.raw", "only http:// and https://"),
            ("/srv/f28.raw", "only http:// and https://"),
            ("http://h", "names no file"),
            ("http://h/", "names no file"),
            ("http:///f.raw", "names no host"),
            ("http://h/dir/", "names no file"),
            ("http://h/a b.raw", "no blanks"),
            ("http://h/a\nb.raw", "no blanks"),
        ] {
            let error = Source::parse(url).unwrap_err().to_string();
            assert!(error.contains(reason), "{url}: {error}");
            assert!(!error.contains('\n'), "{url}: {error}");
        }
    }
}
