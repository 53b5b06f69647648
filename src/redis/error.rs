//! Redis errors, classified once: which ones a retry can mend.
//!
//! Decisions are made on `redis::ErrorKind` and the server's error code
//! (`MOVED`, `OOM`, `NOPERM`, ...), with the message read only where Redis
//! gives one code to different causes (`ERR`: the merge function's refusal,
//! an unknown command, a failed function load).

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
    /// A reply of an unexpected type, or a bad client configuration.
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
            Permanent::Protocol => "Redis answered something regionflow did not expect",
        }
    }
}

/// Classifies an error by kind and code.
pub fn classify(e: &RedisError) -> Retry {
    let permanent = match e.kind() {
        ErrorKind::AuthenticationFailed | ErrorKind::Server(ServerErrorKind::NoPerm) => Some(Permanent::Denied),
        ErrorKind::UnexpectedReturnType | ErrorKind::InvalidClientConfig | ErrorKind::Parse => {
            Some(Permanent::Protocol)
        }
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
    } else {
        None
    }
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
            (server("ERR", "Error running script, user_function:1: some runtime error"), Retry::Transient),
        ];
        for (error, expected) in cases {
            assert_eq!(classify(&error), expected, "{error}");
        }
        let io: RedisError = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset").into();
        assert_eq!(classify(&io), Retry::Transient);
    }
}
