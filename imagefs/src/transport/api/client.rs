//! A client of the agent's control API (`imagefs vm`, the tests): one
//! HTTP/1.1 request per connection over the Unix socket, JSON bodies
//! decoded into the [`manifest::agent`] types.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use manifest::agent::{ApiError, HostTiers, VmInfo, VmSpec};
use serde::de::DeserializeOwned;

/// Largest answer read (a metrics text of thousands of VMs fits).
const MAX_RESPONSE: u64 = 64 << 20;

/// Errors talking to the agent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Nothing answers on the socket.
    #[error("cannot reach the agent at {} (is `imagefs agent` running?)", path.display())]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The exchange broke off.
    #[error("talking to the agent at {}", path.display())]
    Io {
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The answer is not HTTP or not the expected JSON.
    #[error("the agent's answer is malformed: {0}")]
    BadResponse(String),
    /// The agent refused the request.
    #[error("the agent answered {status}: {message}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// Its error message.
        message: String,
    },
}

/// An answer: its status and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The HTTP status code.
    pub status: u16,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

/// The API at one socket.
#[derive(Debug, Clone)]
pub struct ApiClient {
    path: PathBuf,
    timeout: Duration,
}

impl ApiClient {
    /// A client of the agent listening on `path`; a request that takes
    /// longer than two minutes (opening an image from a slow origin) fails.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            timeout: Duration::from_secs(120),
        }
    }

    /// The socket.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends one request (`body` as JSON when given) and reads the answer,
    /// whatever its status.
    pub fn request(
        &self,
        method: &str,
        target: &str,
        body: Option<&[u8]>,
    ) -> Result<Response, ClientError> {
        let mut stream =
            UnixStream::connect(&self.path).map_err(|source| ClientError::Connect {
                path: self.path.clone(),
                source,
            })?;
        let io = |source| ClientError::Io {
            path: self.path.clone(),
            source,
        };
        stream.set_read_timeout(Some(self.timeout)).map_err(io)?;
        stream.set_write_timeout(Some(self.timeout)).map_err(io)?;
        let mut head =
            format!("{method} {target} HTTP/1.1\r\nHost: imagefs-agent\r\nConnection: close\r\n");
        if let Some(body) = body {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        let mut message = head.into_bytes();
        message.extend_from_slice(body.unwrap_or_default());
        // The agent may answer (405, 400) and close before it has read the
        // whole request: its answer still says more than the broken pipe.
        let sent = stream.write_all(&message);
        let mut raw = Vec::new();
        let read = (&stream).take(MAX_RESPONSE).read_to_end(&mut raw);
        match (sent, read) {
            (Ok(()), Err(e)) => return Err(io(e)),
            (Err(e), _) if parse_response(&raw).is_err() => return Err(io(e)),
            _ => {}
        }
        parse_response(&raw)
    }

    /// Decodes a 2xx answer's JSON; any other status is
    /// [`ClientError::Api`] with the agent's message.
    fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        target: &str,
        body: Option<&[u8]>,
    ) -> Result<T, ClientError> {
        let r = self.request(method, target, body)?;
        if !(200..300).contains(&r.status) {
            let message = serde_json::from_slice::<ApiError>(&r.body)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&r.body).trim().to_string());
            return Err(ClientError::Api {
                status: r.status,
                message,
            });
        }
        serde_json::from_slice(&r.body).map_err(|e| ClientError::BadResponse(e.to_string()))
    }

    /// `POST /v1/vms`.
    pub fn start_vm(&self, spec: &VmSpec) -> Result<VmInfo, ClientError> {
        let body = serde_json::to_vec(spec).map_err(|e| ClientError::BadResponse(e.to_string()))?;
        self.call("POST", "/v1/vms", Some(&body))
    }

    /// `DELETE /v1/vms/{id}`.
    pub fn stop_vm(&self, id: &str) -> Result<VmInfo, ClientError> {
        self.call("DELETE", &format!("/v1/vms/{}", encode_segment(id)), None)
    }

    /// `GET /v1/vms`.
    pub fn list(&self) -> Result<Vec<VmInfo>, ClientError> {
        self.call("GET", "/v1/vms", None)
    }

    /// `GET /v1/vms/{id}`.
    pub fn show(&self, id: &str) -> Result<VmInfo, ClientError> {
        self.call("GET", &format!("/v1/vms/{}", encode_segment(id)), None)
    }

    /// `GET /v1/tiers`.
    pub fn tiers(&self) -> Result<HostTiers, ClientError> {
        self.call("GET", "/v1/tiers", None)
    }

    /// `GET /metrics`, the Prometheus text.
    pub fn metrics(&self) -> Result<String, ClientError> {
        let r = self.request("GET", "/metrics", None)?;
        if r.status != 200 {
            return Err(ClientError::Api {
                status: r.status,
                message: String::from_utf8_lossy(&r.body).into_owned(),
            });
        }
        String::from_utf8(r.body).map_err(|e| ClientError::BadResponse(e.to_string()))
    }

    /// `GET /healthz`: whether the agent answers.
    pub fn healthy(&self) -> bool {
        self.request("GET", "/healthz", None)
            .is_ok_and(|r| r.status == 200)
    }
}

/// Percent-encodes what a path segment cannot hold as it is.
fn encode_segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Splits an HTTP/1.1 answer read to its end into status and body
/// (`Content-Length`, chunked, or up to the close).
pub fn parse_response(raw: &[u8]) -> Result<Response, ClientError> {
    let bad = |m: &str| ClientError::BadResponse(m.to_string());
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("headers are not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .filter(|_| status_line.starts_with("HTTP/1."))
        .ok_or_else(|| bad(&format!("status line `{status_line}`")))?;
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(bad(&format!("header line `{line}`")));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().map_err(|_| bad("Content-Length"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        }
    }
    let rest = &raw[end + 4..];
    let body = if chunked {
        dechunk(rest).ok_or_else(|| bad("chunked body"))?
    } else if let Some(n) = length {
        rest.get(..n)
            .ok_or_else(|| bad("body shorter than Content-Length"))?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response { status, body })
}

fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let eol = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&rest[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_length_chunked_and_bad_answers() {
        let r = parse_response(b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (201, &b"{}"[..]));
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body, b"abcde");
        for bad in [
            &b"garbage"[..],
            b"SSH-2.0 x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ] {
            assert!(
                parse_response(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(encode_segment("vm-1.a_b"), "vm-1.a_b");
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
    }
}
