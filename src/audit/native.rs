//! The journal's native protocol: one datagram of fields to
//! /run/systemd/journal/socket. A value is written `NAME=value\n` when it
//! holds no newline, else `NAME\n`, its length as 64-bit little-endian, the
//! bytes, `\n`: binary-safe, so no value (a caller's command line, an image
//! name) can end its field early and start a forged one.

use std::os::unix::net::UnixDatagram;

pub const SOCKET: &str = "/run/systemd/journal/socket";

/// Whether `name` is a field name journald keeps: upper-case letters,
/// digits and `_`, not starting with `_` (those are journald's own,
/// trusted fields) or a digit, at most 64 bytes.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// The datagram of `fields`, in order (a name may repeat: journald keeps
/// every value). Names are wharf's own constants; one that is not valid is
/// a bug, and is dropped rather than sent for journald to reject the entry.
pub fn encode(fields: &[(&str, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        if !valid_name(name) {
            debug_assert!(false, "invalid journal field name {name:?}");
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        if value.contains('\n') {
            out.push(b'\n');
            out.extend_from_slice(&(value.len() as u64).to_le_bytes());
        } else {
            out.push(b'=');
        }
        out.extend_from_slice(value.as_bytes());
        out.push(b'\n');
    }
    out
}

/// Sends one entry to journald.
pub fn send(fields: &[(&str, String)]) -> std::io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    socket.send_to(&encode(fields), SOCKET)?;
    Ok(())
}

/// Reads a datagram back into its fields, as journald does; `None` when it
/// is malformed. For the tests: what the encoding must round-trip.
#[cfg(test)]
pub fn decode(mut data: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    let mut fields = Vec::new();
    while !data.is_empty() {
        let line_end = data.iter().position(|&b| b == b'\n')?;
        let line = &data[..line_end];
        match line.iter().position(|&b| b == b'=') {
            Some(eq) => {
                fields.push((String::from_utf8(line[..eq].to_vec()).ok()?, line[eq + 1..].to_vec()));
                data = &data[line_end + 1..];
            }
            None => {
                let name = String::from_utf8(line.to_vec()).ok()?;
                let rest = &data[line_end + 1..];
                let len = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?) as usize;
                let value = rest.get(8..8 + len)?.to_vec();
                if rest.get(8 + len) != Some(&b'\n') {
                    return None;
                }
                fields.push((name, value));
                data = &rest[8 + len + 1..];
            }
        }
    }
    Some(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_values_are_one_line() {
        let data = encode(&[("MESSAGE", "attached a".into()), ("PRIORITY", "6".into())]);
        assert_eq!(data, b"MESSAGE=attached a\nPRIORITY=6\n");
    }

    /// A value carrying a newline and what looks like another field stays
    /// one value: no field can be forged through it.
    #[test]
    fn newlines_cannot_forge_fields() {
        let hostile = "x\nMESSAGE_ID=00000000000000000000000000000000\nWHARF_CALLER_UID=0\n\u{1}\u{7f}=";
        let data = encode(&[("WHARF_IMAGE", hostile.into()), ("PRIORITY", "6".into())]);
        let fields = decode(&data).unwrap();
        assert_eq!(fields.len(), 2);
        assert_eq!(fields[0], ("WHARF_IMAGE".to_string(), hostile.as_bytes().to_vec()));
        assert_eq!(fields[1], ("PRIORITY".to_string(), b"6".to_vec()));
    }

    #[test]
    fn a_long_value_round_trips() {
        let long = "a\n".repeat(100_000);
        let fields = decode(&encode(&[("WHARF_X", long.clone())])).unwrap();
        assert_eq!(fields, [("WHARF_X".to_string(), long.into_bytes())]);
    }

    #[test]
    fn field_names() {
        assert!(valid_name("WHARF_CALLER_UID"));
        assert!(valid_name("MESSAGE_ID"));
        for bad in ["", "_UID", "lower", "A=B", "A\nB", "1A", &"A".repeat(65)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        // An invalid name is dropped, not sent.
        if !cfg!(debug_assertions) {
            assert_eq!(encode(&[("_UID", "0".into())]), b"");
        }
    }
}
