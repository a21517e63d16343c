//! The drop-ins wharf writes next to an attached unit, and the marker line
//! that says a file was written by wharf for a given image. Files are found by
//! that marker, never by name alone, so wharf only ever removes what it wrote.

/// File name of the drop-in that ties a unit to its image.
pub const PORTABLE_DROPIN: &str = "20-portable.conf";
/// File name of the drop-in holding the sandbox profile.
pub const PROFILE_DROPIN: &str = "10-profile.conf";
/// File name of the drop-in with settings a fleet file gives the services.
pub const SETTINGS_DROPIN: &str = "30-settings.conf";

const MARKER_HEAD: &str = "# Drop-in created by wharf for image '";
const MARKER_TAIL: &str = "', do not edit.";

/// The first line of every file wharf writes for `image` (its absolute path).
pub fn marker(image: &str) -> String {
    format!("{MARKER_HEAD}{image}{MARKER_TAIL}")
}

/// The image a file was written for, if its first line is wharf's marker.
pub fn parse_marker(contents: &str) -> Option<&str> {
    contents.lines().next()?.strip_prefix(MARKER_HEAD)?.strip_suffix(MARKER_TAIL).filter(|image| !image.is_empty())
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
    fn other_files_have_no_marker() {
        assert_eq!(parse_marker(""), None);
        assert_eq!(parse_marker("[Service]\n"), None);
        assert_eq!(parse_marker("# Drop-in created for image '/x.raw', do not edit.\n"), None);
        assert_eq!(parse_marker("\n# Drop-in created by wharf for image '/x', do not edit.\n"), None);
        assert_eq!(parse_marker("# Drop-in created by wharf for image '', do not edit."), None);
    }
}
