//! Redis errors, classified once: which ones a retry can mend.
//!
//! Decisions are made on `redis::ErrorKind` and the server's error code
//! (`MOVED`, `OOM`, `NOPERM`, ...), with the message read only where Redis
//! gives one code to different causes (`ERR`: the merge function's refusal,
//! an unknown command, a failed function load).
//!
//! Connecting at start is classified apart ([`classify_connect`]): there a
//! failure either is a rolling restart (retry until `redis.startup_timeout`)
//! or will never pass (fail at once, naming the cause). redis-rs' cluster
//! client reports failed initial connections as one `Io` error that carries
//! each node's error as text, so the kind is read where it survives and the
//! text (server codes, rustls' error names) where it does not.

use redis::{ErrorKind, RedisError, ServerErrorKind};

/// What retrying a failed Redis operation can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// A connection, topology or failover problem: retry (with backoff),
    /// and replace the connection if it persists.
    Transient,
    /// It would fail the same way again.
    Permanent(Permanent),
}

/// Errors that no retry mends, each with what the operator should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permanent {
    /// `merge.lua` refused its input (`ERR merge script: ...`).
    ScriptRefusal,
    /// The server lacks a command regionflow needs (Redis below 7.0).
    UnknownCommand,
    /// Authentication failed or the ACL user lacks a permission.
    Denied,
    /// The server is out of memory under `noeviction`.
    OutOfMemory,
    /// The function library could not be loaded (a Lua error in it).
    FunctionLoad,
    /// One of regionflow's scripts raised a Lua error while running: the
    /// same arguments raise it again.
    ScriptError,
    /// A bad client configuration.
    Protocol,
}

impl Permanent {
    /// What to do about it, appended to the error message.
    pub fn advice(self) -> &'static str {
        match self {
            Permanent::ScriptRefusal => "the merge function refused the write (a bug or a foreign writer to the key)",
            Permanent::UnknownCommand => "regions are written with Redis Functions, which need Redis 7.0 or later",
            Permanent::Denied => "check redis.nodes' user and password and the ACL user's permissions",
            Permanent::OutOfMemory => {
                "Redis is out of memory (maxmemory reached under noeviction): add memory, \
                 shorten region TTLs, or free keys"
            }
            Permanent::FunctionLoad => "the merge function library could not be loaded",
            Permanent::ScriptError => "a regionflow script failed in Lua (a bug: please report it with this message)",
            Permanent::Protocol => "Redis answered something regionflow did not expect",
        }
    }
}

/// Classifies an error by kind and code.
pub fn classify(e: &RedisError) -> Retry {
    let permanent = match e.kind() {
        ErrorKind::AuthenticationFailed | ErrorKind::Server(ServerErrorKind::NoPerm) => Some(Permanent::Denied),
        // A reply of an unexpected type is transient: redis-rs aggregates
        // some replies over every primary, and during a failover one of
        // them can be an error or a redirect (found by tests/integration/chaos.rs:
        // `CLUSTER FAILOVER FORCE` stopped connectors within milliseconds).
        ErrorKind::InvalidClientConfig => Some(Permanent::Protocol),
        ErrorKind::Server(ServerErrorKind::ResponseError) => response_error(e),
        ErrorKind::Extension => match e.code() {
            Some("OOM") => Some(Permanent::OutOfMemory),
            Some("WRONGPASS") | Some("NOAUTH") => Some(Permanent::Denied),
            _ => None,
        },
        _ => None,
    };
    permanent.map_or(Retry::Transient, Retry::Permanent)
}

/// `ERR` covers many causes; the detail tells which.
fn response_error(e: &RedisError) -> Option<Permanent> {
    let detail = e.detail().unwrap_or_default();
    if detail.contains("merge script:") {
        Some(Permanent::ScriptRefusal)
    } else if detail.starts_with("unknown command") {
        Some(Permanent::UnknownCommand)
    } else if detail.starts_with("Error registering functions") || detail.starts_with("Error compiling function") {
        Some(Permanent::FunctionLoad)
    } else if detail.starts_with("user_script:") || detail.starts_with("user_function:") {
        // A Lua runtime error (Redis 7 names the script's line); an error
        // of a command the script called keeps that command's own code
        // (`READONLY`, `OOM`, ...) and is classified by it.
        Some(Permanent::ScriptError)
    } else {
        None
    }
}

/// Why connecting at start cannot succeed, however long it is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartupFailure {
    /// The server refused the user or password (WRONGPASS, NOAUTH, NOPERM).
    Denied,
    /// The server's certificate is not trusted (unknown CA, wrong name,
    /// expired), or the server refused regionflow's client certificate.
    Certificate,
    /// The TLS handshake failed otherwise, e.g. `rediss://` against a
    /// plain-text port.
    TlsHandshake,
    /// A plain-text (`redis://`) client against a TLS-only port: the server
    /// closes the connection without a reply.
    PlainTextToTls,
    /// The server runs with `cluster-enabled no`.
    NotACluster,
    /// redis-rs refused the client configuration (e.g. unusable PEM data).
    ClientConfig,
}

impl std::fmt::Display for StartupFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StartupFailure::Denied => {
                "authentication refused: check redis.username and redis.password (or the URLs' user info) \
                 and the ACL user's permissions"
            }
            StartupFailure::Certificate => {
                "TLS certificate verification failed: check redis.tls.ca_file against the servers' certificates \
                 (and their names), and redis.tls.cert_file/key_file if the servers require client certificates"
            }
            StartupFailure::TlsHandshake => {
                "TLS handshake failed: is this port TLS (tls-port)? plain-text ports need redis:// URLs"
            }
            StartupFailure::PlainTextToTls => {
                "the server closed the connection without a reply, as a TLS-only port does with a plain-text \
                 client: use rediss:// URLs (and redis.tls)"
            }
            StartupFailure::NotACluster => {
                "the server is not a Redis Cluster (cluster support disabled): regionflow needs \
                 cluster-enabled yes"
            }
            StartupFailure::ClientConfig => {
                "the Redis client configuration is unusable: check redis.tls and redis.nodes"
            }
        })
    }
}

/// Classifies a failed connection at start: `Some` when no retry mends it.
/// `tls`: whether the seed URLs are `rediss://` (a connection closed
/// without a reply means a TLS port only to a plain-text client).
pub fn classify_connect(e: &RedisError, tls: bool) -> Option<StartupFailure> {
    match e.kind() {
        ErrorKind::AuthenticationFailed | ErrorKind::Server(ServerErrorKind::NoPerm) => {
            return Some(StartupFailure::Denied)
        }
        ErrorKind::InvalidClientConfig => return Some(StartupFailure::ClientConfig),
        _ => {}
    }
    if matches!(e.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM")) {
        return Some(StartupFailure::Denied);
    }
    let text = e.to_string();
    let has = |needle: &str| text.contains(needle);
    if has("WRONGPASS") || has("NOAUTH") || has("NOPERM") || has("Password authentication failed") {
        Some(StartupFailure::Denied)
    } else if has("cluster support disabled") {
        Some(StartupFailure::NotACluster)
    } else if has("invalid peer certificate")
        || has("CertificateRequired")
        || has("BadCertificate")
        || has("UnknownCA")
        || has("CertificateUnknown")
    {
        Some(StartupFailure::Certificate)
    } else if has("InvalidContentType")
        || has("corrupt message")
        || has("HandshakeFailure")
        || has("peer is incompatible")
    {
        Some(StartupFailure::TlsHandshake)
    } else if !tls && closed_without_reply(e, &text) {
        Some(StartupFailure::PlainTextToTls)
    } else {
        None
    }
}

/// An accepted connection the server closed before answering anything.
fn closed_without_reply(e: &RedisError, text: &str) -> bool {
    let io_kind = std::error::Error::source(e).and_then(|s| s.downcast_ref::<std::io::Error>()).map(|e| e.kind());
    matches!(
        io_kind,
        Some(std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::BrokenPipe)
    ) || text.contains("Connection reset by peer")
        || text.contains("connection closed")
        || text.contains("Connection closed")
        || text.contains("Broken pipe")
}

/// The error's message with advice, when it is permanent.
pub fn describe(e: &RedisError) -> String {
    match classify(e) {
        Retry::Permanent(p) => format!("{e} ({})", p.advice()),
        Retry::Transient => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: &str, detail: &str) -> RedisError {
        let reply = format!("-{code} {detail}\r\n");
        match redis::parse_redis_value(reply.as_bytes()) {
            Ok(redis::Value::ServerError(e)) => e.into(),
            other => panic!("not a server error: {other:?}"),
        }
    }

    #[test]
    fn classifies_by_kind_and_code() {
        let cases = [
            (
                server("ERR", "merge script: epoch (ARGV[2]) must be an integer"),
                Retry::Permanent(Permanent::ScriptRefusal),
            ),
            (server("ERR", "unknown command 'FCALL'"), Retry::Permanent(Permanent::UnknownCommand)),
            (server("NOPERM", "User x has no permissions"), Retry::Permanent(Permanent::Denied)),
            (server("WRONGPASS", "invalid username-password pair"), Retry::Permanent(Permanent::Denied)),
            (
                server("OOM", "command not allowed when used memory > 'maxmemory'."),
                Retry::Permanent(Permanent::OutOfMemory),
            ),
            (server("MOVED", "3999 127.0.0.1:6381"), Retry::Transient),
            (server("TRYAGAIN", "Multiple keys request during rehashing of slot"), Retry::Transient),
            (server("CLUSTERDOWN", "The cluster is down"), Retry::Transient),
            (server("READONLY", "You can't write against a read only replica."), Retry::Transient),
            (server("LOADING", "Redis is loading the dataset in memory"), Retry::Transient),
            (
                server("ERR", "user_script:6: too many results to unpack script: 3e35, on @user_script:6."),
                Retry::Permanent(Permanent::ScriptError),
            ),
            (
                server("ERR", "user_function:12: attempt to index a nil value script: f, on @user_function:12."),
                Retry::Permanent(Permanent::ScriptError),
            ),
            (server("READONLY", "You can't write against a read only replica. script: 3e35"), Retry::Transient),
        ];
        for (error, expected) in cases {
            assert_eq!(classify(&error), expected, "{error}");
        }
        let io: RedisError = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset").into();
        assert_eq!(classify(&io), Retry::Transient);
    }

    /// As redis-rs' cluster client reports a failed start: one `Io` error
    /// carrying a node's error as text.
    fn initial(detail: &str) -> RedisError {
        (ErrorKind::Io, "Failed to create initial connections", detail.to_string()).into()
    }

    #[test]
    fn connect_failures_that_no_retry_mends_are_recognised() {
        use StartupFailure::*;
        let cases = [
            (initial("Io: Password authentication failed - AuthenticationFailed"), true, Some(Denied)),
            (server("WRONGPASS", "invalid username-password pair or user is disabled."), true, Some(Denied)),
            (server("NOAUTH", "Authentication required."), false, Some(Denied)),
            (server("NOPERM", "User app has no permissions to run the 'ping' command"), false, Some(Denied)),
            (initial("Io: invalid peer certificate: UnknownIssuer"), true, Some(Certificate)),
            (initial("Io: invalid peer certificate: NotValidForName"), true, Some(Certificate)),
            (initial("Io: received fatal alert: CertificateRequired"), true, Some(Certificate)),
            (initial("Io: received corrupt message of type InvalidContentType"), true, Some(TlsHandshake)),
            (server("ERR", "This instance has cluster support disabled"), false, Some(NotACluster)),
            (initial("Io: Connection reset by peer (os error 104)"), false, Some(PlainTextToTls)),
            // Through TLS a reset is a server going away, not a wrong scheme.
            (initial("Io: Connection reset by peer (os error 104)"), true, None),
            (initial("Io: Connection refused (os error 111)"), false, None),
            (std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused").into(), true, None),
            (std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer within 5s").into(), true, None),
            (server("CLUSTERDOWN", "The cluster is down"), true, None),
            (server("LOADING", "Redis is loading the dataset in memory"), true, None),
        ];
        for (error, tls, expected) in cases {
            assert_eq!(classify_connect(&error, tls), expected, "{error} (tls: {tls})");
        }
    }
}
