//! os-release(5): the `KEY=VALUE` file that says what an image is, and
//! carries `PORTABLE_PREFIXES=` for portable service images.

/// Where an image's os-release is looked for, in order.
pub const OS_RELEASE_PATHS: [&str; 2] = ["/etc/os-release", "/usr/lib/os-release"];

/// The fields of an os-release file, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct OsRelease(pub Vec<(String, String)>);

impl OsRelease {
    /// Parses os-release text: comments and blank lines are skipped, values
    /// may be single- or double-quoted, and double quotes allow `\` escapes.
    /// Lines that are not assignments are ignored, as systemd does.
    pub fn parse(text: &str) -> OsRelease {
        let mut fields = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let key = key.trim();
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            fields.push((key.to_string(), unquote(value.trim())));
        }
        OsRelease(fields)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// `PORTABLE_PREFIXES=`, split on whitespace; empty when unset.
    pub fn portable_prefixes(&self) -> Vec<String> {
        self.get("PORTABLE_PREFIXES").map(|v| v.split_whitespace().map(str::to_string).collect()).unwrap_or_default()
    }

    /// A name for people: PRETTY_NAME, else NAME VERSION, else ID.
    pub fn pretty_name(&self) -> Option<String> {
        self.get("PRETTY_NAME").map(str::to_string).or_else(|| {
            let name = self.get("NAME").or(self.get("ID"))?;
            Some(match self.get("VERSION").or(self.get("VERSION_ID")) {
                Some(version) => format!("{name} {version}"),
                None => name.to_string(),
            })
        })
    }
}

fn unquote(value: &str) -> String {
    let mut out = String::new();
    let mut chars = value.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (Some('"') | None, '\\') => {
                if let Some(next) = chars.next() {
                    out.push(next);
                }
            }
            (None, '#') if out.is_empty() => break,
            (_, c) => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_quotes_escapes_and_comments() {
        let text = r#"
# comment
NAME="Fedora Linux"
ID=fedora
VERSION_ID=28
PRETTY_NAME='Fedora 28 (Twenty Eight)'
HOME_URL="https://x/\"q\""
not an assignment
PORTABLE_PREFIXES="foo  bar"
EMPTY=
"#;
        let os = OsRelease::parse(text);
        assert_eq!(os.get("NAME"), Some("Fedora Linux"));
        assert_eq!(os.get("ID"), Some("fedora"));
        assert_eq!(os.get("PRETTY_NAME"), Some("Fedora 28 (Twenty Eight)"));
        assert_eq!(os.get("HOME_URL"), Some(r#"https://x/"q""#));
        assert_eq!(os.get("EMPTY"), Some(""));
        assert_eq!(os.portable_prefixes(), ["foo", "bar"]);
        assert_eq!(os.0.len(), 7);
        assert_eq!(os.pretty_name().as_deref(), Some("Fedora 28 (Twenty Eight)"));
    }

    #[test]
    fn pretty_name_falls_back() {
        assert_eq!(OsRelease::parse("ID=x\nVERSION_ID=1\n").pretty_name().as_deref(), Some("x 1"));
        assert_eq!(OsRelease::parse("").pretty_name(), None);
        assert!(OsRelease::parse("").portable_prefixes().is_empty());
    }
}
