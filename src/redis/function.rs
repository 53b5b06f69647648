//! The merge function: `merge.lua` as a Redis Functions library.
//!
//! Every entry write is `FCALL <name> 1 <key> ...` of one function loaded
//! with `FUNCTION LOAD`, rather than an `EVALSHA` of a script: a library's
//! body runs once when loaded, so its helpers, tables and parsed specs are
//! built once per server instead of once per write (Redis time per W1 entry
//! write 19 → 12 µs, see BENCHMARKS.md). Functions need Redis 7.0.
//!
//! The library and the function are named after a hash of `merge.lua`, so
//! two regionflow versions writing to one cluster (a rolling upgrade) each
//! call their own code and never replace the other's. Functions are kept in
//! the RDB and replicated, so a promoted replica has them; a node that has
//! not (a new or flushed one) answers "Function not found", and the writer
//! then loads the library on every primary and sends the write again.

use std::sync::LazyLock;

use redis::{Cmd, RedisError, ToRedisArgs};

use crate::region::{EntryWrite, Expiry, WriteMode};
use crate::window::Accumulator;

/// The library's body; [`MergeFunction::library`] prepends its name.
pub const MERGE_LUA: &str = include_str!("merge.lua");

/// The merge function of this build.
pub static MERGE_FUNCTION: LazyLock<MergeFunction> = LazyLock::new(|| MergeFunction::new(MERGE_LUA));

#[derive(Debug)]
pub struct MergeFunction {
    name: String,
    library: String,
}

impl MergeFunction {
    fn new(body: &str) -> Self {
        // redis-rs' `Script` hashes its code with SHA-1, as `EVALSHA` does.
        let hash = redis::Script::new(body).get_hash().to_string();
        let name = format!("regionflow_merge_{}", &hash[..16]);
        let library = format!("#!lua name={name}\nlocal FUNCTION_NAME = '{name}'\n{body}");
        MergeFunction { name, library }
    }

    /// The function's (and the library's) name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The library's code, as `FUNCTION LOAD` takes it.
    pub fn library(&self) -> &str {
        &self.library
    }

    /// `FCALL` of the function on `key` with `args` (`ARGV[1..]`).
    pub fn call(&self, key: &str, args: impl ToRedisArgs) -> Cmd {
        // Sized up front: one allocation each instead of a few growths per
        // write (the connector builds one of these per entry write).
        let args_len: usize = args.num_of_args();
        let mut cmd = Cmd::with_capacity(4 + args_len, 64 + self.name.len() + key.len() + 16 * args_len);
        cmd.arg("FCALL").arg(&self.name).arg(1).arg(key).arg(args);
        cmd
    }

    /// `FUNCTION LOAD REPLACE` of the library. REPLACE makes loading it
    /// again a no-op (the same name always holds the same code); redis-rs'
    /// cluster client sends it to every primary.
    pub fn load(&self) -> Cmd {
        let mut cmd = redis::cmd("FUNCTION");
        cmd.arg("LOAD").arg("REPLACE").arg(&self.library);
        cmd
    }
}

/// The merge function's call for `write` (`FCALL` on its key), its partial
/// already encoded, for the aggregates of `spec`
/// ([`partial::aggregate_spec`]). A replace also carries the public fields
/// its partial alone renders (`ARGV[12..]`), which `merge.lua` stores as
/// they are when no other source partition wrote into the entry; a merge,
/// the replication ids it may build on (`ARGV[12]`).
pub fn merge_call(write: &EntryWrite, partial: &str, spec: &str) -> redis::Cmd {
    let (ttl_mode, ttl) = match write.expiry {
        Expiry::Never => ("n", 0),
        Expiry::After(ms) => ("r", ms as i64),
        Expiry::At(at) => ("a", at),
    };
    let args = (
        &*write.field,
        write.epoch,
        write.offset,
        write.mode.as_arg(),
        partial,
        write.window.start,
        write.window.end,
        ttl_mode,
        ttl,
        spec,
        write.capture.as_arg(),
    );
    let sole = (write.mode == WriteMode::Replace).then(|| SoleFields::of(&write.accumulators));
    let vouched = write.vouched.as_deref().filter(|_| write.mode == WriteMode::Merge);
    MERGE_FUNCTION.call(&write.key, (args, sole, vouched))
}

/// `ARGV[12..]` of `merge.lua`: per aggregate `1` when the accumulator
/// renders a value, `0` when not, then the values rendered.
struct SoleFields {
    present: String,
    values: Vec<String>,
}

impl SoleFields {
    fn of(accumulators: &[Accumulator]) -> SoleFields {
        let mut present = String::with_capacity(accumulators.len());
        let mut values = Vec::with_capacity(accumulators.len());
        for accumulator in accumulators {
            match accumulator.render() {
                Some(value) => {
                    present.push('1');
                    values.push(value);
                }
                None => present.push('0'),
            }
        }
        SoleFields { present, values }
    }
}

impl ToRedisArgs for SoleFields {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        out.write_arg(self.present.as_bytes());
        for value in &self.values {
            out.write_arg(value.as_bytes());
        }
    }

    fn num_of_args(&self) -> usize {
        1 + self.values.len()
    }
}

/// The node does not have the function (never loaded there, or flushed).
pub fn is_not_loaded(e: &RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError)
        && e.detail().is_some_and(|d| d.starts_with("Function not found"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_follows_the_code() {
        let a = MergeFunction::new("return 1");
        let b = MergeFunction::new("return 2");
        assert_ne!(a.name(), b.name());
        assert_eq!(a.name(), MergeFunction::new("return 1").name());
        assert!(a.library().starts_with(&format!("#!lua name={}\n", a.name())));
        assert!(a.library().ends_with("\nreturn 1"));
    }
}
