//! The optional loopback TCP listener's request policy, for clients that cannot reach a Unix
//! socket (off by default).
//!
//! A TCP port on localhost is reachable by every local user and, through DNS rebinding, by web
//! pages (Ollama's CVE-2024-28224). So every request must carry the bearer token from a 0600 file
//! in the data dir, name a loopback `Host` with our port, and come from no `Origin` or an allowed
//! one. CORS headers are sent only to allowed origins. The `Host` check cannot be side-stepped:
//! a request with two `Host` headers is refused (RFC 9112 §3.2: 400), and an absolute-form target
//! (`GET http://evil.example/...`, whose authority a server must prefer to `Host`) must name us too.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use http::header::{HeaderValue, AUTHORIZATION, HOST, ORIGIN};
use http::{HeaderMap, Method, StatusCode, Uri};

use super::error::ApiError;
use crate::error_code::ErrorCode;

/// File in the data dir that holds the bearer token.
pub const TOKEN_FILE: &str = "tcp-token";

/// What a TCP request must satisfy.
#[derive(Debug, Clone)]
pub struct TcpPolicy {
    pub addr: SocketAddr,
    pub token: String,
    pub token_file: PathBuf,
    pub allowed_origins: Vec<String>,
}

/// The result of checking a request's headers.
pub enum Verdict {
    /// Serve it; add CORS headers for this origin (if any).
    Allow { cors_origin: Option<HeaderValue> },
    /// A CORS preflight from an allowed origin: answer it with these headers and stop.
    Preflight { origin: HeaderValue },
}

impl TcpPolicy {
    /// Reads the token file, creating it (0600, 256 random bits) when missing.
    pub fn load(
        addr: SocketAddr,
        data_dir: &Path,
        allowed_origins: Vec<String>,
    ) -> anyhow::Result<TcpPolicy> {
        let token_file = data_dir.join(TOKEN_FILE);
        let token = match std::fs::read_to_string(&token_file) {
            Ok(text) if text.trim().len() >= 32 => text.trim().to_string(),
            _ => {
                let token = random_token()?;
                write_private(&token_file, &token)?;
                token
            }
        };
        Ok(TcpPolicy {
            addr,
            token,
            token_file,
            allowed_origins,
        })
    }

    /// Checks Host, Origin and the bearer token, in that order (a preflight carries no token).
    pub fn check(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Result<Verdict, ApiError> {
        let forbidden = |code, msg: &str| ApiError::new(StatusCode::FORBIDDEN, code, msg);
        check_host(self.addr, uri, headers)?;
        let origin = match headers.get(ORIGIN) {
            None => None,
            Some(origin) => {
                let text = origin.to_str().unwrap_or("");
                if !self.allowed_origins.iter().any(|o| o == text) {
                    return Err(forbidden(
                        ErrorCode::OriginNotAllowed,
                        "this Origin is not allowed",
                    ));
                }
                Some(origin.clone())
            }
        };
        if method == Method::OPTIONS {
            if let Some(origin) = origin {
                return Ok(Verdict::Preflight { origin });
            }
        }
        let presented = headers
            .get(AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .unwrap_or("");
        if !constant_time_eq(presented.as_bytes(), self.token.as_bytes()) {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                "send Authorization: Bearer <token from the tcp-token file in the data dir>",
            ));
        }
        Ok(Verdict::Allow {
            cors_origin: origin,
        })
    }
}

/// Checks that a request names the loopback listener at `addr`: exactly one `Host` header, which
/// [`loopback_host`] accepts, and an absolute-form target's authority (if any) accepted as well.
pub(super) fn check_host(
    addr: std::net::SocketAddr,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let mut hosts = headers.get_all(HOST).iter();
    let host = hosts.next().and_then(|h| h.to_str().ok()).unwrap_or("");
    if hosts.next().is_some() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadHost,
            "a request must carry exactly one Host header",
        ));
    }
    let authority_ok = uri
        .authority()
        .is_none_or(|authority| loopback_host(addr, authority.as_str()));
    if !authority_ok || !loopback_host(addr, host) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::BadHost,
            "Host (and an absolute request target) must be a loopback address with this port",
        ));
    }
    Ok(())
}

/// Whether a request's `Host` names the loopback listener at `addr` (127.0.0.1, localhost or
/// [::1] with its port, or the address itself): a DNS-rebinding page's Host names its own domain.
pub(super) fn loopback_host(addr: std::net::SocketAddr, host: &str) -> bool {
    let port = addr.port();
    let host = host.to_ascii_lowercase();
    [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
        addr.to_string(),
    ]
    .contains(&host)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn random_token() -> anyhow::Result<String> {
    Ok(crate::sys::random_hex_32()?)
}

/// Writes `text` to `path` readable by the owner only (created 0600, never world-readable).
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut file = crate::sys::create_private_file(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> TcpPolicy {
        TcpPolicy {
            addr: "127.0.0.1:8765".parse().unwrap(),
            token: "t".repeat(64),
            token_file: PathBuf::from("/x"),
            allowed_origins: vec!["app://hearth".into()],
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn host_cannot_be_doubled_or_overridden_by_an_absolute_target() {
        // Issue 18.6: `GET http://evil.com/api/v1/health` with a valid Host got 200, and so did
        // a request with two Host headers.
        let p = policy();
        let token = format!("Bearer {}", "t".repeat(64));
        let ours = |h: &str| {
            let mut map = headers(&[("authorization", &token)]);
            map.append(HOST, HeaderValue::from_str(h).unwrap());
            map
        };
        let path: Uri = "/api/v1/health".parse().unwrap();
        let code = |uri: &Uri, h: &HeaderMap| match p.check(&Method::GET, uri, h) {
            Ok(_) => "allow".to_string(),
            Err(e) => format!("{} {}", e.status.as_u16(), e.code.as_str()),
        };
        assert_eq!(code(&path, &ours("127.0.0.1:8765")), "allow");
        let evil: Uri = "http://evil.com/api/v1/health".parse().unwrap();
        assert_eq!(code(&evil, &ours("127.0.0.1:8765")), "403 bad_host");
        let evil_port: Uri = "http://127.0.0.1:1/api/v1/health".parse().unwrap();
        assert_eq!(code(&evil_port, &ours("127.0.0.1:8765")), "403 bad_host");
        let absolute: Uri = "http://localhost:8765/api/v1/health".parse().unwrap();
        assert_eq!(code(&absolute, &ours("127.0.0.1:8765")), "allow");
        let mut doubled = ours("127.0.0.1:8765");
        doubled.append(HOST, HeaderValue::from_static("127.0.0.1:8765"));
        assert_eq!(code(&path, &doubled), "400 bad_host");
        let mut other = ours("127.0.0.1:8765");
        other.append(HOST, HeaderValue::from_static("evil.com"));
        assert_eq!(code(&path, &other), "400 bad_host");
    }

    #[test]
    fn host_origin_and_token_are_all_required() {
        let p = policy();
        let token = format!("Bearer {}", "t".repeat(64));
        let uri: Uri = "/api/v1/health".parse().unwrap();
        let code = |m: &Method, h: &[(&'static str, &str)]| match p.check(m, &uri, &headers(h)) {
            Ok(Verdict::Allow { .. }) => "allow",
            Ok(Verdict::Preflight { .. }) => "preflight",
            Err(e) => e.code.as_str(),
        };
        let get = Method::GET;
        assert_eq!(
            code(
                &get,
                &[("host", "127.0.0.1:8765"), ("authorization", &token)]
            ),
            "allow"
        );
        assert_eq!(
            code(
                &get,
                &[("host", "localhost:8765"), ("authorization", &token)]
            ),
            "allow"
        );
        assert_eq!(code(&get, &[("host", "127.0.0.1:8765")]), "unauthorized");
        assert_eq!(
            code(
                &get,
                &[("host", "127.0.0.1:8765"), ("authorization", "Bearer nope")]
            ),
            "unauthorized"
        );
        assert_eq!(
            code(
                &get,
                &[("host", "evil.example:8765"), ("authorization", &token)]
            ),
            "bad_host"
        );
        assert_eq!(
            code(
                &get,
                &[("host", "127.0.0.1:9999"), ("authorization", &token)]
            ),
            "bad_host"
        );
        assert_eq!(code(&get, &[("authorization", &token)]), "bad_host");
        assert_eq!(
            code(
                &get,
                &[
                    ("host", "127.0.0.1:8765"),
                    ("origin", "https://evil.example"),
                    ("authorization", &token)
                ]
            ),
            "origin_not_allowed"
        );
        assert_eq!(
            code(
                &get,
                &[
                    ("host", "127.0.0.1:8765"),
                    ("origin", "app://hearth"),
                    ("authorization", &token)
                ]
            ),
            "allow"
        );
        assert_eq!(
            code(
                &Method::OPTIONS,
                &[("host", "127.0.0.1:8765"), ("origin", "app://hearth")]
            ),
            "preflight"
        );
        assert_eq!(
            code(&Method::OPTIONS, &[("host", "127.0.0.1:8765")]),
            "unauthorized"
        );
    }
}
