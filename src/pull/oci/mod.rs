//! Pulls from an OCI (Docker) registry: `machine pull-oci` and `portable
//! pull-oci`. What is parsed here: the reference a user gives, the
//! manifests and indexes of the distribution API v2, the platform an index
//! is resolved to, the registry's Bearer challenge and its token. The
//! downloads themselves run in `wharfd fetch` units (see `daemon::oci`);
//! [`layer`] says what a layer entry does to the tree, [`service`] writes
//! the unit a portable service gets from an image config.

pub mod layer;
pub mod service;

use std::fmt;

use serde::Deserialize;

/// The manifest types a pull asks for, in the order it prefers them.
pub const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// A manifest or an index is a small JSON document; more is no manifest.
pub const MANIFEST_LIMIT: u64 = 4 << 20;
/// An image config is too; Docker's own limit is 8 MiB.
pub const CONFIG_LIMIT: u64 = 8 << 20;
/// More layers than any real image has (Docker stops at 127).
pub const MAX_LAYERS: usize = 256;
/// The largest blob a manifest may announce.
pub const MAX_BLOB: u64 = 64 << 30;

/// Why an OCI pull was refused, in the words its user gets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OciError {
    #[error("'{reference}': {reason}")]
    Reference { reference: String, reason: String },
    #[error("{0}")]
    Manifest(String),
    #[error("the image has no manifest for {wanted} (it has: {})", if available.is_empty() { "none".to_string() } else { available.join(", ") })]
    Platform { wanted: String, available: Vec<String> },
    #[error("its SHA-256 digest is {got}, not {expected} as {named_by} says: nothing was kept")]
    Digest { expected: String, got: String, named_by: String },
    #[error("{}, not {expected} as the manifest says: nothing was kept", if got > expected { "it has more bytes".to_string() } else { format!("it has {got} bytes") })]
    Size { expected: u64, got: u64 },
    #[error("{0}")]
    Auth(String),
    #[error("{0}")]
    Layer(String),
}

/// A SHA-256 digest, as `sha256:HEX` names it (the only algorithm
/// registries use for content).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    pub fn parse(text: &str) -> Option<Digest> {
        let hex = text.strip_prefix("sha256:")?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return None;
        }
        let mut digest = [0u8; 32];
        for (i, byte) in digest.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Digest(digest))
    }

    pub fn of(data: &[u8]) -> Digest {
        use sha2::Digest as _;
        Digest(sha2::Sha256::digest(data).into())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", super::hex(&self.0))
    }
}

/// `REGISTRY/REPOSITORY[:TAG][@sha256:DIGEST]`, the registry's host (and
/// port) always named: wharf has no default registry to guess.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl Reference {
    pub fn parse(text: &str) -> Result<Reference, OciError> {
        let bad = |reason: &str| OciError::Reference { reference: printable(text), reason: reason.to_string() };
        if text.is_empty() || text.len() > 1024 || text.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(bad("a reference is REGISTRY/REPOSITORY[:TAG][@sha256:DIGEST], without blanks"));
        }
        if text.contains("://") {
            return Err(bad("a reference has no scheme: REGISTRY/REPOSITORY[:TAG], as in 127.0.0.1:5000/app:1"));
        }
        let (rest, digest) = match text.split_once('@') {
            Some((rest, digest)) => {
                let digest =
                    Digest::parse(digest).ok_or_else(|| bad("a digest is sha256: and 64 lower-case hex digits"))?;
                (rest, Some(digest))
            }
            None => (text, None),
        };
        let (registry, path) =
            rest.split_once('/').ok_or_else(|| bad("the registry must be named first (REGISTRY/REPOSITORY)"))?;
        // As Docker tells a registry from a repository's first component.
        let named = registry.contains(['.', ':', '[']) || registry == "localhost";
        if !named {
            return Err(bad(
                "the registry must be named first (REGISTRY/REPOSITORY: a host name with a dot, a :PORT, or localhost)",
            ));
        }
        if !valid_registry(registry) {
            return Err(bad("the registry is a host name or address with an optional :PORT"));
        }
        // A tag follows the last ':' after the last '/'.
        let (repository, tag) = match path.rsplit_once(':') {
            Some((repository, tag)) if !tag.contains('/') => (repository, Some(tag)),
            _ => (path, None),
        };
        if !repository.split('/').all(valid_path_component) || repository.len() > 255 {
            return Err(bad("a repository is lower-case letters and digits, separated by '.', '_', '__', '-' or '/'"));
        }
        if let Some(tag) = tag
            && !valid_tag(tag)
        {
            return Err(bad("a tag is up to 128 letters, digits, '_', '.' and '-', not starting with '.' or '-'"));
        }
        Ok(Reference {
            registry: registry.to_string(),
            repository: repository.to_string(),
            tag: tag.map(str::to_string),
            digest,
        })
    }

    /// What the manifest is fetched by: the digest when pinned, else the
    /// tag (`latest` when none is given).
    pub fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => digest.to_string(),
            (None, Some(tag)) => tag.clone(),
            (None, None) => "latest".to_string(),
        }
    }

    /// The registry's host without its port.
    pub fn host(&self) -> &str {
        let registry = self.registry.as_str();
        if let Some(rest) = registry.strip_prefix('[') {
            return rest.split_once(']').map_or(rest, |(host, _)| host);
        }
        registry.rsplit_once(':').map_or(registry, |(host, _)| host)
    }

    /// A registry on this host's loopback, spoken to over plain HTTP.
    pub fn is_loopback(&self) -> bool {
        is_loopback_host(self.host())
    }

    /// Where this registry's plain-HTTP rule comes from.
    pub fn plain_http(&self, insecure: bool) -> PlainHttp {
        if insecure {
            PlainHttp::Allowed
        } else if self.is_loopback() {
            PlainHttp::LoopbackOnly
        } else {
            PlainHttp::Refused
        }
    }

    /// `http://` for a loopback registry or with `--insecure`, else `https://`.
    pub fn base_url(&self, insecure: bool) -> String {
        let scheme = if insecure || self.is_loopback() { "http" } else { "https" };
        format!("{scheme}://{}/v2/{}", self.registry, self.repository)
    }

    /// The name an image pulled from here gets by default: the last
    /// component of the repository.
    pub fn local_name(&self) -> String {
        self.repository.rsplit('/').next().unwrap_or(&self.repository).to_string()
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        if self.tag.is_none() && self.digest.is_none() {
            f.write_str(":latest")?;
        }
        Ok(())
    }
}

fn valid_registry(registry: &str) -> bool {
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else { return false };
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        (None, if after.is_empty() { None } else { Some(after.strip_prefix(':').unwrap_or("x")) })
    } else {
        match registry.rsplit_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(registry), None),
        }
    };
    let host_ok = host.is_none_or(|host| {
        !host.is_empty()
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            })
    });
    let port_ok = port.is_none_or(|port| port.parse::<u16>().is_ok_and(|p| p != 0));
    host_ok && port_ok
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`, as the distribution spec says.
fn valid_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    if bytes.is_empty() || !is_alnum(bytes[0]) || !is_alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if is_alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !is_alnum(bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        let dashes = separator.bytes().all(|b| b == b'-');
        if !(separator == "." || separator == "_" || separator == "__" || dashes) {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

fn valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 128
        && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        && !tag.starts_with(['.', '-'])
}

/// A content descriptor: what a manifest says of a blob or a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

/// What a manifest request returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manifest {
    /// An index (manifest list): one manifest per platform.
    Index(Vec<Descriptor>),
    /// An image: its config and its layers, bottom first.
    Image { config: Descriptor, layers: Vec<Descriptor> },
}

#[derive(Deserialize)]
struct RawManifest {
    #[serde(rename = "schemaVersion", default)]
    schema_version: u32,
    #[serde(rename = "mediaType", default)]
    media_type: String,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

/// Parses a manifest or an index; `content_type` is what the registry
/// said it is (its own `mediaType` field wins).
pub fn parse_manifest(content_type: &str, body: &[u8]) -> Result<Manifest, OciError> {
    let raw: RawManifest =
        serde_json::from_slice(body).map_err(|e| OciError::Manifest(format!("the manifest is not one (JSON: {e})")))?;
    let media_type = if raw.media_type.is_empty() {
        content_type.split(';').next().unwrap_or("").trim().to_string()
    } else {
        raw.media_type.clone()
    };
    if raw.schema_version != 2 {
        return Err(OciError::Manifest(format!(
            "manifest schema version {} ({}) is not supported; only version 2",
            raw.schema_version,
            if media_type.is_empty() { "no media type" } else { media_type.as_str() }
        )));
    }
    let index = media_type.ends_with("image.index.v1+json") || media_type.ends_with("manifest.list.v2+json");
    if index || (media_type.is_empty() && raw.manifests.is_some()) {
        let manifests = raw.manifests.ok_or_else(|| OciError::Manifest("the index lists no manifests".into()))?;
        return Ok(Manifest::Index(manifests));
    }
    let image = media_type.ends_with("image.manifest.v1+json") || media_type.ends_with("manifest.v2+json");
    if !image && !media_type.is_empty() {
        return Err(OciError::Manifest(format!("a manifest of type {media_type} is no container image")));
    }
    match (raw.config, raw.layers) {
        (Some(config), Some(layers)) => {
            if layers.len() > MAX_LAYERS {
                return Err(OciError::Manifest(format!("{} layers, more than {MAX_LAYERS}", layers.len())));
            }
            for blob in layers.iter().chain(std::iter::once(&config)) {
                if Digest::parse(&blob.digest).is_none() {
                    return Err(OciError::Manifest(format!(
                        "blob digest '{}' is not sha256: and 64 hex digits",
                        printable(&blob.digest)
                    )));
                }
                if blob.size > MAX_BLOB {
                    return Err(OciError::Manifest(format!(
                        "blob {} of {} bytes is too large",
                        blob.digest, blob.size
                    )));
                }
            }
            const CONFIGS: &[&str] =
                &["application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"];
            if !CONFIGS.contains(&config.media_type.as_str()) {
                return Err(OciError::Manifest(format!(
                    "its config is of type '{}': not a container image",
                    printable(&config.media_type)
                )));
            }
            Ok(Manifest::Image { config, layers })
        }
        _ => Err(OciError::Manifest("the manifest has no config or no layers".into())),
    }
}

/// How a layer's tar is compressed, from its media type; refused: a media
/// type that is no tar archive (an encrypted layer, an artifact).
pub fn layer_is_tar(media_type: &str) -> Result<(), OciError> {
    const LAYERS: &[&str] = &[
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    ];
    if LAYERS.contains(&media_type) {
        Ok(())
    } else {
        Err(OciError::Layer(format!("a layer of type '{}' is no tar archive wharf applies", printable(media_type))))
    }
}

/// The platform this host runs, as registries name it (Go's names).
pub fn host_platform() -> Platform {
    let (architecture, variant) = match std::env::consts::ARCH {
        "x86_64" => ("amd64", None),
        "x86" => ("386", None),
        "aarch64" => ("arm64", None),
        "arm" => ("arm", Some("v7")),
        "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", None),
        "loongarch64" => ("loong64", None),
        other => (other, None),
    };
    Platform { architecture: architecture.into(), os: "linux".into(), variant: variant.map(str::to_string) }
}

/// The manifest of an index for `platform`; a variant counts only where
/// both name one (arm64's `v8` is what none means).
pub fn select_platform<'a>(manifests: &'a [Descriptor], platform: &Platform) -> Result<&'a Descriptor, OciError> {
    let same_variant = |theirs: &Option<String>| match (theirs.as_deref(), platform.variant.as_deref()) {
        (Some(theirs), Some(ours)) => theirs == ours,
        (Some("v8"), None) => platform.architecture == "arm64",
        (Some(_), None) => false,
        (None, _) => true,
    };
    manifests
        .iter()
        .find(|m| {
            m.platform.as_ref().is_some_and(|p| {
                p.os == platform.os && p.architecture == platform.architecture && same_variant(&p.variant)
            })
        })
        .ok_or_else(|| OciError::Platform {
            wanted: platform.to_string(),
            available: manifests
                .iter()
                .filter_map(|m| m.platform.as_ref())
                // Attestation manifests (buildx) are no platform.
                .filter(|p| p.os != "unknown")
                .map(|p| p.to_string())
                .collect(),
        })
}

/// `WWW-Authenticate: SCHEME k="v", ...` of a 401.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub params: Vec<(String, String)>,
}

impl Challenge {
    pub fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim();
        let (scheme, mut rest) = header.split_once(char::is_whitespace).unwrap_or((header, ""));
        if scheme.is_empty() {
            return None;
        }
        let mut params = Vec::new();
        loop {
            rest = rest.trim_start_matches([' ', '\t', ',']);
            if rest.is_empty() {
                break;
            }
            let (key, after) = rest.split_once('=')?;
            let key = key.trim().to_ascii_lowercase();
            if key.is_empty() || key.contains([' ', ',', '"']) {
                return None;
            }
            let after = after.trim_start();
            let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
                let mut value = String::new();
                let mut chars = quoted.char_indices();
                let mut end = None;
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => value.push(chars.next()?.1),
                        '"' => {
                            end = Some(i + 1);
                            break;
                        }
                        c => value.push(c),
                    }
                }
                (value, &quoted[end?..])
            } else {
                let end = after.find(',').unwrap_or(after.len());
                (after[..end].trim().to_string(), &after[end..])
            };
            params.push((key, value));
            rest = remaining;
        }
        Some(Challenge { scheme: scheme.to_string(), params })
    }

    pub fn param(&self, key: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The URL of the token for a Bearer challenge, for pulling
    /// `repository`. The realm must be a web URL, https unless plain HTTP
    /// is allowed: a loopback registry may send wharf to a token server
    /// on the loopback, not to one anywhere over plain HTTP.
    pub fn token_url(&self, repository: &str, plain_http: PlainHttp) -> Result<String, OciError> {
        if !self.scheme.eq_ignore_ascii_case("bearer") {
            return Err(OciError::Auth(format!(
                "the registry wants {} authentication; wharf pulls anonymously or with a Bearer token",
                printable(&self.scheme)
            )));
        }
        let realm = self.param("realm").ok_or_else(|| OciError::Auth("its Bearer challenge names no realm".into()))?;
        if let (PlainHttp::LoopbackOnly, Some(rest)) = (plain_http, realm.strip_prefix("http://"))
            && !is_loopback_host(url_host(rest))
        {
            return Err(OciError::Auth(format!(
                "its token realm '{}' is plain HTTP off this host: only a token server on the loopback may be \
                 spoken to without TLS (or pull with --insecure)",
                printable(realm)
            )));
        }
        let web = realm.starts_with("https://") || (plain_http != PlainHttp::Refused && realm.starts_with("http://"));
        if !web || realm.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(OciError::Auth(format!("its token realm '{}' is not an https:// URL", printable(realm))));
        }
        let default_scope = format!("repository:{repository}:pull");
        let scope = self.param("scope").unwrap_or(&default_scope);
        let mut url = realm.to_string();
        let mut separator = if realm.contains('?') { '&' } else { '?' };
        if let Some(service) = self.param("service") {
            url.push(separator);
            url.push_str(&format!("service={}", percent_encode(service)));
            separator = '&';
        }
        url.push(separator);
        url.push_str(&format!("scope={}", percent_encode(scope)));
        Ok(url)
    }
}

/// Whether a registry's conversation may use plain HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlainHttp {
    /// `--insecure`: anywhere.
    Allowed,
    /// A loopback registry: only with this host's loopback.
    LoopbackOnly,
    Refused,
}

/// `localhost`, `::1` or an address in 127.0.0.0/8.
fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host == "::1"
        || host.parse::<std::net::Ipv4Addr>().is_ok_and(|a| a.is_loopback())
}

/// The host of a URL's authority (what follows its `scheme://`), without
/// user information, port or brackets.
fn url_host(rest: &str) -> &str {
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    if let Some(bracketed) = authority.strip_prefix('[') {
        return bracketed.split_once(']').map_or(bracketed, |(host, _)| host);
    }
    authority.rsplit_once(':').map_or(authority, |(host, _)| host)
}

/// The token a token server answered: `token` or `access_token`. It goes
/// into a request header, so only what a header value may hold is taken.
pub fn parse_token(body: &[u8]) -> Result<String, OciError> {
    #[derive(Deserialize)]
    struct Answer {
        token: Option<String>,
        access_token: Option<String>,
    }
    let answer: Answer = serde_json::from_slice(body)
        .map_err(|e| OciError::Auth(format!("the token server's answer is no token (JSON: {e})")))?;
    let token = answer
        .token
        .filter(|t| !t.is_empty())
        .or(answer.access_token)
        .ok_or_else(|| OciError::Auth("the token server's answer holds no token".into()))?;
    if token.is_empty() || token.len() > 16 << 10 || !token.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return Err(OciError::Auth("the token server's token is not a header value".into()));
    }
    Ok(token)
}

fn percent_encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The image config's part that says how to run it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub exposed_ports: Option<std::collections::BTreeMap<String, serde_json::Value>>,
}

/// An image config (`application/vnd.oci.image.config.v1+json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub config: Option<RunConfig>,
}

pub fn parse_config(body: &[u8]) -> Result<ImageConfig, OciError> {
    serde_json::from_slice(body).map_err(|e| OciError::Manifest(format!("the image config is not one (JSON: {e})")))
}

/// `text` with control characters shown escaped, for a message.
pub(crate) fn printable(text: &str) -> String {
    text.chars().flat_map(char::escape_debug).collect::<String>().chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn references_name_their_registry_and_default_to_latest() {
        let r = Reference::parse("127.0.0.1:5000/wharf/app:1.0").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "wharf/app", Some("1.0"))
        );
        assert_eq!(r.manifest_ref(), "1.0");
        assert_eq!(r.base_url(false), "http://127.0.0.1:5000/v2/wharf/app");
        assert_eq!(r.local_name(), "app");
        let r = Reference::parse("registry.example.org/library/debian").unwrap();
        assert_eq!(r.manifest_ref(), "latest");
        assert_eq!(r.to_string(), "registry.example.org/library/debian:latest");
        assert_eq!(r.base_url(false), "https://registry.example.org/v2/library/debian");
        assert_eq!(r.base_url(true), "http://registry.example.org/v2/library/debian");
        assert!(!r.is_loopback());
        let r = Reference::parse(&format!("localhost:5000/app:1@{DIGEST}")).unwrap();
        assert_eq!(r.manifest_ref(), DIGEST);
        assert!(r.is_loopback());
        assert_eq!(r.host(), "localhost");
        let r = Reference::parse("[::1]:5000/app").unwrap();
        assert!(r.is_loopback());
        assert_eq!(Reference::parse("reg:5000/a/b-c__d.e").unwrap().repository, "a/b-c__d.e");
        assert_eq!(Reference::parse("localhost/app").unwrap().registry, "localhost");
    }

    #[test]
    fn bad_references_are_refused_in_one_line() {
        for (text, reason) in [
            ("debian", "registry must be named first"),
            ("library/debian", "registry must be named first"),
            ("https://reg/app", "no scheme"),
            ("reg.io/App", "lower-case"),
            ("reg.io/a//b", "lower-case"),
            ("reg.io/../etc", "lower-case"),
            ("reg.io/app:.x", "a tag is"),
            ("reg.io/app@sha256:12", "digest is sha256"),
            ("reg.io/app@md5:0123456789abcdef0123456789abcdef", "digest is sha256"),
            ("reg:0/app", "registry is"),
            ("reg:99999/app", "registry is"),
            ("re g.io/app", "without blanks"),
            ("reg.io/app\n", "without blanks"),
            ("-reg.io/app", "registry is"),
        ] {
            let error = Reference::parse(text).unwrap_err().to_string();
            assert!(error.contains(reason), "{text:?}: {error}");
            assert!(!error.contains('\n'), "{text:?}: {error}");
        }
    }

    #[test]
    fn digests_read_back_as_written() {
        let digest = Digest::parse(DIGEST).unwrap();
        assert_eq!(digest.to_string(), DIGEST);
        assert_eq!(Digest::parse(&DIGEST.to_uppercase().replace("SHA256", "sha256")), None);
        assert_eq!(
            Digest::of(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    fn image_manifest(config_type: &str, layer_count: usize) -> String {
        let layer =
            format!(r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{DIGEST}","size":10}}"#);
        let layers = vec![layer; layer_count].join(",");
        format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
                "config":{{"mediaType":"{config_type}","digest":"{DIGEST}","size":2}},"layers":[{layers}]}}"#
        )
    }

    #[test]
    fn manifests_and_indexes_are_told_apart() {
        let manifest = image_manifest("application/vnd.oci.image.config.v1+json", 2);
        let Manifest::Image { config, layers } = parse_manifest("", manifest.as_bytes()).unwrap() else { panic!() };
        assert_eq!((config.size, layers.len()), (2, 2));
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json",
                "digest":"{DIGEST}","size":5,"platform":{{"architecture":"arm64","os":"linux"}}}}]}}"#
        );
        let parsed = parse_manifest("application/vnd.docker.distribution.manifest.list.v2+json", index.as_bytes());
        assert!(matches!(parsed, Ok(Manifest::Index(m)) if m.len() == 1));
        let error = parse_manifest("", image_manifest("application/vnd.cncf.helm.config.v1+json", 1).as_bytes());
        assert!(error.unwrap_err().to_string().contains("not a container image"));
        let error = parse_manifest("", image_manifest("application/vnd.oci.image.config.v1+json", 300).as_bytes());
        assert!(error.unwrap_err().to_string().contains("more than 256"));
        let schema1 = br#"{"schemaVersion":1,"name":"x","fsLayers":[]}"#;
        assert!(parse_manifest("application/vnd.docker.distribution.manifest.v1+prettyjws", schema1).is_err());
        assert!(parse_manifest("", b"<html>").unwrap_err().to_string().contains("not one"));
        let bad_digest =
            image_manifest("application/vnd.oci.image.config.v1+json", 1).replacen(DIGEST, "sha256:../x", 1);
        assert!(parse_manifest("", bad_digest.as_bytes()).unwrap_err().to_string().contains("is not sha256"));
    }

    #[test]
    fn layers_are_tar_archives_by_media_type() {
        assert!(layer_is_tar("application/vnd.oci.image.layer.v1.tar+zstd").is_ok());
        assert!(layer_is_tar("application/vnd.docker.image.rootfs.diff.tar.gzip").is_ok());
        assert!(layer_is_tar("application/vnd.oci.image.layer.v1.tar+gzip+encrypted").is_err());
    }

    fn descriptor(architecture: &str, variant: Option<&str>) -> Descriptor {
        Descriptor {
            media_type: String::new(),
            digest: DIGEST.into(),
            size: 1,
            platform: Some(Platform {
                architecture: architecture.into(),
                os: "linux".into(),
                variant: variant.map(Into::into),
            }),
        }
    }

    #[test]
    fn an_index_resolves_to_the_hosts_platform_or_says_what_it_has() {
        let amd64 = Platform { architecture: "amd64".into(), os: "linux".into(), variant: None };
        let arm64 = Platform { architecture: "arm64".into(), os: "linux".into(), variant: None };
        let armv7 = Platform { architecture: "arm".into(), os: "linux".into(), variant: Some("v7".into()) };
        let list = vec![
            descriptor("arm", Some("v6")),
            descriptor("arm", Some("v7")),
            descriptor("arm64", Some("v8")),
            descriptor("amd64", None),
        ];
        assert_eq!(select_platform(&list, &amd64).unwrap().platform.as_ref().unwrap().architecture, "amd64");
        assert_eq!(select_platform(&list, &arm64).unwrap().platform.as_ref().unwrap().architecture, "arm64");
        assert_eq!(select_platform(&list, &armv7).unwrap().platform.as_ref().unwrap().variant.as_deref(), Some("v7"));
        let error = select_platform(&list[..1], &amd64).unwrap_err();
        assert_eq!(error.to_string(), "the image has no manifest for linux/amd64 (it has: linux/arm/v6)");
        assert!(select_platform(&[], &amd64).unwrap_err().to_string().ends_with("(it has: none)"));
        assert!(!host_platform().architecture.is_empty());
    }

    #[test]
    fn bearer_challenges_give_the_token_url() {
        let challenge = Challenge::parse(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/debian:pull""#,
        )
        .unwrap();
        assert_eq!(challenge.scheme, "Bearer");
        assert_eq!(challenge.param("service"), Some("registry.docker.io"));
        assert_eq!(
            challenge.token_url("library/debian", PlainHttp::Refused).unwrap(),
            "https://auth.docker.io/token?service=registry.docker.io&scope=repository%3Alibrary%2Fdebian%3Apull"
        );
        // Without a scope, the pull's own; quoted commas and escapes hold.
        let challenge = Challenge::parse(r#"Bearer realm="https://h/t?a=1", service="a,\"b""#).unwrap();
        assert_eq!(challenge.param("service"), Some("a,\"b"));
        assert_eq!(
            challenge.token_url("x/y", PlainHttp::Refused).unwrap(),
            "https://h/t?a=1&service=a%2C%22b&scope=repository%3Ax%2Fy%3Apull"
        );
        // A plain-HTTP realm only where plain HTTP is allowed.
        let plain = Challenge::parse(r#"Bearer realm="http://127.0.0.1:5001/token""#).unwrap();
        assert!(plain.token_url("a", PlainHttp::Refused).unwrap_err().to_string().contains("not an https:// URL"));
        for allowed in [PlainHttp::LoopbackOnly, PlainHttp::Allowed] {
            assert_eq!(
                plain.token_url("a", allowed).unwrap(),
                "http://127.0.0.1:5001/token?scope=repository%3Aa%3Apull"
            );
        }
        // A loopback registry cannot send wharf over plain HTTP elsewhere,
        // whatever the URL's user information or brackets say.
        for elsewhere in [
            "http://192.0.2.1/token",
            "http://127.0.0.1@192.0.2.1/token",
            "http://[2001:db8::1]:80/t",
            "http://localhost.example.com/t",
        ] {
            let challenge = Challenge::parse(&format!(r#"Bearer realm="{elsewhere}""#)).unwrap();
            let refused = challenge.token_url("a", PlainHttp::LoopbackOnly).unwrap_err().to_string();
            assert!(refused.contains("plain HTTP off this host"), "{elsewhere}: {refused}");
            assert!(challenge.token_url("a", PlainHttp::Allowed).is_ok());
        }
        for loopback in ["http://localhost:5003/t", "http://[::1]:5003/t", "http://127.0.0.2/t?x=@evil"] {
            let challenge = Challenge::parse(&format!(r#"Bearer realm="{loopback}""#)).unwrap();
            assert!(challenge.token_url("a", PlainHttp::LoopbackOnly).is_ok(), "{loopback}");
        }
        let basic = Challenge::parse(r#"Basic realm="Registry""#).unwrap();
        assert!(basic.token_url("a", PlainHttp::Refused).unwrap_err().to_string().contains("Basic authentication"));
        assert!(Challenge::parse(r#"Bearer realm="https://h/t"#).is_none(), "an unterminated quote");
        assert!(Challenge::parse(r#"Bearer service="s""#).unwrap().token_url("a", PlainHttp::Refused).is_err());
        let file = Challenge::parse(r#"Bearer realm="file:///etc/shadow""#).unwrap();
        assert!(file.token_url("a", PlainHttp::Allowed).is_err());
    }

    #[test]
    fn tokens_are_header_values() {
        assert_eq!(parse_token(br#"{"token":"abc.def","expires_in":300}"#).unwrap(), "abc.def");
        assert_eq!(parse_token(br#"{"access_token":"xyz"}"#).unwrap(), "xyz");
        assert_eq!(parse_token(br#"{"token":"","access_token":"xyz"}"#).unwrap(), "xyz");
        assert!(parse_token(br#"{"token":"a\r\nX-Evil: 1"}"#).is_err());
        assert!(parse_token(br#"{}"#).is_err());
        assert!(parse_token(b"nope").is_err());
    }

    #[test]
    fn image_configs_read_nulls_as_nothing() {
        let config = parse_config(
            br#"{"architecture":"amd64","os":"linux","config":{"Entrypoint":null,"Cmd":["/bin/sh"],"Env":["A=1"],
                 "ExposedPorts":{"80/tcp":{}},"User":"1000:1000","WorkingDir":"/srv"}}"#,
        )
        .unwrap();
        let run = config.config.unwrap();
        assert_eq!(run.entrypoint, None);
        assert_eq!(run.cmd.unwrap(), ["/bin/sh"]);
        assert_eq!(run.exposed_ports.unwrap().keys().collect::<Vec<_>>(), ["80/tcp"]);
    }
}
