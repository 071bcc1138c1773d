//! Response bodies read against a size cap (chunk by chunk: nothing is buffered past the
//! cap), and error bodies cut to a short single-line excerpt before they reach a status,
//! an Event or a log.

/// Characters of an error body kept in a message.
pub const ERROR_EXCERPT_CHARS: usize = 300;

/// Bytes of an error body read at most: the message needs only its start (NetBox's field
/// errors of a 100-object batch fit easily).
pub const ERROR_BODY_READ_BYTES: usize = 256 * 1024;

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body is (or says it is) larger than the cap; reading stopped there.
    #[error("the answer is larger than the {} cap; reading stopped", size_text(*.limit))]
    TooLarge {
        /// The cap in bytes.
        limit: usize,
    },
    /// The connection failed while reading.
    #[error("reading the answer failed: {0}")]
    Read(#[from] reqwest::Error),
}

/// `bytes` for messages: `16 MiB`, `256 KiB`, `1000 bytes`.
pub fn size_text(bytes: usize) -> String {
    const KIB: usize = 1024;
    const MIB: usize = 1024 * 1024;
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= KIB && bytes.is_multiple_of(KIB) {
        format!("{} KiB", bytes / KIB)
    } else {
        format!("{bytes} bytes")
    }
}

/// Reads the whole body, refusing it as soon as it goes past `limit` bytes (at once when
/// its Content-Length already says so).
pub async fn read_capped(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    let declared = resp.content_length();
    if declared.is_some_and(|l| l > limit as u64) {
        return Err(BodyError::TooLarge { limit });
    }
    let capacity = declared.map_or(0, |l| usize::try_from(l).unwrap_or(limit).min(limit));
    let mut out = Vec::with_capacity(capacity);
    while let Some(chunk) = resp.chunk().await? {
        if out.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge { limit });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Reads at most `limit` bytes of the body and drops the rest unread (for error bodies,
/// whose start is all a message needs).
pub async fn read_prefix(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    let mut out = Vec::new();
    while out.len() < limit {
        let Some(chunk) = resp.chunk().await? else {
            break;
        };
        let take = chunk.len().min(limit - out.len());
        out.extend_from_slice(&chunk[..take]);
    }
    Ok(out)
}

/// Characters that would let a message spoof its own layout: control characters and the
/// Unicode bidirectional overrides and isolates.
fn is_layout_control(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// A short single-line excerpt of a text from a server: control characters and line breaks
/// become single spaces, runs of white space collapse, and at most [`ERROR_EXCERPT_CHARS`]
/// characters are kept (`…` marks a cut).
pub fn excerpt(text: &str) -> String {
    let mut out = String::new();
    let mut kept = 0;
    let mut space = false;
    for c in text.chars() {
        if c.is_whitespace() || is_layout_control(c) {
            space = kept > 0;
            continue;
        }
        let needed = if space { 2 } else { 1 };
        if kept + needed > ERROR_EXCERPT_CHARS {
            out.push('…');
            return out;
        }
        if space {
            out.push(' ');
            space = false;
        }
        out.push(c);
        kept += needed;
    }
    out
}

/// A local HTTP/1.1 server for tests: answers every request with a fixed head and body.
#[cfg(test)]
pub(crate) mod test_server {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// What follows the head.
    #[derive(Clone)]
    pub enum Body {
        /// These bytes, then the connection closes.
        Bytes(Vec<u8>),
        /// Spaces, forever (until the client goes away).
        Endless,
    }

    /// Serves `head` (status line and headers, without the blank line) and `body` to
    /// every connection on 127.0.0.1; returns the address.
    pub async fn serve(head: String, body: Body) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let (head, body) = (head.clone(), body.clone());
                tokio::spawn(async move {
                    // The request head (these tests send no request body).
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    if conn
                        .write_all(format!("{head}\r\n\r\n").as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                    match body {
                        Body::Bytes(b) => {
                            let _ = conn.write_all(&b).await;
                            let _ = conn.shutdown().await;
                        }
                        Body::Endless => {
                            let chunk = vec![b' '; 64 * 1024];
                            while conn.write_all(&chunk).await.is_ok() {}
                        }
                    }
                });
            }
        });
        addr
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::test_server::{Body, serve};
    use super::*;

    async fn get(addr: std::net::SocketAddr) -> reqwest::Response {
        crate::tls::install_crypto_provider();
        reqwest::Client::new()
            .get(format!("http://{addr}/"))
            .send()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn an_endless_body_is_cut_at_the_cap_quickly() {
        let addr = serve(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close".into(),
            Body::Endless,
        )
        .await;
        let started = Instant::now();
        let err = tokio::time::timeout(
            Duration::from_secs(20),
            read_capped(get(addr).await, 1024 * 1024),
        )
        .await
        .expect("stops at the cap instead of reading forever")
        .unwrap_err();
        assert!(matches!(err, BodyError::TooLarge { limit } if limit == 1024 * 1024));
        assert_eq!(
            err.to_string(),
            "the answer is larger than the 1 MiB cap; reading stopped"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn a_declared_oversized_body_is_refused_before_reading_and_a_small_one_is_read() {
        let addr = serve(
            "HTTP/1.1 200 OK\r\ncontent-length: 104857600\r\nconnection: close".into(),
            Body::Endless,
        )
        .await;
        let err = read_capped(get(addr).await, 16 * 1024 * 1024)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("16 MiB cap"), "{err}");
        // Undeclared and one byte over: refused too.
        let addr = serve(
            "HTTP/1.1 200 OK\r\nconnection: close".into(),
            Body::Bytes(vec![b'x'; 1025]),
        )
        .await;
        assert!(matches!(
            read_capped(get(addr).await, 1024).await,
            Err(BodyError::TooLarge { limit: 1024 })
        ));
        let addr = serve(
            "HTTP/1.1 200 OK\r\ncontent-length: 1024\r\nconnection: close".into(),
            Body::Bytes(vec![b'x'; 1024]),
        )
        .await;
        assert_eq!(
            read_capped(get(addr).await, 1024).await.unwrap().len(),
            1024
        );
    }

    #[tokio::test]
    async fn only_the_start_of_an_error_body_is_read() {
        let addr = serve(
            "HTTP/1.1 500 Internal Server Error\r\nconnection: close".into(),
            Body::Endless,
        )
        .await;
        let start = tokio::time::timeout(
            Duration::from_secs(20),
            read_prefix(get(addr).await, ERROR_BODY_READ_BYTES),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(start.len(), ERROR_BODY_READ_BYTES);
    }

    #[test]
    fn excerpts_are_single_short_lines() {
        assert_eq!(excerpt("  a\n\n b\r\n\tc  "), "a b c");
        assert_eq!(excerpt("bell\u{7}and\u{1b}[31mred"), "bell and [31mred");
        assert_eq!(excerpt("evil\u{202e}txt.exe"), "evil txt.exe");
        let long = "line\n".repeat(10_000);
        let e = excerpt(&long);
        assert!(!e.contains('\n'));
        assert!(e.ends_with('…'));
        assert!(e.chars().count() <= ERROR_EXCERPT_CHARS + 1, "{e}");
        assert!(e.chars().count() > ERROR_EXCERPT_CHARS - 5, "{e}");
        assert_eq!(excerpt(&"x".repeat(300)), "x".repeat(300));
        assert_eq!(excerpt(""), "");
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(size_text(32 * 1024 * 1024), "32 MiB");
        assert_eq!(size_text(256 * 1024), "256 KiB");
        assert_eq!(size_text(1000), "1000 bytes");
    }
}
