//! The drop-ins wharf writes next to an attached unit, and the marker line
//! that says a file was written by wharf for a given image. Files are found by
//! that marker, never by name alone, so wharf only ever removes what it wrote.

/// File name of the drop-in that ties a unit to its image.
pub const PORTABLE_DROPIN: &str = "20-portable.conf";
/// File name of the drop-in holding the sandbox profile.
pub const PROFILE_DROPIN: &str = "10-profile.conf";
/// File name of the drop-in with settings a fleet file gives the services.
pub const SETTINGS_DROPIN: &str = "30-settings.conf";

/// The most of a drop-in wharf reads: drop-ins are small, and a unit
/// directory is no place for a large file.
const DROPIN_MAX: u64 = 64 * 1024;

/// A drop-in's text: none when it is missing or not a regular file (these
/// directories are root's, but a unit directory is no place for a FIFO).
pub fn read_dropin(path: &std::path::Path) -> std::io::Result<Option<String>> {
    use std::io::Read;
    match path.symlink_metadata() {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut text = String::new();
    std::fs::File::open(path)?.take(DROPIN_MAX).read_to_string(&mut text)?;
    Ok(Some(text))
}

const MARKER_HEAD: &str = "# Drop-in created by wharf for image '";
const MARKER_TAIL: &str = "', do not edit.";

/// The first line of every file wharf writes for `image` (its absolute path).
pub fn marker(image: &str) -> String {
    format!("{MARKER_HEAD}{image}{MARKER_TAIL}")
}

/// The marker of an attachment of `image` with `extensions` stacked on it:
/// as portabled writes it, the paths joined by `:`, the image first. (An
/// extension path never holds `:`; see [`crate::image::extension::valid_setting_path`].)
pub fn marker_with_extensions(image: &str, extensions: &[String]) -> String {
    marker(&std::iter::once(image).chain(extensions.iter().map(String::as_str)).collect::<Vec<_>>().join(":"))
}

/// The image a file was written for, if its first line is wharf's marker.
pub fn parse_marker(contents: &str) -> Option<&str> {
    parse_marker_with_extensions(contents).map(|(image, _)| image)
}

/// The image a file was written for and the extensions stacked on it, if
/// its first line is wharf's marker. Only `:` followed by an absolute path
/// separates an extension: an image path with a `:` of its own (attached
/// without extensions) reads as it was written.
pub fn parse_marker_with_extensions(contents: &str) -> Option<(&str, Vec<&str>)> {
    let quoted = contents
        .lines()
        .next()?
        .strip_prefix(MARKER_HEAD)?
        .strip_suffix(MARKER_TAIL)
        .filter(|image| !image.is_empty())?;
    let mut parts = quoted.split(":/");
    let first = parts.next()?;
    let rest: Vec<&str> = parts.collect();
    if rest.is_empty()
        || first.is_empty()
        || first.contains(':')
        || rest.iter().any(|p| p.is_empty() || p.contains(':'))
    {
        return Some((quoted, Vec::new()));
    }
    // Each extension keeps the '/' its separator took.
    let mut extensions = Vec::new();
    let mut at = first.len() + 1;
    for part in rest {
        extensions.push(&quoted[at..at + 1 + part.len()]);
        at += part.len() + 2;
    }
    Some((first, extensions))
}

/// The settings drop-in of a service attached from `image`: one
/// `Key=Value` line per setting, in the `[Service]` section.
pub fn settings_dropin(image: &str, settings: &[(String, String)]) -> String {
    let mut text = format!("{}\n[Service]\n", marker(image));
    for (key, value) in settings {
        text.push_str(&format!("{key}={value}\n"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_round_trips() {
        let line = marker("/var/lib/portables/foobar_1.raw");
        let file = format!("{line}\n[Service]\nRootImage=/x\n");
        assert_eq!(parse_marker(&file), Some("/var/lib/portables/foobar_1.raw"));
    }

    #[test]
    fn extensions_round_trip_after_the_image() {
        let exts = ["/p/foobar-ext.raw".to_string(), "/srv/more".to_string()];
        let line = marker_with_extensions("/p/foobar.raw", &exts);
        assert_eq!(
            line,
            "# Drop-in created by wharf for image '/p/foobar.raw:/p/foobar-ext.raw:/srv/more', do not edit."
        );
        let file = format!("{line}\n[Service]\n");
        assert_eq!(
            parse_marker_with_extensions(&file),
            Some(("/p/foobar.raw", vec!["/p/foobar-ext.raw", "/srv/more"]))
        );
        assert_eq!(parse_marker(&file), Some("/p/foobar.raw"));
        assert_eq!(marker_with_extensions("/p/foobar.raw", &[]), marker("/p/foobar.raw"));
        // A ':' of the image's own path is not a separator.
        for odd in ["/p/a:b.raw", "/p/a:", "/p/a::/b"] {
            assert_eq!(parse_marker_with_extensions(&marker(odd)), Some((odd, vec![])), "{odd}");
        }
    }

    #[test]
    fn other_files_have_no_marker() {
        assert_eq!(parse_marker(""), None);
        assert_eq!(parse_marker("[Service]\n"), None);
        assert_eq!(parse_marker("# Drop-in created for image '/x.raw', do not edit.\n"), None);
        assert_eq!(parse_marker("\n# Drop-in created by wharf for image '/x', do not edit.\n"), None);
        assert_eq!(parse_marker("# Drop-in created by wharf for image '', do not edit."), None);
    }
}
