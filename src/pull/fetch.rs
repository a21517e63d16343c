//! `wharfd fetch URL`: one download, in a sandboxed unit of its own (see
//! `daemon::pull`). The body goes to standard output as it arrives;
//! standard error carries what wharfd needs to know, one report a line:
//! `size N` once the length is known, then `done N` after the last byte or
//! `failed STATUS REASON` (STATUS: the HTTP status, or 0). A fetcher that
//! ends without `done` did not deliver the whole file, whatever its output.

use std::fmt;
use std::io::Write;
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::time::Duration;

/// A server that sends nothing for this long has stalled.
pub const STALL: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_REDIRECTS: u32 = 8;

#[derive(Debug, clap::Args)]
pub struct FetchArgs {
    /// The http:// or https:// URL to download.
    pub url: String,
    /// Read request headers from standard input (one `Name: value` a
    /// line, to its end; a registry's token is no argument every user can
    /// see), and report the response headers a registry pull needs.
    #[arg(long)]
    pub headers: bool,
    /// End the download after this many seconds, complete or not.
    #[arg(long, value_name = "SECONDS")]
    pub max_time: Option<u64>,
}

/// The response headers a fetcher with `--headers` reports.
pub const REPORTED_HEADERS: &[&str] = &["www-authenticate", "content-type", "docker-content-digest"];
/// At most this many request headers, each at most this long.
const MAX_REQUEST_HEADERS: usize = 16;
const MAX_HEADER_LEN: usize = 16 << 10;

/// Why a download did not deliver its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The server answered with this HTTP status.
    Http(u32),
    /// The network, the server or TLS failed, as libcurl says it.
    Transfer(String),
    /// The fetcher ended without saying the file was complete.
    Ended,
    /// More than a small file (a SHA256SUMS, a signature) may be.
    TooLarge(u64),
    /// The fetcher could not be started.
    Start(String),
}

impl Failure {
    /// Whether the file is not there (so another name may be tried).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Failure::Http(404 | 410))
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Http(404) => f.write_str("the server has no such file (HTTP 404)"),
            Failure::Http(status) => write!(f, "the server answered HTTP {status}"),
            Failure::Transfer(reason) => f.write_str(reason),
            Failure::Ended => f.write_str("the download ended before the file was complete"),
            Failure::TooLarge(limit) => write!(f, "is larger than {limit} bytes, more than such a file may be"),
            Failure::Start(reason) => write!(f, "cannot start the download: {reason}"),
        }
    }
}

/// One line of a fetcher's reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    Size(u64),
    Done(u64),
    Failed(u32, String),
    /// A response header (its name in lower case), with `--headers`.
    Header(String, String),
}

impl Report {
    pub fn parse(line: &str) -> Option<Report> {
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        match word {
            "size" => rest.trim().parse().ok().map(Report::Size),
            "done" => rest.trim().parse().ok().map(Report::Done),
            "header" => {
                let (name, value) = rest.split_once(' ').unwrap_or((rest, ""));
                Some(Report::Header(name.to_string(), value.to_string()))
            }
            "failed" => {
                let (status, reason) = rest.split_once(' ').unwrap_or((rest, ""));
                Some(Report::Failed(status.parse().unwrap_or(0), reason.to_string()))
            }
            _ => None,
        }
    }

    fn line(&self) -> String {
        match self {
            Report::Size(size) => format!("size {size}\n"),
            Report::Done(bytes) => format!("done {bytes}\n"),
            Report::Failed(status, reason) => format!("failed {status} {}\n", reason.replace('\n', " ")),
            Report::Header(name, value) => format!("header {name} {}\n", value.replace(['\n', '\r'], " ")),
        }
    }
}

/// How a download ended, from every report its fetcher made and the bytes
/// that came through the pipe.
pub fn outcome(reports: &[Report], received: u64) -> Result<(), Failure> {
    for report in reports {
        match report {
            Report::Failed(status, _) if (400..600).contains(status) => return Err(Failure::Http(*status)),
            Report::Failed(_, reason) => return Err(Failure::Transfer(reason.clone())),
            Report::Done(sent) if *sent == received => return Ok(()),
            Report::Done(_) | Report::Size(_) | Report::Header(..) => {}
        }
    }
    Err(Failure::Ended)
}

pub fn main(args: FetchArgs) -> ExitCode {
    let report = |report: Report| {
        // Nothing else can be told if standard error is gone.
        let _ = std::io::stderr().write_all(report.line().as_bytes());
    };
    let headers = if args.headers {
        match request_headers(std::io::stdin().lock()) {
            Ok(headers) => headers,
            Err(reason) => {
                report(Report::Failed(0, reason));
                return ExitCode::FAILURE;
            }
        }
    } else {
        Vec::new()
    };
    let max_time = args.max_time.map(Duration::from_secs);
    match fetch(&args.url, args.headers.then_some(headers.as_slice()), max_time, &report) {
        Ok(bytes) => {
            report(Report::Done(bytes));
            ExitCode::SUCCESS
        }
        Err((status, reason)) => {
            report(Report::Failed(status, reason));
            ExitCode::FAILURE
        }
    }
}

/// The request headers on standard input: `Name: value` lines.
fn request_headers(input: impl std::io::Read) -> Result<Vec<String>, String> {
    use std::io::BufRead;
    let mut headers = Vec::new();
    for line in std::io::BufReader::new(input.take((MAX_REQUEST_HEADERS * MAX_HEADER_LEN) as u64)).lines() {
        let line = line.map_err(|e| format!("cannot read the request headers: {e}"))?;
        if line.is_empty() {
            continue;
        }
        let valid = line
            .split_once(": ")
            .is_some_and(|(name, _)| !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
            && line.bytes().all(|b| (0x20..0x7f).contains(&b));
        if !valid || line.len() > MAX_HEADER_LEN || headers.len() == MAX_REQUEST_HEADERS {
            return Err("the request headers are not headers".into());
        }
        headers.push(line);
    }
    Ok(headers)
}

/// Downloads `url` to standard output; the bytes sent, or (HTTP status or
/// 0, reason). With `headers` (a registry's request), those are sent,
/// the response headers a pull needs are reported, and the body of an
/// error status is dropped (its status is what counts).
fn fetch(
    url: &str,
    headers: Option<&[String]>,
    max_time: Option<Duration>,
    report: &dyn Fn(Report),
) -> Result<u64, (u32, String)> {
    let setup = |e: curl::Error| (0, describe(&e));
    let mut output =
        std::io::stdout().as_fd().try_clone_to_owned().map(std::fs::File::from).map_err(|e| (0, e.to_string()))?;
    let mut easy = curl::easy::Easy::new();
    easy.url(url).map_err(setup)?;
    easy.follow_location(true).map_err(setup)?;
    easy.max_redirections(MAX_REDIRECTS).map_err(setup)?;
    easy.fail_on_error(headers.is_none()).map_err(setup)?;
    if let Some(headers) = headers {
        let mut list = curl::easy::List::new();
        for header in headers {
            list.append(header).map_err(setup)?;
        }
        easy.http_headers(list).map_err(setup)?;
    }
    let registry = headers.is_some();
    // The status of the response being received (a redirect's first).
    let status = std::cell::Cell::new(0u32);
    easy.connect_timeout(CONNECT_TIMEOUT).map_err(setup)?;
    // A stall, not a slow link, is what ends a download.
    easy.low_speed_limit(1).map_err(setup)?;
    easy.low_speed_time(STALL).map_err(setup)?;
    if let Some(max_time) = max_time {
        easy.timeout(max_time).map_err(setup)?;
    }
    let started = std::time::Instant::now();
    easy.useragent(concat!("wharf/", env!("CARGO_PKG_VERSION"))).map_err(setup)?;
    easy.progress(true).map_err(setup)?;
    let mut sent = 0u64;
    let mut size_told = false;
    let performed = {
        let mut transfer = easy.transfer();
        transfer
            .write_function(|data| {
                if registry && status.get() >= 400 {
                    // An error page: its status says all (and is reported).
                    return Ok(data.len());
                }
                match output.write_all(data) {
                    Ok(()) => {
                        sent += data.len() as u64;
                        Ok(data.len())
                    }
                    // Fewer bytes taken than given: libcurl stops with a write error.
                    Err(_) => Ok(0),
                }
            })
            .map_err(setup)?;
        if registry {
            transfer
                .header_function(|line| {
                    let line = String::from_utf8_lossy(line);
                    let line = line.trim_end();
                    if let Some(rest) = line.strip_prefix("HTTP/") {
                        let code = rest.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
                        status.set(code);
                    } else if let Some((name, value)) = line.split_once(':') {
                        let name = name.trim().to_ascii_lowercase();
                        if (REPORTED_HEADERS.contains(&name.as_str()) && status.get() < 300)
                            || name == "www-authenticate"
                        {
                            report(Report::Header(name, value.trim().chars().take(4096).collect()));
                        }
                    }
                    true
                })
                .map_err(setup)?;
        }
        transfer
            .progress_function(|total, _, _, _| {
                if !size_told && total > 0.0 {
                    size_told = true;
                    report(Report::Size(total as u64));
                }
                true
            })
            .map_err(setup)?;
        transfer.perform()
    };
    match performed {
        Ok(()) if registry && status.get() >= 400 => {
            let code = status.get();
            Err((code, format!("the registry answered HTTP {code}")))
        }
        Ok(()) => Ok(sent),
        Err(e) if e.is_http_returned_error() => {
            let status = easy.response_code().unwrap_or(0);
            Err((status, describe(&e)))
        }
        Err(e) if e.is_write_error() => Err((0, "wharfd stopped reading the download".into())),
        Err(e) if e.is_operation_timedout() => match max_time.filter(|&max| started.elapsed() >= max) {
            Some(max) => {
                Err((0, format!("the server did not send it all within {} s ({sent} bytes came)", max.as_secs())))
            }
            None if sent > 0 => {
                Err((0, format!("the server sent nothing for {} s after {sent} bytes", STALL.as_secs())))
            }
            None => Err((0, describe(&e))),
        },
        Err(e) if e.is_peer_failed_verification() || e.is_ssl_cacert() || e.is_ssl_certproblem() => {
            // The host that failed, which a redirect may have changed.
            let failed_at = easy.effective_url().ok().flatten().unwrap_or(url).to_string();
            Err((0, certificate_failure(host_of(&failed_at), &describe(&e))))
        }
        Err(e) if e.is_ssl_cacert_badfile() => Err((0, format!("cannot read the system's CA store: {}", describe(&e)))),
        Err(e) if e.is_ssl_connect_error() => {
            let failed_at = easy.effective_url().ok().flatten().unwrap_or(url).to_string();
            Err((0, format!("the TLS handshake with {} failed: {}", host_of(&failed_at), describe(&e))))
        }
        Err(e) => Err((0, describe(&e))),
    }
}

/// Where the system's certificate authorities are, as Debian's libcurl is
/// built to read them (`update-ca-certificates` writes both).
pub const CA_STORE: &str = "/etc/ssl/certs";

/// The host (and port) part of a URL.
fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    authority.rsplit_once('@').map_or(authority, |(_, host)| host)
}

/// What a certificate that libcurl refused means for the user, from the
/// TLS library's words for it (OpenSSL's, GnuTLS's): the host it was
/// for, and why, without libcurl's error codes.
fn certificate_failure(host: &str, detail: &str) -> String {
    let lower = detail.to_ascii_lowercase();
    const PROBLEM: &str = "ssl certificate problem: ";
    let said = if lower.starts_with(PROBLEM) { &detail[PROBLEM.len()..] } else { detail };
    let why = said.to_ascii_lowercase();
    if lower.contains("subject name") || lower.contains("does not match") || lower.contains("mismatch") {
        format!("the TLS certificate of {host} could not be verified: it is for another host name")
    } else if why.contains("expired") {
        format!("the TLS certificate of {host} could not be verified: it has expired")
    } else if why.contains("not yet valid") {
        format!("the TLS certificate of {host} could not be verified: it is not valid yet")
    } else if why.contains("issuer")
        || why.contains("self-signed")
        || why.contains("self signed")
        || why.contains("unknown ca")
    {
        format!(
            "the TLS certificate of {host} could not be verified: no certificate authority in the system's CA store \
             ({CA_STORE}) vouches for it"
        )
    } else {
        format!("the TLS certificate of {host} could not be verified: {said}")
    }
}

/// libcurl's own words for an error: the detailed ones when it has them.
fn describe(error: &curl::Error) -> String {
    let detail = error.extra_description().unwrap_or_default().trim().to_string();
    if detail.is_empty() { error.description().to_string() } else { detail }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_read_back_as_written() {
        for report in [Report::Size(1 << 30), Report::Done(7), Report::Failed(404, "Not Found".into())] {
            assert_eq!(Report::parse(report.line().trim_end()), Some(report));
        }
        // A reason never takes more than its line.
        let line = Report::Failed(0, "a\nb".into()).line();
        assert_eq!(line, "failed 0 a b\n");
        assert_eq!(Report::parse("thread 'main' panicked"), None);
    }

    #[test]
    fn request_headers_are_header_lines_only() {
        let headers = request_headers(&b"Accept: a/b, c/d\nAuthorization: Bearer x.y\n\n"[..]).unwrap();
        assert_eq!(headers, ["Accept: a/b, c/d", "Authorization: Bearer x.y"]);
        assert!(request_headers(&b"no colon\n"[..]).is_err());
        assert!(request_headers(&b"A: b\rX-Evil: 1\n"[..]).is_err());
        let header = Report::Header("www-authenticate".into(), "Bearer realm=\"x\"".into());
        assert_eq!(Report::parse(header.line().trim_end()), Some(header));
    }

    #[test]
    fn only_a_done_with_every_byte_is_a_complete_download() {
        assert_eq!(outcome(&[Report::Size(10), Report::Done(10)], 10), Ok(()));
        // The fetcher was killed, or its pipe lost bytes.
        assert_eq!(outcome(&[Report::Size(10)], 10), Err(Failure::Ended));
        assert_eq!(outcome(&[Report::Done(10)], 9), Err(Failure::Ended));
        assert_eq!(outcome(&[], 0), Err(Failure::Ended));
        assert_eq!(outcome(&[Report::Failed(404, "x".into())], 0), Err(Failure::Http(404)));
        assert!(Failure::Http(404).is_not_found());
        let refused = outcome(&[Report::Failed(0, "Failed to connect to 127.0.0.1 port 9".into())], 0);
        assert_eq!(refused, Err(Failure::Transfer("Failed to connect to 127.0.0.1 port 9".into())));
    }

    #[test]
    fn hosts_are_named_without_path_or_credentials() {
        assert_eq!(host_of("https://127.0.0.1:8645/a/b.raw?x=1"), "127.0.0.1:8645");
        assert_eq!(host_of("https://user:pw@mirror.example/f28.tar.xz"), "mirror.example");
        assert_eq!(host_of("https://[::1]:443"), "[::1]:443");
    }

    #[test]
    fn refused_certificates_say_why_in_plain_words() {
        let host = "127.0.0.1:8645";
        // OpenSSL's words (bookworm's and trixie's libcurl), as libcurl passes them.
        let unknown = certificate_failure(host, "SSL certificate problem: unable to get local issuer certificate");
        assert_eq!(
            unknown,
            "the TLS certificate of 127.0.0.1:8645 could not be verified: no certificate authority in the \
             system's CA store (/etc/ssl/certs) vouches for it"
        );
        let own = certificate_failure(host, "SSL certificate problem: self-signed certificate");
        assert_eq!(own, unknown);
        let other = certificate_failure(
            "localhost:8645",
            "SSL: no alternative certificate subject name matches target host name 'localhost'",
        );
        assert_eq!(other, "the TLS certificate of localhost:8645 could not be verified: it is for another host name");
        // GnuTLS's.
        let gnutls = certificate_failure(host, "server verification failed: certificate has expired");
        assert!(gnutls.ends_with("it has expired"), "{gnutls}");
        let unknown_words = certificate_failure(host, "SSL certificate problem: invalid CA certificate");
        assert!(unknown_words.ends_with(": invalid CA certificate"), "{unknown_words}");
        let openssl_host_check = certificate_failure(host, "SSL certificate problem: Hostname mismatch");
        assert!(openssl_host_check.ends_with("it is for another host name"), "{openssl_host_check}");
        for said in [unknown, other, gnutls, unknown_words, openssl_host_check] {
            assert!(!said.contains("curl") && !said.contains("60") && !said.contains('\n'), "{said}");
        }
    }
}
