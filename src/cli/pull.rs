//! The options `machine pull-raw`, `machine pull-tar` and `portable pull`
//! share, as importctl's pull verbs take them.

/// Where an image comes from and how it is checked.
#[derive(Debug, Clone, clap::Args)]
pub struct PullArgs {
    /// The image's http:// or https:// URL.
    pub url: String,
    /// Image name; by default the URL's file name without its suffixes.
    pub name: Option<String>,
    /// What must hold before the image is kept: no (nothing), checksum (its
    /// SHA-256 is the one SHA256SUMS or FILE.sha256 beside it lists) or
    /// signature (and that file is signed by a key of the import keyring).
    #[arg(long, value_name = "MODE", default_value = "signature", value_parser = ["no", "checksum", "signature"])]
    pub verify: String,
    /// Mark the image read-only once it is pulled.
    #[arg(long)]
    pub read_only: bool,
    /// Replace an image of that name, once the new one is verified (not a
    /// read-only one, one in use, or one outside the pool's first directory).
    #[arg(long)]
    pub force: bool,
}

impl PullArgs {
    /// The flags of PullImage.
    pub fn flags(&self) -> u64 {
        use crate::api::pull_flags;
        (if self.read_only { pull_flags::READ_ONLY } else { 0 }) | (if self.force { pull_flags::FORCE } else { 0 })
    }

    /// The name as wharfd takes it: empty for the one from the URL.
    pub fn name_for_daemon(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }

    /// The image's name as wharfd will take it, for messages: the one given,
    /// else the URL's file name without its suffixes (the URL, if it has none).
    pub fn local_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            crate::pull::Source::parse(&self.url).map(|source| source.local_name()).unwrap_or_else(|_| self.url.clone())
        })
    }
}

/// What `machine pull-oci` and `portable pull-oci` take.
#[derive(Debug, Clone, clap::Args)]
pub struct OciPullArgs {
    /// REGISTRY/REPOSITORY[:TAG][@sha256:DIGEST]; the registry always first
    /// (a host name with a dot, a :PORT, or localhost), the tag latest by default.
    #[arg(value_name = "REFERENCE")]
    pub reference: String,
    /// Image name; by default the repository's last component.
    pub name: Option<String>,
    /// Speak plain HTTP to the registry (a registry on localhost or
    /// 127.0.0.0/8 always is spoken to so); without it, https:// with the
    /// system's CA certificates.
    #[arg(long)]
    pub insecure: bool,
    /// Mark the image read-only once it is pulled.
    #[arg(long)]
    pub read_only: bool,
    /// Replace an image of that name, once the new one is verified (not a
    /// read-only one, one in use, or one outside the pool's first directory).
    #[arg(long)]
    pub force: bool,
}

impl OciPullArgs {
    /// The flags of PullOciImage.
    pub fn flags(&self) -> u64 {
        use crate::api::pull_flags;
        (if self.read_only { pull_flags::READ_ONLY } else { 0 })
            | (if self.force { pull_flags::FORCE } else { 0 })
            | (if self.insecure { pull_flags::INSECURE } else { 0 })
    }

    pub fn name_for_daemon(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }

    /// The image's name as wharfd will take it, for messages.
    pub fn local_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            crate::pull::oci::Reference::parse(&self.reference)
                .map(|r| r.local_name())
                .unwrap_or_else(|_| self.reference.clone())
        })
    }
}
