//! `src/redis/merge.lua` against the Rust accumulators it must agree with.
//!
//! Each test calls the merge function (the library regionflow loads, see
//! `regionflow::redis::function`) on a real `redis-server` (one plain node
//! shared by the tests running at the same time; a function behaves the
//! same on a cluster node) and compares the entry it leaves with an independent
//! reference: the partials' [`Accumulator`]s merged with
//! [`Accumulator::merge`] and rendered with [`Accumulator::render`].
//!
//! Beyond the rules of the contract (fencing, stale offsets, amend,
//! retract, expiry, absent values), the tests pin down three ways a script
//! can drift from Rust without anyone noticing: number rendering (Rust never
//! uses exponents and rounds ties of the last digit up, printf's `%.17g`
//! does both differently), the order partials are merged in (floating-point
//! sums depend on it; the script merges in field-name order) and string
//! comparison (Lua's `<` collates by the server's locale, so the server
//! runs under en_US.UTF-8 when the system can provide it).
//!
//! Needs `redis-server` (Redis 7) on PATH; on Debian run
//! `scripts/setup-test-deps.sh`.

use crate::common;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::ErrorKind;
use std::ops::Range;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseResult, TestRunner};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::{Connection, RedisResult, ToRedisArgs};
use regionflow::config::AggregateFunction as F;
use regionflow::redis::function::{is_not_loaded, MERGE_FUNCTION};
use regionflow::redis::partial;
use regionflow::window::hll::{stable_hash, HyperLogLog};
use regionflow::window::{Accumulator, Input};
use serde_json::Value as Json;
use tempfile::TempDir;

use common::net::free_port;

/// Every aggregate function once, as a pipeline would configure them.
const ALL: &[(F, &str)] = &[
    (F::Count, "n"),
    (F::Sum, "total"),
    (F::Min, "low"),
    (F::Max, "high"),
    (F::Avg, "mean"),
    (F::DistinctCount, "users"),
    (F::First, "first_page"),
    (F::Last, "last_page"),
];

const WINDOW: (i64, i64) = (1_700_000_000_000, 1_700_000_060_000);
/// Event times are realistic epoch millis, so that they are written as
/// integers beyond what fits in 32 bits.
const BASE_TIME: i64 = 1_700_000_000_000;

// ---------------------------------------------------------------------------
// The server

const START_ATTEMPTS: usize = 10;
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A `redis-server` on a free loopback port in its own temp dir; killed on drop.
struct RedisServer {
    child: Child,
    port: u16,
    /// Whether Lua's string `<` is not bytewise on this server (see [`collating_locale`]).
    collates: bool,
    dir: TempDir,
}

impl RedisServer {
    fn start() -> RedisServer {
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let dir = tempfile::tempdir().expect("cannot create a temp dir");
            let port = free_port();
            let log = File::create(dir.path().join("redis.log")).expect("cannot create the server log");
            let spawned = Command::new("redis-server")
                .envs(collating_locale(dir.path()))
                .args(["--port", &port.to_string()])
                .args(["--bind", "127.0.0.1"])
                .args(["--save", ""])
                .args(["--appendonly", "no"])
                .arg("--dir")
                .arg(dir.path())
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("cannot share the server log"))
                .stderr(log)
                .spawn();
            let child = match spawned {
                Ok(child) => child,
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    panic!("redis-server not found: run scripts/setup-test-deps.sh")
                }
                Err(e) => panic!("cannot start redis-server: {e}"),
            };
            let mut server = RedisServer { child, port, collates: false, dir };
            // A port taken between our probe and the server's bind: try another.
            match server.wait_until_ready() {
                Ok(()) => {
                    let mut con = server.connection();
                    let a_before_upper_b: String = redis::cmd("EVAL")
                        .arg("return tostring('a' < 'B')")
                        .arg(0)
                        .query(&mut con)
                        .expect("EVAL failed");
                    server.collates = a_before_upper_b == "true";
                    return server;
                }
                Err(failure) => failures.push(failure),
            }
        }
        panic!("redis-server did not start in {START_ATTEMPTS} attempts:\n{}", failures.join("\n"));
    }

    fn wait_until_ready(&mut self) -> Result<(), String> {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("port {}: exited with {status}: {}", self.port, self.log()));
            }
            if let Ok(mut con) = self.try_connect() {
                if redis::cmd("PING").query::<String>(&mut con).is_ok() {
                    return Ok(());
                }
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(format!("port {}: no PONG within {START_TIMEOUT:?}: {}", self.port, self.log()));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    fn try_connect(&self) -> RedisResult<Connection> {
        redis::Client::open(format!("redis://127.0.0.1:{}/", self.port))?
            .get_connection_with_timeout(Duration::from_secs(2))
    }

    fn connection(&self) -> Connection {
        self.try_connect().unwrap_or_else(|e| panic!("cannot connect to redis-server: {e}"))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Environment for a locale whose collation is not bytewise ("a" < "B").
/// Redis takes LC_COLLATE from its environment and Lua compares strings
/// with strcoll, so under such a locale (common on servers) a script that
/// compared first/last values with `<` would disagree with Rust's bytewise
/// order; running the tests under one catches that. Uses an installed
/// en_US.UTF-8, else builds one into `dir` with localedef, else (no
/// locale data) leaves the server in the C locale.
fn collating_locale(dir: &Path) -> Vec<(&'static str, OsString)> {
    const LOCALE: &str = "en_US.UTF-8";
    let installed = Command::new("locale")
        .arg("-a")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).lines().any(|l| l == "en_US.utf8" || l == LOCALE));
    if installed {
        return vec![("LC_ALL", LOCALE.into())];
    }
    let locales = dir.join("locale");
    let built = fs::create_dir(&locales).is_ok()
        && Command::new("localedef")
            .args(["-i", "en_US", "-f", "UTF-8"])
            .arg(locales.join(LOCALE))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
    if built {
        vec![("LC_ALL", LOCALE.into()), ("LOCPATH", locales.into())]
    } else {
        vec![]
    }
}

/// The server of the tests running now: started by the first, killed when
/// the last one drops its handle.
fn server() -> Arc<RedisServer> {
    static SERVER: Mutex<Weak<RedisServer>> = Mutex::new(Weak::new());
    let mut shared = SERVER.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(server) = shared.upgrade() {
        return server;
    }
    let server = Arc::new(RedisServer::start());
    *shared = Arc::downgrade(&server);
    server
}

/// `FCALL` of the merge function, loading its library first where the
/// server does not have it yet (as the region does).
fn merge<T: redis::FromRedisValue>(con: &mut Connection, key: &str, args: impl ToRedisArgs) -> RedisResult<T> {
    let call = MERGE_FUNCTION.call(key, args);
    match call.query(con) {
        Err(e) if is_not_loaded(&e) => {
            MERGE_FUNCTION.load().query::<redis::Value>(con)?;
            call.query(con)
        }
        reply => reply,
    }
}

// ---------------------------------------------------------------------------
// Entries and writes

#[derive(Debug, Clone, Copy)]
enum Ttl {
    None,
    After(i64),
    At(i64),
}

/// One invocation of the script (ARGV[1..5], [8], [9]).
#[derive(Debug, Clone)]
struct Write {
    field: String,
    epoch: u64,
    offset: i64,
    mode: &'static str,
    partial: String,
    ttl: Ttl,
}

impl Write {
    fn replace(field: &str, epoch: u64, offset: i64, partial: &str) -> Write {
        Write { field: field.into(), epoch, offset, mode: "r", partial: partial.into(), ttl: Ttl::None }
    }

    fn amend(field: &str, epoch: u64, offset: i64, partial: &str) -> Write {
        Write { mode: "m", ..Write::replace(field, epoch, offset, partial) }
    }

    fn retract(field: &str, epoch: u64, offset: i64) -> Write {
        Write { mode: "d", ..Write::replace(field, epoch, offset, "") }
    }

    fn with_ttl(self, ttl: Ttl) -> Write {
        Write { ttl, ..self }
    }
}

/// A region entry under a key no other test uses, with its aggregate spec.
struct Entry {
    key: String,
    spec: Vec<(F, String)>,
}

impl Entry {
    fn new(test: &str, spec: &[(F, &str)]) -> Entry {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Entry {
            key: format!("merge_script:{test}:{}", NEXT.fetch_add(1, Ordering::Relaxed)),
            spec: spec.iter().map(|(f, name)| (*f, name.to_string())).collect(),
        }
    }

    /// ARGV[10].
    fn spec_arg(&self) -> String {
        self.spec.iter().map(|(f, name)| format!("{}:{name}", function_name(*f))).collect::<Vec<_>>().join(",")
    }

    /// The partial text a writer sends (and `r` stores verbatim).
    fn partial(&self, epoch: u64, offset: i64, accumulators: &[Accumulator]) -> String {
        assert_eq!(accumulators.len(), self.spec.len());
        let a: Vec<Json> = accumulators.iter().map(partial::to_json).collect();
        serde_json::json!({"e": epoch, "o": offset, "a": a}).to_string()
    }

    fn try_write(&self, con: &mut Connection, write: &Write) -> RedisResult<i64> {
        let (ttl_mode, ttl) = match write.ttl {
            Ttl::None => ("n", 0),
            Ttl::After(ms) => ("r", ms),
            Ttl::At(ms) => ("a", ms),
        };
        let args = (&write.field, write.epoch, write.offset, write.mode, &write.partial, WINDOW.0, WINDOW.1);
        merge(con, &self.key, (args, ttl_mode, ttl, self.spec_arg()))
    }

    /// A write under change capture `capture` (ARGV[11]), its raw reply.
    fn capture(&self, con: &mut Connection, write: &Write, capture: &str) -> redis::Value {
        let args = (&write.field, write.epoch, write.offset, write.mode, &write.partial, WINDOW.0, WINDOW.1);
        merge(con, &self.key, (args, "n", 0, self.spec_arg(), capture))
            .unwrap_or_else(|e| panic!("merge script failed on {write:?}: {e}"))
    }

    /// A replace carrying the sole writer's fields (ARGV[12..]) rendered
    /// from `accumulators`, as the region sends it, under `capture`; its raw
    /// reply.
    fn try_write_sole(
        &self,
        con: &mut Connection,
        write: &Write,
        accumulators: &[Accumulator],
        capture: &str,
    ) -> RedisResult<redis::Value> {
        let rendered: Vec<Option<String>> = accumulators.iter().map(Accumulator::render).collect();
        let flags: String = rendered.iter().map(|r| if r.is_some() { '1' } else { '0' }).collect();
        let values: Vec<String> = rendered.into_iter().flatten().collect();
        let args = (&write.field, write.epoch, write.offset, write.mode, &write.partial, WINDOW.0, WINDOW.1);
        merge(con, &self.key, (args, "n", 0, self.spec_arg(), capture, flags, values))
    }

    fn write(&self, con: &mut Connection, write: &Write) -> i64 {
        self.try_write(con, write).unwrap_or_else(|e| panic!("merge script failed on {write:?}: {e}"))
    }

    fn hgetall(&self, con: &mut Connection) -> BTreeMap<String, String> {
        redis::cmd("HGETALL").arg(&self.key).query(con).expect("HGETALL failed")
    }

    fn public(&self, con: &mut Connection) -> BTreeMap<String, String> {
        self.hgetall(con).into_iter().filter(|(field, _)| !field.starts_with("_p:")).collect()
    }

    fn exists(&self, con: &mut Connection) -> bool {
        redis::cmd("EXISTS").arg(&self.key).query(con).expect("EXISTS failed")
    }

    fn pttl(&self, con: &mut Connection) -> i64 {
        redis::cmd("PTTL").arg(&self.key).query(con).expect("PTTL failed")
    }

    fn delete(&self, con: &mut Connection) {
        redis::cmd("DEL").arg(&self.key).query::<()>(con).expect("DEL failed");
    }

    /// The stored partial of `field`: epoch, offset and accumulators.
    fn stored(&self, con: &mut Connection, field: &str) -> (u64, i64, Vec<Accumulator>) {
        let text = self.hgetall(con).remove(field).unwrap_or_else(|| panic!("no partial in {field}"));
        let json = parse_json_exact(&text);
        let a = json["a"].as_array().unwrap_or_else(|| panic!("partial {text} has no \"a\""));
        assert_eq!(a.len(), self.spec.len(), "{text}");
        let accumulators = self
            .spec
            .iter()
            .zip(a)
            .map(|((f, _), p)| partial::parse(*f, p).unwrap_or_else(|| panic!("{f:?} of {text}")))
            .collect();
        (json["e"].as_u64().expect("e"), json["o"].as_i64().expect("o"), accumulators)
    }

    /// The reference: the public fields as the Rust merge of the partials
    /// (in field-name order, the order the script merges in) and `render`.
    fn expected_public(&self, partials: &BTreeMap<String, Vec<Accumulator>>) -> BTreeMap<String, String> {
        let mut merged: Vec<Accumulator> = self.spec.iter().map(|(f, _)| Accumulator::new(*f)).collect();
        for accumulators in partials.values() {
            for (m, a) in merged.iter_mut().zip(accumulators) {
                m.merge(a);
            }
        }
        let mut fields = BTreeMap::from([
            ("window_start".to_string(), WINDOW.0.to_string()),
            ("window_end".to_string(), WINDOW.1.to_string()),
        ]);
        for ((_, name), acc) in self.spec.iter().zip(&merged) {
            if let Some(value) = acc.render() {
                fields.insert(name.clone(), value);
            }
        }
        fields
    }
}

/// Parses JSON with std's exact float parsing. serde_json without its
/// `float_roundtrip` feature (as regionflow builds it) can misread a double
/// by one unit in the last place, even its own output (it reads
/// "-1.6900000000000002e-7" as -1.6900000000000004e-7), which would hide or
/// fake differences in the partials the script encodes itself.
fn parse_json_exact(text: &str) -> Json {
    let mut parser = JsonParser { text, pos: 0 };
    let value = parser.value();
    parser.skip_whitespace();
    assert_eq!(parser.pos, text.len(), "trailing characters in {text}");
    value
}

struct JsonParser<'a> {
    text: &'a str,
    pos: usize,
}

impl JsonParser<'_> {
    fn rest(&self) -> &str {
        &self.text[self.pos..]
    }

    fn skip_whitespace(&mut self) {
        let rest = self.rest();
        self.pos += rest.len() - rest.trim_start().len();
    }

    fn eat(&mut self, token: &str) -> bool {
        self.skip_whitespace();
        let found = self.rest().starts_with(token);
        if found {
            self.pos += token.len();
        }
        found
    }

    fn expect(&mut self, token: &str) {
        assert!(self.eat(token), "expected {token} at {} in {}", self.pos, self.text);
    }

    fn value(&mut self) -> Json {
        self.skip_whitespace();
        match self.rest().as_bytes().first() {
            Some(b'n') => {
                self.expect("null");
                Json::Null
            }
            Some(b't') => {
                self.expect("true");
                Json::Bool(true)
            }
            Some(b'f') => {
                self.expect("false");
                Json::Bool(false)
            }
            Some(b'"') => Json::String(self.string()),
            Some(b'[') => {
                self.expect("[");
                let mut items = Vec::new();
                if !self.eat("]") {
                    loop {
                        items.push(self.value());
                        if self.eat("]") {
                            break;
                        }
                        self.expect(",");
                    }
                }
                Json::Array(items)
            }
            Some(b'{') => {
                self.expect("{");
                let mut map = serde_json::Map::new();
                if !self.eat("}") {
                    loop {
                        self.skip_whitespace();
                        let key = self.string();
                        self.expect(":");
                        map.insert(key, self.value());
                        if self.eat("}") {
                            break;
                        }
                        self.expect(",");
                    }
                }
                Json::Object(map)
            }
            _ => self.number(),
        }
    }

    fn number(&mut self) -> Json {
        let len = self
            .rest()
            .find(|c: char| !matches!(c, '0'..='9' | '-' | '+' | '.' | 'e' | 'E'))
            .unwrap_or(self.rest().len());
        let token = &self.text[self.pos..self.pos + len];
        self.pos += len;
        let parsed = if token.contains(['.', 'e', 'E']) {
            token.parse::<f64>().map(Json::from).map_err(|e| e.to_string())
        } else if token.starts_with('-') {
            token.parse::<i64>().map(Json::from).map_err(|e| e.to_string())
        } else {
            token.parse::<u64>().map(Json::from).map_err(|e| e.to_string())
        };
        parsed.unwrap_or_else(|e| panic!("bad number {token:?} in {}: {e}", self.text))
    }

    fn string(&mut self) -> String {
        self.expect("\"");
        let mut out = String::new();
        let mut chars = self.rest().chars();
        let hex4 = |chars: &mut std::str::Chars| {
            let digits: String = chars.by_ref().take(4).collect();
            u32::from_str_radix(&digits, 16).unwrap_or_else(|e| panic!("bad \\u{digits} in {}: {e}", self.text))
        };
        loop {
            match chars.next().unwrap_or_else(|| panic!("unterminated string in {}", self.text)) {
                '"' => break,
                '\\' => match chars.next() {
                    Some('b') => out.push('\u{8}'),
                    Some('f') => out.push('\u{c}'),
                    Some('n') => out.push('\n'),
                    Some('r') => out.push('\r'),
                    Some('t') => out.push('\t'),
                    Some('u') => {
                        let mut code = hex4(&mut chars);
                        if (0xd800..0xdc00).contains(&code) {
                            assert_eq!((chars.next(), chars.next()), (Some('\\'), Some('u')), "lone surrogate");
                            code = 0x10000 + ((code - 0xd800) << 10) + (hex4(&mut chars) - 0xdc00);
                        }
                        out.push(char::from_u32(code).unwrap_or_else(|| panic!("bad \\u escape in {}", self.text)));
                    }
                    Some(c) => out.push(c), // '"', '\\' and '/'
                    None => panic!("unterminated escape in {}", self.text),
                },
                c => out.push(c),
            }
        }
        self.pos = self.text.len() - chars.as_str().len();
        out
    }
}

fn function_name(f: F) -> &'static str {
    match f {
        F::Count => "count",
        F::Sum => "sum",
        F::Min => "min",
        F::Max => "max",
        F::Avg => "avg",
        F::DistinctCount => "distinct_count",
        F::First => "first",
        F::Last => "last",
    }
}

// ---------------------------------------------------------------------------
// Records and accumulators

#[derive(Debug, Clone)]
struct Record {
    time: i64,
    number: f64,
    text: String,
    user: u32,
}

fn rec(time: i64, number: f64, text: &str, user: u32) -> Record {
    Record { time: BASE_TIME + time, number, text: text.into(), user }
}

fn input(f: F, record: &Record) -> Input {
    match f {
        F::Count => Input::Unit,
        F::Sum | F::Min | F::Max | F::Avg => Input::Number(record.number),
        F::DistinctCount => Input::Hash(stable_hash(format!("user-{}", record.user).as_bytes())),
        F::First | F::Last => Input::Text(record.text.as_str().into()),
    }
}

fn accumulate(spec: &[(F, String)], records: &[Record]) -> Vec<Accumulator> {
    spec.iter()
        .map(|(f, _)| {
            let mut acc = Accumulator::new(*f);
            for record in records {
                acc.add(&input(*f, record), record.time);
            }
            acc
        })
        .collect()
}

/// Values that stress rendering: integers, decimal fractions, values around
/// 2^52 and 1e15, tiny ones and arbitrary finite doubles.
fn number() -> impl Strategy<Value = f64> {
    prop_oneof![
        (-1000i64..1000).prop_map(|n| n as f64),
        (-100_000i64..100_000).prop_map(|n| n as f64 / 100.0),
        (-1000i64..1000).prop_map(|n| n as f64 * 0.1),
        (-4i64..4).prop_map(|n| 2f64.powi(52) + n as f64),
        (1i64..1000).prop_map(|n| n as f64 * 1e13 + 0.5),
        (-1000i64..1000).prop_map(|n| n as f64 * 1e-9),
        any::<f64>().prop_filter("finite and summable", |v| v.is_finite() && v.abs() < 1e300),
    ]
}

/// Texts that tie and need JSON escaping: case (bytewise "B" < "a"),
/// multi-byte UTF-8, quotes, backslashes, slashes, control characters.
const TEXTS: &[&str] = &[
    "",
    "a",
    "b",
    "B",
    "aa",
    "a b",
    "é",
    "ä",
    "\u{1F600}",
    "/page",
    "\"q\"",
    "back\\slash",
    "line\nbreak",
    "\u{1}",
    "nul\u{0}x",
];

fn record() -> impl Strategy<Value = Record> {
    (0i64..6, number(), prop::sample::select(TEXTS), 0u32..200)
        .prop_map(|(time, number, text, user)| rec(time, number, text, user))
}

fn run_cases<S: Strategy>(strategy: S, test: impl Fn(S::Value) -> TestCaseResult)
where
    S::Value: std::fmt::Debug,
{
    let config = ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() };
    if let Err(e) = TestRunner::new(config).run(&strategy, test) {
        panic!("{e}");
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock before 1970").as_millis() as i64
}

// ---------------------------------------------------------------------------
// Tests

#[test]
fn public_fields_are_the_rust_merge_of_all_partials() {
    let server = server();
    let con = RefCell::new(server.connection());
    let partials = prop::collection::btree_map(0u8..12, prop::collection::vec(record(), 0..8), 1..4);
    run_cases(partials, |partials| {
        let con = &mut *con.borrow_mut();
        let entry = Entry::new("merge", ALL);
        let mut reference = BTreeMap::new();
        let mut expected = BTreeMap::new();
        // Written in reverse field order: the script must merge in field
        // order, not in the hash's insertion order.
        for (partition, records) in partials.iter().rev() {
            let field = format!("_p:orders:{partition}");
            let accumulators = accumulate(&entry.spec, records);
            let text = entry.partial(1, 10, &accumulators);
            prop_assert_eq!(entry.write(con, &Write::replace(&field, 1, 10, &text)), 1);
            expected.insert(field.clone(), text);
            reference.insert(field, accumulators);
        }
        expected.extend(entry.expected_public(&reference));
        prop_assert_eq!(entry.hgetall(con), expected);
        entry.delete(con);
        Ok(())
    });
}

/// Floating-point addition is not associative; the script merges partials
/// in field-name order, whatever order they arrived or the hash holds them in.
#[test]
fn partials_merge_in_field_name_order() {
    let server = server();
    let con = &mut server.connection();
    let spec = [(F::Sum, "total"), (F::Avg, "mean")];
    // (1e16 + 1) - 1e16 == 0, but (1e16 - 1e16) + 1 == 1.
    let values = [1e16, 1.0, -1e16];
    let orders = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]];
    let field_sets = [
        ["_p:a:0", "_p:a:1", "_p:a:2"],
        ["_p:orders:10", "_p:orders:2", "_p:orders:9"],
        ["_p:x:1", "_p:y:1", "_p:z:1"],
        ["_p:t:0", "_p:t:00", "_p:t:000"],
    ];
    let mut renderings = std::collections::BTreeSet::new();
    for fields in field_sets {
        for assignment in orders {
            for arrival in orders {
                let entry = Entry::new("order", &spec);
                let mut reference = BTreeMap::new();
                for i in arrival {
                    let accumulators = accumulate(&entry.spec, &[rec(0, values[assignment[i]], "", 0)]);
                    let write = Write::replace(fields[i], 1, 1, &entry.partial(1, 1, &accumulators));
                    assert_eq!(entry.write(con, &write), 1);
                    reference.insert(fields[i].to_string(), accumulators);
                }
                let public = entry.public(con);
                assert_eq!(public, entry.expected_public(&reference), "{fields:?} {assignment:?} {arrival:?}");
                renderings.insert(public["total"].clone());
            }
        }
    }
    assert_eq!(renderings.len(), 2, "the order never mattered: {renderings:?}");
}

#[test]
fn amending_a_record_equals_adding_it_in_rust() {
    let server = server();
    let con = RefCell::new(server.connection());
    let records = || prop::collection::vec(record(), 0..8);
    let cases = (records(), records(), record());
    run_cases(cases, |(records, other, late)| {
        let con = &mut *con.borrow_mut();
        let entry = Entry::new("amend", ALL);
        let (amended, unchanged) = ("_p:orders:0", "_p:orders:1");
        let other_accumulators = accumulate(&entry.spec, &other);
        let other_text = entry.partial(7, 3, &other_accumulators);
        prop_assert_eq!(entry.write(con, &Write::replace(unchanged, 7, 3, &other_text)), 1);
        let stored = entry.partial(2, 50, &accumulate(&entry.spec, &records));
        prop_assert_eq!(entry.write(con, &Write::replace(amended, 2, 50, &stored)), 1);

        let one = entry.partial(2, 51, &accumulate(&entry.spec, std::slice::from_ref(&late)));
        prop_assert_eq!(entry.write(con, &Write::amend(amended, 2, 51, &one)), 1);

        let mut all = records.clone();
        all.push(late);
        let reference = accumulate(&entry.spec, &all);
        // The script wrote this partial itself: it must parse back exactly.
        prop_assert_eq!(entry.stored(con, amended), (2, 51, reference.clone()));
        let mut expected = entry
            .expected_public(&BTreeMap::from([(amended.into(), reference), (unchanged.into(), other_accumulators)]));
        prop_assert_eq!(entry.public(con), expected.clone());
        expected.insert(unchanged.into(), other_text);
        let mut fields = entry.hgetall(con);
        fields.remove(amended);
        prop_assert_eq!(fields, expected);
        entry.delete(con);
        Ok(())
    });
}

#[test]
fn amending_without_a_stored_partial_replaces() {
    let server = server();
    let con = &mut server.connection();
    let entry = Entry::new("amend_new", ALL);
    let accumulators = accumulate(&entry.spec, &[rec(1, 2.5, "a", 1)]);
    let text = entry.partial(1, 5, &accumulators);
    assert_eq!(entry.write(con, &Write::amend("_p:orders:0", 1, 5, &text)), 1);
    let mut expected = entry.expected_public(&BTreeMap::from([("_p:orders:0".into(), accumulators)]));
    expected.insert("_p:orders:0".into(), text);
    assert_eq!(entry.hgetall(con), expected);
}

/// A merge that names the replication histories it may build on is
/// refused (-2, nothing written) by a node with another one: a replica
/// promoted since the writer's last checkpoint may lack the partial the
/// merge would add to (chaos seed 556995).
#[test]
fn a_merge_builds_only_on_a_replication_history_it_names() {
    let server = server();
    let con = &mut server.connection();
    let entry = Entry::new("vouched", ALL);
    let base = accumulate(&entry.spec, &[rec(1, 2.5, "a", 1)]);
    let late = accumulate(&entry.spec, &[rec(2, 4.0, "b", 2)]);
    assert_eq!(entry.write(con, &Write::replace("_p:orders:0", 1, 5, &entry.partial(1, 5, &base))), 1);
    let before = entry.hgetall(con);
    let info: String = redis::cmd("INFO").arg("replication").query(con).expect("INFO");
    let replid = info.lines().find_map(|l| l.trim_end().strip_prefix("master_replid:")).expect("a replication id");
    let amend = Write::amend("_p:orders:0", 1, 7, &entry.partial(1, 7, &late));
    let args = (&amend.field, amend.epoch, amend.offset, amend.mode, &amend.partial, WINDOW.0, WINDOW.1);

    let other = format!("{},{}", "0".repeat(40), "f".repeat(40));
    let refused: i64 = merge(con, &entry.key, (args, "n", 0, entry.spec_arg(), "", &other)).expect("a reply");
    assert_eq!(refused, -2, "a merge on an unnamed history must be refused");
    assert_eq!(entry.hgetall(con), before, "a refused merge writes nothing");

    let named = format!("{},{replid}", "0".repeat(40));
    let applied: i64 = merge(con, &entry.key, (args, "n", 0, entry.spec_arg(), "", &named)).expect("a reply");
    assert_eq!(applied, 1);
    let mut merged = base.clone();
    for (a, b) in merged.iter_mut().zip(&late) {
        a.merge(b);
    }
    let mut expected = entry.expected_public(&BTreeMap::from([("_p:orders:0".into(), merged)]));
    expected.insert("_p:orders:0".into(), entry.hgetall(con)["_p:orders:0"].clone());
    assert_eq!(entry.hgetall(con), expected, "a merge on a named history applies");
}

#[test]
fn older_epochs_are_fenced_and_older_offsets_skipped() {
    let server = server();
    let con = &mut server.connection();
    let entry = Entry::new("fence", ALL);
    let field = "_p:orders:0";
    let a = accumulate(&entry.spec, &[rec(1, 1.5, "a", 1), rec(2, -4.0, "b", 2)]);
    let b = accumulate(&entry.spec, &[rec(0, 10.0, "z", 3)]);
    let a_text = entry.partial(5, 10, &a);
    let b_text = entry.partial(5, 10, &b);

    let ttl = 60_000;
    assert_eq!(entry.write(con, &Write::replace(field, 5, 10, &a_text).with_ttl(Ttl::After(ttl))), 1);
    let before = entry.hgetall(con);

    // A newer owner wrote: every mode is refused, even at a later offset,
    // and the expiry is left alone.
    for write in
        [Write::replace(field, 4, 20, &b_text), Write::amend(field, 4, 20, &b_text), Write::retract(field, 4, 20)]
    {
        assert_eq!(entry.write(con, &write.with_ttl(Ttl::After(10 * ttl))), -1);
        assert_eq!(entry.hgetall(con), before);
        assert!(entry.pttl(con) <= ttl);
    }
    // This source already applied a later state, whatever the epoch.
    for write in [Write::replace(field, 5, 9, &b_text), Write::amend(field, 5, 9, &b_text), Write::retract(field, 5, 9)]
    {
        assert_eq!(entry.write(con, &write.with_ttl(Ttl::After(10 * ttl))), 0);
        assert_eq!(entry.hgetall(con), before);
        assert!(entry.pttl(con) <= ttl);
    }

    // The same offset is applied (a re-fire replaces the state).
    assert_eq!(entry.write(con, &Write::replace(field, 5, 10, &b_text)), 1);
    let mut expected = entry.expected_public(&BTreeMap::from([(field.into(), b.clone())]));
    expected.insert(field.into(), b_text.clone());
    assert_eq!(entry.hgetall(con), expected);

    // A new owner takes over; the old one is fenced from then on.
    let a6 = entry.partial(6, 11, &a);
    assert_eq!(entry.write(con, &Write::replace(field, 6, 11, &a6)), 1);
    assert_eq!(entry.write(con, &Write::replace(field, 5, 12, &b_text)), -1);
    let mut expected = entry.expected_public(&BTreeMap::from([(field.into(), a.clone())]));
    expected.insert(field.into(), a6.clone());
    assert_eq!(entry.hgetall(con), expected);

    // A newer owner's stale replay changes no value but takes the epoch,
    // fencing the owner before it.
    assert_eq!(entry.write(con, &Write::replace(field, 7, 9, &b_text)), 0);
    let stored = entry.hgetall(con);
    assert_eq!(
        stored.iter().filter(|(k, _)| !k.starts_with("_p:")).collect::<Vec<_>>(),
        expected.iter().filter(|(k, _)| !k.starts_with("_p:")).collect::<Vec<_>>(),
        "public fields unchanged"
    );
    assert!(stored[field].contains("\"e\":7"), "epoch taken: {}", stored[field]);
    assert_eq!(entry.write(con, &Write::replace(field, 6, 12, &a6)), -1);

    // Fencing is per source partition.
    let other = entry.partial(1, 0, &b);
    assert_eq!(entry.write(con, &Write::replace("_p:orders:1", 1, 0, &other)), 1);
    let mut expected = entry.expected_public(&BTreeMap::from([(field.into(), a), ("_p:orders:1".into(), b)]));
    expected.insert(field.into(), stored[field].clone());
    expected.insert("_p:orders:1".into(), other);
    assert_eq!(entry.hgetall(con), expected);
}

#[test]
fn retracting_recomputes_and_the_last_retraction_deletes_the_entry() {
    let server = server();
    let con = &mut server.connection();
    let entry = Entry::new("retract", ALL);
    let records = [
        vec![rec(1, 1.0, "a", 1), rec(5, 0.1, "m", 2)],
        vec![rec(0, -7.5, "first", 3), rec(9, 1e6, "last", 4)],
        vec![rec(2, 0.2, "c", 1)],
    ];
    let mut partials = BTreeMap::new();
    let mut texts = BTreeMap::new();
    for (i, records) in records.iter().enumerate() {
        let field = format!("_p:orders:{i}");
        let accumulators = accumulate(&entry.spec, records);
        let text = entry.partial(1, 10, &accumulators);
        assert_eq!(entry.write(con, &Write::replace(&field, 1, 10, &text)), 1);
        partials.insert(field.clone(), accumulators);
        texts.insert(field, text);
    }
    // Each retraction leaves its epoch as the partial's fence.
    let mut fences = BTreeMap::new();
    let expected = |partials: &BTreeMap<String, Vec<Accumulator>>,
                    texts: &BTreeMap<String, String>,
                    fences: &BTreeMap<String, String>| {
        let mut fields = entry.expected_public(partials);
        fields.extend(texts.clone());
        fields.extend(fences.clone());
        fields
    };

    for (field, fence) in [("_p:orders:1", "_f:orders:1"), ("_p:orders:0", "_f:orders:0")] {
        assert_eq!(entry.write(con, &Write::retract(field, 1, 11)), 1);
        partials.remove(field);
        texts.remove(field);
        fences.insert(fence.to_string(), "1".to_string());
        assert_eq!(entry.hgetall(con), expected(&partials, &texts, &fences));
    }
    // Retracting a partial that was never written changes no value.
    assert_eq!(entry.write(con, &Write::retract("_p:orders:9", 1, 11)), 1);
    fences.insert("_f:orders:9".into(), "1".into());
    assert_eq!(entry.hgetall(con), expected(&partials, &texts, &fences));

    // The last one deletes the entry; its fences stay, as a tombstone
    // readers skip, for a day.
    assert_eq!(entry.write(con, &Write::retract("_p:orders:2", 1, 11)), 2);
    fences.insert("_f:orders:2".into(), "1".into());
    assert_eq!(entry.hgetall(con), fences);
    assert!((86_000_000..=86_400_000).contains(&entry.pttl(con)), "tombstone expiry {}", entry.pttl(con));
    // Nothing to retract from: still no entry.
    assert_eq!(entry.write(con, &Write::retract("_p:orders:2", 1, 12)), 2);
    assert_eq!(entry.hgetall(con), fences);
}

/// An entry written by thousands of source partitions keeps a fence for
/// each when its last partial is retracted: a tombstone of 5,001 fences
/// is stored whole. (Lua's `unpack` refuses more than about 8,000 values;
/// a tombstone set in one `HSET` failed the write for good.)
#[test]
fn a_tombstone_keeps_the_fences_of_thousands_of_partitions() {
    let server = server();
    let con = &mut server.connection();
    let entry = Entry::new("many_fences", ALL);
    let text = entry.partial(1, 10, &accumulate(&entry.spec, &[rec(1, 1.0, "a", 1)]));
    assert_eq!(entry.write(con, &Write::replace("_p:orders:0", 1, 10, &text)), 1);
    let mut fences = BTreeMap::new();
    for partition in 1..=5_000 {
        assert_eq!(entry.write(con, &Write::retract(&format!("_p:orders:{partition}"), 1, 11)), 1);
        fences.insert(format!("_f:orders:{partition}"), "1".to_string());
    }
    assert_eq!(entry.write(con, &Write::retract("_p:orders:0", 1, 11)), 2, "the last partial's retraction deletes");
    fences.insert("_f:orders:0".into(), "1".into());
    assert_eq!(entry.hgetall(con), fences);
}

/// A retraction fences its source partition's older epochs out of the
/// entry, whether it deletes the entry, leaves other partials, or finds
/// nothing to retract: a zombie (an owner that froze, lost its partition
/// and woke up) must not bring back what its successor retracted, nor
/// create what the successor retracted before the zombie wrote it (found
/// by chaos seed 19 on session windows under load). The successor's own
/// epoch writes again, and its partial fences from then on.
#[test]
fn a_retraction_fences_older_epochs_even_from_nothing() {
    let server = server();
    let con = &mut server.connection();
    let entry = Entry::new("fence_retract", ALL);
    let a = accumulate(&entry.spec, &[rec(1, 1.0, "a", 1)]);
    let b = accumulate(&entry.spec, &[rec(2, 2.0, "b", 2)]);

    // From nothing: a hidden fence, no public field, a day's expiry.
    assert_eq!(entry.write(con, &Write::retract("_p:orders:0", 2, 7)), 2);
    assert_eq!(entry.hgetall(con), BTreeMap::from([("_f:orders:0".to_string(), "2".to_string())]));
    assert!(entry.pttl(con) > 86_000_000);
    // The zombie's write, at its older epoch, is refused at any offset.
    for offset in [6, 8] {
        let zombie = Write::replace("_p:orders:0", 1, offset, &entry.partial(1, offset, &a));
        assert_eq!(entry.write(con, &zombie), -1);
        let sole = entry.try_write_sole(con, &zombie, &a, "").expect("written");
        assert_eq!(sole, redis::Value::Int(-1), "the sole writer's short cut is fenced too");
        assert_eq!(entry.hgetall(con).len(), 1);
    }
    // The successor writes: the fence goes with the tombstone's expiry.
    let a2 = entry.partial(2, 8, &a);
    assert_eq!(entry.write(con, &Write::replace("_p:orders:0", 2, 8, &a2)), 1);
    let mut expected = entry.expected_public(&BTreeMap::from([("_p:orders:0".to_string(), a.clone())]));
    expected.insert("_p:orders:0".into(), a2.clone());
    assert_eq!(entry.hgetall(con), expected);
    assert_eq!(entry.pttl(con), -1);

    // Another partition's partial, then this one's retracted at epoch 3:
    // the entry stays, with the fence, and the epoch-2 owner cannot return.
    let b1 = entry.partial(1, 3, &b);
    assert_eq!(entry.write(con, &Write::replace("_p:orders:1", 1, 3, &b1)), 1);
    assert_eq!(entry.write(con, &Write::retract("_p:orders:0", 3, 9)), 1);
    let mut expected = entry.expected_public(&BTreeMap::from([("_p:orders:1".to_string(), b.clone())]));
    expected.insert("_p:orders:1".into(), b1);
    expected.insert("_f:orders:0".into(), "3".into());
    assert_eq!(entry.hgetall(con), expected);
    let zombie = Write::replace("_p:orders:0", 2, 10, &entry.partial(2, 10, &a));
    assert_eq!(entry.write(con, &zombie), -1);
    assert_eq!(entry.hgetall(con), expected);
}

/// The function caches parsed specs (64 at most, then it starts over): 150
/// regions with their own field names, written twice over, each name its own
/// fields every time, whichever specs the cache holds by then.
#[test]
fn many_specs_each_name_their_own_fields() {
    let server = server();
    let con = &mut server.connection();
    let names: Vec<(String, String)> = (0..150).map(|i| (format!("n{i}"), format!("total{i}"))).collect();
    let entries: Vec<Entry> =
        names.iter().map(|(n, t)| Entry::new("specs", &[(F::Count, n.as_str()), (F::Sum, t.as_str())])).collect();
    let field = "_p:orders:0";
    for (offset, records) in [(1, vec![rec(1, 2.5, "a", 1)]), (2, vec![rec(1, 2.5, "a", 1), rec(2, 4.0, "b", 2)])] {
        for entry in &entries {
            let accumulators = accumulate(&entry.spec, &records);
            let partial = entry.partial(1, offset, &accumulators);
            assert_eq!(entry.write(con, &Write::replace(field, 1, offset, &partial)), 1);
            assert_eq!(
                entry.public(con),
                entry.expected_public(&BTreeMap::from([(field.into(), accumulators)])),
                "{}",
                entry.spec_arg()
            );
        }
    }
}

#[test]
fn absent_values_are_removed_from_the_entry() {
    let server = server();
    let con = &mut server.connection();
    let entry = Entry::new("absent", ALL);
    let field = "_p:orders:0";
    let full = entry.partial(1, 1, &accumulate(&entry.spec, &[rec(1, 3.0, "a", 1)]));
    assert_eq!(entry.write(con, &Write::replace(field, 1, 1, &full)), 1);
    assert_eq!(entry.public(con).len(), 2 + ALL.len());

    let empty = accumulate(&entry.spec, &[]);
    let empty_text = entry.partial(1, 2, &empty);
    assert_eq!(entry.write(con, &Write::replace(field, 1, 2, &empty_text)), 1);
    let expected = BTreeMap::from([
        ("window_start".to_string(), WINDOW.0.to_string()),
        ("window_end".to_string(), WINDOW.1.to_string()),
        ("n".to_string(), "0".to_string()),
        ("total".to_string(), "0".to_string()),
        ("users".to_string(), "0".to_string()),
        (field.to_string(), empty_text),
    ]);
    assert_eq!(entry.hgetall(con), expected);
    assert_eq!(entry.public(con), entry.expected_public(&BTreeMap::from([(field.into(), empty)])));
}

#[test]
fn expiry_modes() {
    let server = server();
    let con = &mut server.connection();
    let text = |entry: &Entry| entry.partial(1, 1, &accumulate(&entry.spec, &[rec(0, 1.0, "a", 1)]));

    let never = Entry::new("ttl_none", ALL);
    assert_eq!(never.write(con, &Write::replace("_p:t:0", 1, 1, &text(&never))), 1);
    assert_eq!(never.pttl(con), -1);

    let relative = Entry::new("ttl_relative", ALL);
    let write = Write::replace("_p:t:0", 1, 1, &text(&relative)).with_ttl(Ttl::After(60_000));
    assert_eq!(relative.write(con, &write), 1);
    let pttl = relative.pttl(con);
    assert!((50_000..=60_000).contains(&pttl), "PTTL {pttl}");

    let absolute = Entry::new("ttl_absolute", ALL);
    let write = Write::replace("_p:t:0", 1, 1, &text(&absolute)).with_ttl(Ttl::At(now_ms() + 120_000));
    assert_eq!(absolute.write(con, &write), 1);
    let pttl = absolute.pttl(con);
    assert!((100_000..=120_000).contains(&pttl), "PTTL {pttl}");

    // An absolute expiry in the past (a window long closed) expires the entry at once.
    let past = Entry::new("ttl_past", ALL);
    let write = Write::replace("_p:t:0", 1, 1, &text(&past)).with_ttl(Ttl::At(now_ms() - 1_000));
    assert_eq!(past.write(con, &write), 1);
    assert!(!past.exists(con));
}

#[test]
fn fractions_negatives_and_large_integers() {
    let server = server();
    let con = &mut server.connection();
    let spec = [(F::Sum, "total"), (F::Min, "low"), (F::Max, "high"), (F::Avg, "mean")];
    let cases: &[(&[f64], &[f64], [&str; 4])] = &[
        (&[0.1], &[0.2], ["0.30000000000000004", "0.1", "0.2", "0.15000000000000002"]),
        (&[-1.5, -2.0], &[-0.25], ["-3.75", "-2", "-0.25", "-1.25"]),
        (
            &[4503599627370496.0],
            &[4503599627370496.0],
            ["9007199254740992", "4503599627370496", "4503599627370496", "4503599627370496"],
        ),
        (
            &[-4503599627370496.0, 0.5],
            &[1e15],
            ["-3503599627370495.5", "-4503599627370496", "1000000000000000", "-1167866542456831.8"],
        ),
        (&[1e-7], &[2e-7], ["0.0000003", "0.0000001", "0.0000002", "0.00000015"]),
        (
            &[1e20],
            &[1e21],
            ["1100000000000000000000", "100000000000000000000", "1000000000000000000000", "550000000000000000000"],
        ),
    ];
    for (left, right, rendered) in cases {
        let entry = Entry::new("numbers", &spec);
        let mut partials = BTreeMap::new();
        for (i, values) in [left, right].into_iter().enumerate() {
            let records: Vec<Record> = values.iter().map(|v| rec(0, *v, "", 0)).collect();
            let accumulators = accumulate(&entry.spec, &records);
            let field = format!("_p:orders:{i}");
            assert_eq!(entry.write(con, &Write::replace(&field, 1, 1, &entry.partial(1, 1, &accumulators))), 1);
            partials.insert(field, accumulators);
        }
        let public = entry.public(con);
        assert_eq!(public, entry.expected_public(&partials), "{left:?} + {right:?}");
        let got: Vec<&str> = spec.iter().map(|(_, name)| public[*name].as_str()).collect();
        assert_eq!(got, rendered, "{left:?} + {right:?}");
    }
}

/// A sum past the largest double is infinity, as in Rust: written, merged
/// across partials and amended without an error, rendered `inf`, `-inf` or
/// `NaN` (infinities of both signs).
#[test]
fn overflowing_sums_become_infinities_and_never_fail() {
    let server = server();
    let con = &mut server.connection();
    let spec = [(F::Sum, "total"), (F::Avg, "mean"), (F::Count, "n")];
    let cases: &[(&[f64], &[f64], [&str; 3])] = &[
        (&[1e308, 1e308], &[1.0], ["inf", "inf", "3"]),
        (&[1e308], &[1e308], ["inf", "inf", "2"]),
        (&[-1e308, -1e308], &[5.0], ["-inf", "-inf", "3"]),
        (&[-1e308, -1e308], &[1e308, 1e308], ["NaN", "NaN", "4"]),
        // Once infinite, a sum stays so: inf - MAX is inf.
        (&[f64::MAX, f64::MAX, -f64::MAX], &[1.0], ["inf", "inf", "4"]),
    ];
    for (left, right, rendered) in cases {
        let entry = Entry::new("overflow", &spec);
        let mut partials = BTreeMap::new();
        for (i, values) in [left, right].into_iter().enumerate() {
            let records: Vec<Record> = values.iter().map(|v| rec(0, *v, "", 0)).collect();
            let accumulators = accumulate(&entry.spec, &records);
            let field = format!("_p:orders:{i}");
            assert_eq!(entry.write(con, &Write::replace(&field, 1, 1, &entry.partial(1, 1, &accumulators))), 1);
            partials.insert(field, accumulators);
        }
        let public = entry.public(con);
        let got: Vec<&str> = spec.iter().map(|(_, name)| public[*name].as_str()).collect();
        assert_eq!(got, rendered, "{left:?} + {right:?}");
        assert_eq!(public, entry.expected_public(&partials), "{left:?} + {right:?}");
        entry.delete(con);
    }

    // Amending: the script encodes the overflowed partial itself.
    let entry = Entry::new("overflow_amend", &spec);
    let field = "_p:orders:0";
    let first = accumulate(&entry.spec, &[rec(0, 1e308, "", 0)]);
    assert_eq!(entry.write(con, &Write::replace(field, 1, 1, &entry.partial(1, 1, &first))), 1);
    let late = accumulate(&entry.spec, &[rec(0, 1e308, "", 0)]);
    assert_eq!(entry.write(con, &Write::amend(field, 1, 2, &entry.partial(1, 2, &late))), 1);
    let both = accumulate(&entry.spec, &[rec(0, 1e308, "", 0), rec(0, 1e308, "", 0)]);
    assert_eq!(entry.stored(con, field), (1, 2, both));
    assert_eq!(entry.public(con)["total"], "inf");
    let minus = accumulate(&entry.spec, &[rec(0, -1e308, "", 0), rec(0, -1e308, "", 0), rec(0, -1.0, "", 0)]);
    assert_eq!(entry.write(con, &Write::amend(field, 1, 3, &entry.partial(1, 3, &minus))), 1);
    assert_eq!(entry.public(con)["total"], "NaN", "inf + -inf");
    entry.delete(con);
}

/// Writes each value as a sum and compares the script's rendering with
/// Rust's; then amends with zeros, so that the script encodes the values as
/// JSON itself, and checks they parse back to the same doubles.
fn assert_renders_like_rust(con: &mut Connection, values: &[f64]) {
    for chunk in values.chunks(400) {
        let names: Vec<String> = (0..chunk.len()).map(|i| format!("v{i}")).collect();
        let spec: Vec<(F, &str)> = names.iter().map(|name| (F::Sum, name.as_str())).collect();
        let entry = Entry::new("render", &spec);
        let sums: Vec<Accumulator> = chunk.iter().map(|v| Accumulator::Sum(*v)).collect();
        assert_eq!(entry.write(con, &Write::replace("_p:t:0", 1, 1, &entry.partial(1, 1, &sums))), 1);
        let public = entry.public(con);
        for (value, name) in chunk.iter().zip(&names) {
            let rust = Accumulator::Sum(*value).render().expect("a sum always renders");
            assert_eq!(public[name], rust, "rendering {value:e} ({:#x})", value.to_bits());
        }

        let zeros: Vec<Accumulator> = chunk.iter().map(|_| Accumulator::Sum(0.0)).collect();
        assert_eq!(entry.write(con, &Write::amend("_p:t:0", 1, 2, &entry.partial(1, 2, &zeros))), 1);
        let (_, _, stored) = entry.stored(con, "_p:t:0");
        for (value, acc) in chunk.iter().zip(&stored) {
            assert_eq!(acc, &Accumulator::Sum(value + 0.0), "encoding {value:e} ({:#x})", value.to_bits());
        }
        assert_eq!(entry.public(con), entry.expected_public(&BTreeMap::from([("_p:t:0".into(), stored)])));
        entry.delete(con);
    }
}

#[test]
fn numbers_render_like_rust() {
    let server = server();
    let con = &mut server.connection();
    let mut values = vec![
        0.1 + 0.2,
        0.1,
        -0.5,
        1.0 / 3.0,
        2.0 / 3.0,
        4.35,
        123456789.123,
        123456789012345.67,
        999999999999999.9,
        1e15,
        -1e15,
        1e15 + 0.5,
        9007199254740993.0,
        1e16,
        1e17,
        1e21,
        1e22,
        1e23,
        1e300,
        f64::MAX,
        f64::MIN,
        f64::MIN_POSITIVE,
        f64::EPSILON,
        5e-324,
        1e-300,
        1e-7,
        1.5e-5,
        0.0001,
        0.00012345,
        0.0,
        -0.0,
    ];
    // Powers of two sit where the rounding interval is lopsided, where the
    // correctly rounded n digits may miss while other n digits round-trip.
    for exponent in -1074..=1023 {
        values.push(2f64.powi(exponent));
        values.push(-(2f64.powi(exponent)));
    }
    // Exact ties at the last digit, where Rust rounds half up and printf
    // half to even: x.25 and x.75 between 2^50 and 2^51 (quarter steps).
    for i in 0..200 {
        let base = 2f64.powi(50) + (i * 7_919_113) as f64;
        values.extend([base + 0.25, base + 0.75, -(base + 0.25), 2.0 * base + 0.5, 0.5 * base + 0.125]);
    }
    let mut rng = StdRng::seed_from_u64(0x5eed);
    while values.len() < 8_000 {
        let bits = f64::from_bits(rng.random::<u64>());
        if bits.is_finite() {
            values.push(bits);
        }
        let sign = if rng.random_bool(0.5) { -1.0 } else { 1.0 };
        values.push(sign * rng.random::<f64>() * 10f64.powi(rng.random_range(-8..20)));
        values.push(rng.random_range(-1_000_000i64..1_000_000) as f64 / 1000.0);
    }
    assert_renders_like_rust(con, &values);
}

/// Three partials over overlapping ranges of users.
fn assert_distinct_counts_like_rust(con: &mut Connection, ranges: [Range<u32>; 3], distinct: u32) {
    let entry = Entry::new("distinct", &[(F::DistinctCount, "users"), (F::Count, "n")]);
    let mut partials = BTreeMap::new();
    let mut union = HyperLogLog::default();
    for (i, range) in ranges.iter().enumerate() {
        let records: Vec<Record> = range.clone().map(|user| rec(0, 0.0, "", user)).collect();
        for record in &records {
            union.insert_hash(stable_hash(format!("user-{}", record.user).as_bytes()));
        }
        let accumulators = accumulate(&entry.spec, &records);
        let field = format!("_p:clicks:{i}");
        assert_eq!(entry.write(con, &Write::replace(&field, 1, 1, &entry.partial(1, 1, &accumulators))), 1);
        partials.insert(field, accumulators);
    }
    let public = entry.public(con);
    assert_eq!(public, entry.expected_public(&partials));
    assert_eq!(public["users"], union.estimate().to_string());
    let estimate: f64 = public["users"].parse().expect("an integer estimate");
    let error = (estimate - distinct as f64).abs() / distinct as f64;
    assert!(error < 0.1, "estimated {estimate} for {distinct} distinct users");
}

#[test]
fn distinct_counts_estimate_the_merged_registers_like_rust() {
    let server = server();
    let con = &mut server.connection();
    // Linear counting (few registers set) ...
    assert_distinct_counts_like_rust(con, [0..150, 100..250, 200..350], 350);
    // ... and the raw estimate (above 2.5 * 1024).
    assert_distinct_counts_like_rust(con, [0..3000, 2000..6000, 5000..9000], 9000);
}

#[test]
fn first_and_last_break_time_ties_by_value_bytes() {
    let server = server();
    let con = &mut server.connection();
    let entry = Entry::new("ties", &[(F::First, "first_page"), (F::Last, "last_page")]);
    let partials = [
        vec![rec(5, 0.0, "b", 0), rec(6, 0.0, "z", 0)],
        vec![rec(5, 0.0, "a", 0), rec(5, 0.0, "B", 0), rec(6, 0.0, "y", 0)],
        vec![rec(5, 0.0, "é", 0), rec(6, 0.0, "Z", 0), rec(6, 0.0, "zz", 0), rec(6, 0.0, "\u{1F600}", 0)],
    ];
    let mut reference = BTreeMap::new();
    for (i, records) in partials.iter().enumerate() {
        let accumulators = accumulate(&entry.spec, records);
        let field = format!("_p:views:{i}");
        assert_eq!(entry.write(con, &Write::replace(&field, 1, 1, &entry.partial(1, 1, &accumulators))), 1);
        reference.insert(field, accumulators);
    }
    let public = entry.public(con);
    assert_eq!(public, entry.expected_public(&reference));
    // Bytewise: "B" (0x42) before "a" (0x61); the emoji's 0xf0 lead byte after "zz".
    assert_eq!(public["first_page"], "B");
    if !server.collates {
        eprintln!("note: redis-server runs in a bytewise-collating locale; Lua's `<` would pass this test too");
    }
    assert_eq!(public["last_page"], "\u{1F600}");

    // Time decides before the value does.
    let earlier = accumulate(&entry.spec, &[rec(4, 0.0, "~", 0), rec(7, 0.0, "A", 0)]);
    assert_eq!(entry.write(con, &Write::replace("_p:views:3", 1, 1, &entry.partial(1, 1, &earlier))), 1);
    reference.insert("_p:views:3".into(), earlier);
    let public = entry.public(con);
    assert_eq!(public, entry.expected_public(&reference));
    assert_eq!((public["first_page"].as_str(), public["last_page"].as_str()), ("~", "A"));
}

/// The sole writer's short cut (a replace with ARGV[12..], into an entry
/// no other source partition wrote) stores what the full merge stores: two
/// entries take the same writes, one with the rendered fields and one
/// without, and must hold the same hash, reply the same (under every
/// capture) and be fenced and skip replays the same, whether the writes
/// come from one partition (the short cut) or several (the merge).
#[test]
fn the_sole_writers_short_cut_stores_what_the_merge_stores() {
    let server = server();
    let con = RefCell::new(server.connection());
    // (partition, epoch, offset, records): a few writes, some from one
    // partition only, some from several, some older than what is stored.
    let write = (0u8..3, 1u64..4, 0i64..6, prop::collection::vec(record(), 0..6));
    let cases = (prop::collection::vec(write, 1..8), prop::sample::select(vec!["", "v", "c"]));
    run_cases(cases, |(writes, capture)| {
        let con = &mut *con.borrow_mut();
        let (short, merged) = (Entry::new("sole", ALL), Entry::new("sole_merged", ALL));
        for (partition, epoch, offset, records) in &writes {
            let field = format!("_p:orders:{partition}");
            let accumulators = accumulate(&short.spec, records);
            let write = Write::replace(&field, *epoch, *offset, &short.partial(*epoch, *offset, &accumulators));
            let reply = short.try_write_sole(con, &write, &accumulators, capture);
            prop_assert_eq!(reply.ok(), Some(merged.capture(con, &write, capture)), "reply to {:?}", write);
            prop_assert_eq!(short.hgetall(con), merged.hgetall(con), "after {:?}", write);
        }
        short.delete(con);
        merged.delete(con);
        Ok(())
    });
}

#[test]
fn malformed_input_is_refused_before_anything_is_written() {
    let server = server();
    let con = &mut server.connection();
    let entry = Entry::new("malformed", &[(F::Count, "n"), (F::DistinctCount, "users")]);
    let good = entry.partial(1, 1, &accumulate(&entry.spec, &[rec(0, 0.0, "", 1)]));
    let bad = [
        Write { mode: "x", ..Write::replace("_p:t:0", 1, 1, &good) },
        Write::replace("_p:t:0", 1, 1, "{not json"),
        Write::replace("_p:t:0", 1, 1, r#"{"e":1,"o":1,"a":["3",""]}"#),
        Write::replace("_p:t:0", 1, 1, r#"{"e":1,"o":1,"a":[3,"abc"]}"#),
        Write::replace("_p:t:0", 1, 1, r#"{"e":1,"a":[3,""]}"#),
        Write::replace("not_a_partial", 1, 1, &good),
    ];
    for write in &bad {
        let error = entry.try_write(con, write).expect_err(&format!("{write:?} was accepted"));
        assert!(error.to_string().contains("merge script"), "{error}");
        assert!(!entry.exists(con), "{write:?} wrote something");
    }

    let args = ("_p:t:0", 1, 1, "r", r#"{"e":1,"o":1,"a":[1]}"#, WINDOW.0, WINDOW.1, "n", 0, "median:m");
    let error = merge::<i64>(con, &entry.key, args).expect_err("an unknown function was accepted");
    assert!(error.to_string().contains("merge script"), "{error}");
    assert!(!entry.exists(con));

    // The sole writer's short cut stores the partial undecoded: one whose
    // frame, epoch or offset is not the arguments' is refused.
    let accumulators = accumulate(&entry.spec, &[rec(0, 0.0, "", 1)]);
    for partial in [entry.partial(2, 1, &accumulators), entry.partial(1, 2, &accumulators), "{not json".to_string()] {
        let write = Write::replace("_p:t:0", 1, 1, &partial);
        let error = entry.try_write_sole(con, &write, &accumulators, "").expect_err("a mismatched partial accepted");
        assert!(error.to_string().contains("merge script"), "{error}");
        assert!(!entry.exists(con), "{write:?} wrote something");
    }

    // A stored partial that is corrupt refuses later writes instead of
    // silently dropping that source's contribution.
    assert_eq!(entry.write(con, &Write::replace("_p:t:0", 1, 1, &good)), 1);
    redis::cmd("HSET").arg(&entry.key).arg("_p:t:1").arg("garbage").query::<()>(con).expect("HSET failed");
    let before = entry.hgetall(con);
    let error = entry.try_write(con, &Write::replace("_p:t:0", 1, 2, &good)).expect_err("corrupt entry accepted");
    assert!(error.to_string().contains("_p:t:1"), "{error}");
    assert_eq!(entry.hgetall(con), before);
}

/// Change capture (ARGV[11]): `c` raises the entry's version (`_v`) with
/// every change and replies with status, version and the public fields; a
/// stale replay replies with the entry as it stands (so that a lost
/// publication is made again), a fenced write with -1 only; a deletion
/// replies with the next version and no fields and leaves the version as a
/// tombstone. `v` keeps versions and replies with integers; no capture
/// keeps no version.
#[test]
fn captured_changes_carry_versions_and_the_public_fields() {
    use redis::Value;
    let server = server();
    let con = &mut server.connection();
    let entry = Entry::new("capture", &[(F::Count, "n"), (F::Sum, "total")]);
    let records = [rec(1, 2.5, "a", 1), rec(2, 4.0, "b", 2)];
    let partial = |epoch, offset, records: &[Record]| entry.partial(epoch, offset, &accumulate(&entry.spec, records));
    // The reply as (status, version, fields), from the reply's own shape.
    let change = |reply: Value| -> (i64, i64, BTreeMap<String, String>) {
        let Value::Array(items) = reply else { panic!("an array reply, got {reply:?}") };
        let (Value::Int(status), Value::Int(version)) = (&items[0], &items[1]) else { panic!("{items:?}") };
        let fields = items[2..]
            .chunks(2)
            .map(|kv| {
                (redis::from_redis_value(kv[0].clone()).unwrap(), redis::from_redis_value(kv[1].clone()).unwrap())
            })
            .collect();
        (*status, *version, fields)
    };
    let public = |n: &str, total: &str| {
        BTreeMap::from([
            ("window_start".to_string(), WINDOW.0.to_string()),
            ("window_end".to_string(), WINDOW.1.to_string()),
            ("n".to_string(), n.to_string()),
            ("total".to_string(), total.to_string()),
        ])
    };

    let first = Write::replace("_p:orders:0", 1, 5, &partial(1, 5, &records[..1]));
    assert_eq!(change(entry.capture(con, &first, "c")), (1, 1, public("1", "2.5")));
    let other = Write::replace("_p:orders:1", 1, 3, &partial(1, 3, &records[1..]));
    assert_eq!(change(entry.capture(con, &other, "c")), (1, 2, public("2", "6.5")));
    assert_eq!(entry.hgetall(con)["_v"], "2");
    // A replay from before the first write: stale, and the entry as it stands.
    let older = Write::replace("_p:orders:0", 1, 4, &partial(1, 4, &[]));
    assert_eq!(change(entry.capture(con, &older, "c")), (0, 2, public("2", "6.5")));
    assert_eq!(entry.hgetall(con)["_v"], "2");
    // A zombie's write: fenced, nothing returned.
    let newer = Write::replace("_p:orders:0", 2, 6, &partial(2, 6, &records[..1]));
    assert_eq!(change(entry.capture(con, &newer, "c")), (1, 3, public("2", "6.5")));
    assert_eq!(entry.capture(con, &first, "c"), Value::Int(-1));
    // Versions only: integer replies, the version still counts.
    let amend = Write::amend("_p:orders:1", 1, 4, &partial(1, 4, &records[..1]));
    assert_eq!(entry.capture(con, &amend, "v"), Value::Int(1));
    assert_eq!(entry.hgetall(con)["_v"], "4");
    // Deletions: the last one removes the entry, leaving its version as a
    // tombstone for a day, and replies the next version.
    assert_eq!(change(entry.capture(con, &Write::retract("_p:orders:1", 1, 9), "c")), (1, 5, public("1", "2.5")));
    assert_eq!(change(entry.capture(con, &Write::retract("_p:orders:0", 2, 9), "c")), (2, 6, BTreeMap::new()));
    let tombstone = BTreeMap::from([
        ("_v".to_string(), "6".to_string()),
        ("_f:orders:0".to_string(), "2".to_string()),
        ("_f:orders:1".to_string(), "1".to_string()),
    ]);
    assert_eq!(entry.hgetall(con), tombstone);
    let ttl = entry.pttl(con);
    assert!(ttl > 86_000_000 && ttl <= 86_400_000, "tombstone expiry {ttl}");
    // A replayed retraction finds the tombstone: the deletion again, newer.
    assert_eq!(change(entry.capture(con, &Write::retract("_p:orders:0", 2, 10), "c")), (2, 7, BTreeMap::new()));
    // Re-created over the tombstone: versions go on, the expiry goes.
    let again = Write::replace("_p:orders:0", 2, 11, &partial(2, 11, &records[..1]));
    assert_eq!(change(entry.capture(con, &again, "c")), (1, 8, public("1", "2.5")));
    assert_eq!(entry.pttl(con), -1);

    // Retracting from nothing: no change, no version, only the fence.
    let nothing = Entry::new("capture-nothing", &[(F::Count, "n"), (F::Sum, "total")]);
    assert_eq!(nothing.capture(con, &Write::retract("_p:orders:0", 1, 1), "c"), Value::Int(2));
    assert_eq!(nothing.hgetall(con), BTreeMap::from([("_f:orders:0".to_string(), "1".to_string())]));
    // No capture: no version kept.
    let plain = Entry::new("capture-none", &[(F::Count, "n"), (F::Sum, "total")]);
    assert_eq!(plain.capture(con, &first, ""), Value::Int(1));
    assert!(!plain.hgetall(con).contains_key("_v"));
}
