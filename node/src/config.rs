//! The TOML configuration: parsing, defaults and validation. Every error
//! names the offending key, so an operator can fix the file without
//! reading code.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use shoal_core::keyrate::name_id;
use shoal_core::ratelimit::{KeyKind, LimitRule, Scope};
use shoal_core::{
    BacklogLimits, Level, ModeRules, NodeParams, Rule, StateLimits, DEFAULT_RELAY_CAPACITY,
};
use shoal_wire::{MacKey, MacKeys, Prefix, HEADER_LEN, MAX_DATAGRAM};

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The I/O error is the source, not part of the message: `{:#}` prints
    /// the chain once.
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid `{key}`: {message}")]
    Invalid { key: String, message: String },
}

/// A secret from the config or from a file it names: cluster keys,
/// passwords, API tokens, token keys. It has no `Display`, and its `Debug`
/// prints `<redacted N bytes>`, so printing a config (`shoal check`, a
/// `?cfg` in a log line) cannot show one; code that needs the bytes asks
/// for them by name with [`Secret::expose`].
///
/// No `PartialEq` either: compare tokens in constant time where they are
/// checked.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<redacted {} bytes>", self.0.len())
    }
}

/// Largest `state.session_capacity`: a mark takes about 120 bytes (table
/// entry and eviction queue, measured at 4 M marks), so ~6 GB at the limit.
pub const MAX_SESSION_CAPACITY: usize = 50_000_000;
/// Largest `state.max_resources`: a resource takes about 1 KB with 16 nodes
/// reporting (a load gauge and a mode claim per node, measured), so ~5 GB
/// at the limit.
pub const MAX_RESOURCES: usize = 5_000_000;
/// Largest `state.max_peers`: every peer adds a gauge and a claim to each
/// resource; a cluster is ~16 nodes.
pub const MAX_PEERS: usize = 4096;

/// Largest config file read.
const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Largest password or token file read (`/dev/zero` must not fill memory).
const MAX_SECRET_FILE_BYTES: u64 = 64 << 10;

/// Reads a UTF-8 file of at most `max` bytes; a longer one is an
/// `InvalidData` error rather than a read without end.
pub(crate) fn read_bounded(path: &Path, max: u64) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(max + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("longer than {max} bytes"),
        ));
    }
    Ok(text)
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub node: NodeSection,
    pub multicast: MulticastSection,
    #[serde(default)]
    pub auth: Option<AuthSection>,
    pub local: LocalSection,
    #[serde(default)]
    pub http: HttpSection,
    #[serde(default)]
    pub state: StateSection,
    #[serde(default)]
    pub modes: ModesSection,
    /// The cluster's Tarantool state store; absent means saves are only
    /// applied and sent (and counted as unsaved).
    #[serde(default)]
    pub store: Option<StoreSection>,
    /// The cross-cluster verdict store, the post-markup API, session
    /// tokens and the queue forwarder; absent means none of them.
    #[serde(default)]
    pub verdicts: Option<VerdictsSection>,
    /// The log responder: syslog listeners and the rules file; absent
    /// means no syslog is read.
    #[serde(default)]
    pub syslog: Option<crate::syslog::SyslogSection>,
    /// Kernel enforcement of the cluster's blocks (`docs/enforce.md`);
    /// absent means blocks are held and relayed but not enforced here.
    #[serde(default)]
    pub enforce: Option<crate::enforce::EnforceSection>,
    /// Cluster-wide rate limits (`docs/ratelimit.md`).
    #[serde(default)]
    pub limits: Vec<LimitSection>,
}

/// Most `[[limits]]` a config may have.
pub(crate) const MAX_LIMITS: usize = 64;
/// Most keys one limit may count (fixed memory: about 100 bytes a key).
pub(crate) const MAX_LIMIT_KEYS: usize = 16 << 20;

/// One `[[limits]]` table: `hashlimit`'s rate, burst, table size and
/// expiry, for one kind of key, shared by the cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSection {
    /// Unique; filters name the limit by the FNV-1a 32-bit hash of it
    /// (`shoal_limit_id()` in `shoal.h`).
    pub name: String,
    /// `addr`, `session`, `resource` or `opaque`.
    pub key: String,
    /// Hits per second per key (cluster-wide unless `scope = "node"`).
    pub rate: f64,
    /// Hits admitted at once after a key was quiet; default: one second
    /// of `rate` (at least 1).
    #[serde(default)]
    pub burst: Option<f64>,
    /// Keys counted per node (`--hashlimit-htable-max`).
    #[serde(default = "default_limit_keys")]
    pub max_keys: usize,
    /// A key not hit for this long is forgotten (`--hashlimit-htable-expire`).
    #[serde(default = "default_limit_idle_ms")]
    pub idle_ms: u64,
    /// `cluster` (default): the limit holds for the whole cluster; `node`:
    /// every node applies it alone (up to N times the rate in total).
    #[serde(default = "default_limit_scope")]
    pub scope: String,
    /// For `key = "addr"`: count IPv4 sources per this prefix (0..=32).
    #[serde(default = "default_v4_prefix")]
    pub prefix_v4: u8,
    /// For `key = "addr"`: count IPv6 sources per this prefix (0..=64).
    #[serde(default = "default_v6_prefix")]
    pub prefix_v6: u8,
    /// Also enforce the limit on new TCP connections per source in this
    /// node's kernel (an nftables meter in the `[enforce]` table): `addr`
    /// keys only, needs `[enforce]`. The kernel's meter is per node.
    #[serde(default)]
    pub kernel: bool,
    /// Block a source denied continuously for `after_ms` for `ttl_ms`
    /// (`addr` keys only, needs `[enforce]`).
    #[serde(default)]
    pub escalate: Option<EscalateSection>,
}

/// `escalate = { after_ms = 10000, ttl_ms = 600000 }` of a `[[limits]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscalateSection {
    /// How long a key must be denied without a pause longer than
    /// `gap_ms` before it is blocked.
    pub after_ms: u64,
    /// The block's TTL.
    pub ttl_ms: u64,
    /// The longest pause between denials that still counts as continuous.
    #[serde(default = "default_escalate_gap_ms")]
    pub gap_ms: u64,
}

fn default_escalate_gap_ms() -> u64 {
    1_000
}

fn default_limit_keys() -> usize {
    65_536
}
fn default_limit_idle_ms() -> u64 {
    60_000
}
fn default_limit_scope() -> String {
    "cluster".into()
}
fn default_v4_prefix() -> u8 {
    32
}
fn default_v6_prefix() -> u8 {
    64
}

impl LimitSection {
    fn validate(&self, k: &str) -> Result<(), ConfigError> {
        if self.name.is_empty() || self.name.len() > 64 {
            return Err(invalid(&format!("{k}.name"), "1 to 64 bytes"));
        }
        if !self
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
        {
            return Err(invalid(
                &format!("{k}.name"),
                "letters, digits, '_', '-' and '.' only (it is a metric label)",
            ));
        }
        self.kind(k)?;
        if !(self.rate.is_finite() && self.rate > 0.0 && self.rate <= 1e9) {
            return Err(invalid(
                &format!("{k}.rate"),
                "must be > 0 and <= 1e9 hits/s",
            ));
        }
        if let Some(b) = self.burst {
            if !(b.is_finite() && (1.0..=1e12).contains(&b)) {
                return Err(invalid(&format!("{k}.burst"), "must be >= 1 and <= 1e12"));
            }
        }
        if self.max_keys == 0 || self.max_keys > MAX_LIMIT_KEYS {
            return Err(invalid(
                &format!("{k}.max_keys"),
                format!("must be 1..={MAX_LIMIT_KEYS}"),
            ));
        }
        if self.idle_ms == 0 || self.idle_ms > 86_400_000 {
            return Err(invalid(&format!("{k}.idle_ms"), "must be 1..=86400000"));
        }
        self.scope(k)?;
        Ok(())
    }

    /// The kernel and escalation keys, which need an address key and the
    /// enforcer (`enforce`, when configured).
    fn validate_kernel(
        &self,
        k: &str,
        enforce: Option<&crate::enforce::EnforceSection>,
    ) -> Result<(), ConfigError> {
        let needs = |what: &str| -> Result<&crate::enforce::EnforceSection, ConfigError> {
            if self.key != "addr" {
                return Err(invalid(
                    &format!("{k}.{what}"),
                    format!(
                        "only for key = \"addr\" (the kernel and blocks know source addresses, \
                         not {} keys)",
                        self.key
                    ),
                ));
            }
            enforce.ok_or_else(|| {
                invalid(
                    &format!("{k}.{what}"),
                    "needs an [enforce] section (the table the meter and blocks go in)",
                )
            })
        };
        if self.kernel {
            needs("kernel")?;
            if crate::nft_meter::KernelLimit::rate_unit(self.rate).is_none() {
                return Err(invalid(
                    &format!("{k}.rate"),
                    "with kernel = true the rate must be a whole number of packets per \
                     second, minute, hour, day or week",
                ));
            }
            if self.burst.is_some_and(|b| b > f64::from(u32::MAX)) {
                return Err(invalid(
                    &format!("{k}.burst"),
                    "with kernel = true at most 4294967295",
                ));
            }
        }
        if let Some(e) = &self.escalate {
            let enf = needs("escalate")?;
            if !(100..=86_400_000).contains(&e.after_ms) {
                return Err(invalid(
                    &format!("{k}.escalate.after_ms"),
                    "100 to 86400000",
                ));
            }
            if !(1_000..=enf.max_ttl_ms).contains(&e.ttl_ms) {
                return Err(invalid(
                    &format!("{k}.escalate.ttl_ms"),
                    format!("1000 to enforce.max_ttl_ms ({})", enf.max_ttl_ms),
                ));
            }
            if !(100..=60_000).contains(&e.gap_ms) {
                return Err(invalid(&format!("{k}.escalate.gap_ms"), "100 to 60000"));
            }
        }
        Ok(())
    }

    /// The kernel meter of this limit, with `kernel = true`.
    pub fn kernel_limit(&self) -> Option<crate::nft_meter::KernelLimit> {
        if !self.kernel {
            return None;
        }
        let (rate, unit_s) = crate::nft_meter::KernelLimit::rate_unit(self.rate)?;
        let burst = self
            .burst
            .unwrap_or(self.rate)
            .floor()
            .clamp(1.0, f64::from(u32::MAX));
        Some(crate::nft_meter::KernelLimit {
            name: self.name.clone(),
            rate,
            unit_s,
            burst: burst as u32,
            size: u32::try_from(self.max_keys).unwrap_or(u32::MAX),
            idle_ms: self.idle_ms,
            v4_prefix: self.prefix_v4,
            v6_prefix: self.prefix_v6,
        })
    }

    fn kind(&self, k: &str) -> Result<KeyKind, ConfigError> {
        match self.key.as_str() {
            "addr" => {
                if self.prefix_v4 > 32 {
                    return Err(invalid(&format!("{k}.prefix_v4"), "must be 0..=32"));
                }
                if self.prefix_v6 > 64 {
                    return Err(invalid(&format!("{k}.prefix_v6"), "must be 0..=64"));
                }
                Ok(KeyKind::Addr {
                    v4_prefix: self.prefix_v4,
                    v6_prefix: self.prefix_v6,
                })
            }
            "session" => Ok(KeyKind::Session),
            "resource" => Ok(KeyKind::Resource),
            "opaque" => Ok(KeyKind::Opaque),
            other => Err(invalid(
                &format!("{k}.key"),
                format!("`{other}`: one of addr, session, resource, opaque"),
            )),
        }
    }

    fn scope(&self, k: &str) -> Result<Scope, ConfigError> {
        match self.scope.as_str() {
            "cluster" => Ok(Scope::Cluster),
            "node" => Ok(Scope::Node),
            other => Err(invalid(
                &format!("{k}.scope"),
                format!("`{other}`: cluster or node"),
            )),
        }
    }

    /// The core's rule (after `validate`).
    pub fn rule(&self) -> LimitRule {
        LimitRule {
            name: self.name.clone(),
            kind: self.kind("").unwrap_or(KeyKind::Opaque),
            rate: self.rate,
            burst: self.burst.unwrap_or(self.rate).max(1.0),
            max_keys: self.max_keys,
            idle: Duration::from_millis(self.idle_ms),
            scope: self.scope("").unwrap_or(Scope::Cluster),
            escalate: self
                .escalate
                .as_ref()
                .map(|e| shoal_core::ratelimit::Escalate {
                    after: Duration::from_millis(e.after_ms),
                    ttl: Duration::from_millis(e.ttl_ms),
                    gap: Duration::from_millis(e.gap_ms),
                }),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerdictsSection {
    /// `host:port` of this cluster's verdict store.
    pub store: String,
    #[serde(default = "default_store_user")]
    pub user: String,
    #[serde(default)]
    pub password: Option<Secret>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// This node's key prefix in the verdict store and its name as
    /// forwarder; default `c<cluster>-n<id>`.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default = "default_verdict_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Bearer tokens the HTTP API accepts (any one of them), or a file
    /// holding one per line.
    #[serde(default)]
    pub api_tokens: Vec<Secret>,
    #[serde(default)]
    pub api_tokens_file: Option<PathBuf>,
    /// Largest request body the API reads, in bytes.
    #[serde(default = "default_max_body")]
    pub max_body: usize,
    /// Longest verdict TTL a request may ask for, in seconds.
    #[serde(default = "default_max_ttl_s")]
    pub max_ttl_s: u64,
    /// The session-token key tokens are minted with, and the previous one
    /// still accepted during a rotation (at least 16 bytes each).
    pub token_key_id: u8,
    pub token_secret: Secret,
    #[serde(default)]
    pub previous_token_key_id: Option<u8>,
    #[serde(default)]
    pub previous_token_secret: Option<Secret>,
    /// Take part in the election of this cluster's queue forwarder.
    #[serde(default = "default_true")]
    pub forwarder: bool,
    /// Lease of the forwarder: a dead holder is replaced within about this
    /// long (renewed every third of it).
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
    /// How often the forwarder publishes and fetches.
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
    /// Mode records every node keeps for a new forwarder to publish.
    #[serde(default = "default_relay_capacity")]
    pub relay_capacity: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// `host:port` of the cluster's masters, preferred first. Saves go to
    /// one at a time and fail over to the next.
    pub masters: Vec<String>,
    #[serde(default = "default_store_user")]
    pub user: String,
    /// The password, or `password_file` naming a file that holds it.
    #[serde(default)]
    pub password: Option<Secret>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// This node's key prefix in the log; default `c<cluster>-n<id>`.
    #[serde(default)]
    pub name: Option<String>,
    /// Records waiting for Tarantool (queued and in flight), at most.
    #[serde(default = "default_backlog")]
    pub backlog: usize,
    /// Records per stored-procedure call (one transaction).
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Batches in flight at once.
    #[serde(default = "default_in_flight")]
    pub in_flight: usize,
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Load the live records from the store before serving the filter.
    #[serde(default = "default_true")]
    pub replay: bool,
    /// How long to wait for a master at start before serving without the
    /// stored context (logged, and `shoal_replay_ok 0`).
    #[serde(default = "default_replay_timeout_ms")]
    pub replay_timeout_ms: u64,
    /// The stored procedure each batch is saved with: the Lua
    /// `shoal_save`, or the expiry module's native one,
    /// `shoal_expirer.shoal_save` (same arguments, same effect; the
    /// masters must run with `SHOAL_TT_EXPIRER=shoal_expirer`).
    #[serde(default = "default_save_function")]
    pub save_function: String,
    /// When a batch counts as saved: `local` (committed on the master) or
    /// `replicated` (and acknowledged by its peer); default `replicated`
    /// with two masters or more, `local` with one. docs/store.md.
    #[serde(default)]
    pub ack: Option<AckSetting>,
    /// How long a master waits for its peer under `replicated` before it
    /// answers "saved here only" (counted, warned).
    #[serde(default = "default_ack_timeout_ms")]
    pub ack_timeout_ms: u64,
    /// Ping a master after this long without a request or answer; a
    /// suspect master is pinged this often.
    #[serde(default = "default_ping_ms")]
    pub ping_ms: u64,
    /// Drop a connection that has been silent this long while a request
    /// waits (also TCP_USER_TIMEOUT and keepalive).
    #[serde(default = "default_dead_ms")]
    pub dead_ms: u64,
    /// Consecutive timeouts (or lost requests, failed pings) after which a
    /// master is suspect and saves fail over.
    #[serde(default = "default_suspect_after")]
    pub suspect_after: u32,
    /// The preferred master is taken back once healthy this long.
    #[serde(default = "default_failback_ms")]
    pub failback_ms: u64,
}

/// `[store] ack`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckSetting {
    Local,
    Replicated,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// Unique within the cluster, non-zero.
    pub id: u32,
    pub cluster: u32,
    /// Where the node keeps the floor of its next incarnation across
    /// restarts (see [`Config::incarnation_file`] for the default).
    #[serde(default)]
    pub incarnation_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MulticastSection {
    pub group: Ipv4Addr,
    pub port: u16,
    /// Address of the interface to send and join on. Always explicit: the
    /// host's default route may point elsewhere.
    pub interface: Ipv4Addr,
    #[serde(default = "default_ttl")]
    pub ttl: u32,
    #[serde(default = "default_true", rename = "loop")]
    pub loopback: bool,
    #[serde(default = "default_rcvbuf")]
    pub rcvbuf: usize,
    #[serde(default = "default_sndbuf")]
    pub sndbuf: usize,
    #[serde(default = "default_max_datagram")]
    pub max_datagram: usize,
    /// How long a partly filled datagram may wait for more records.
    #[serde(default = "default_flush_us")]
    pub flush_us: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    pub key_id: u8,
    pub secret: Secret,
    #[serde(default)]
    pub previous_key_id: Option<u8>,
    #[serde(default)]
    pub previous_secret: Option<Secret>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalSection {
    pub socket: PathBuf,
    /// Create the socket's missing directories (mode 0755). Off by
    /// default: a typo in `socket` must not make directories anywhere.
    #[serde(default)]
    pub create_dir: bool,
    /// Permissions of the socket file, as an octal string (`"0660"`);
    /// absent leaves the process umask's. Connecting needs write access.
    #[serde(default)]
    pub mode: Option<String>,
    /// Group of the socket file: a name or a gid. A filter running as
    /// another user in that group can then connect (with `mode` 0660).
    #[serde(default)]
    pub group: Option<GroupSpec>,
}

/// A group as the config names it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum GroupSpec {
    Id(u32),
    Name(String),
}

impl LocalSection {
    /// The socket's permission bits, from the validated `mode`.
    pub fn mode_bits(&self) -> Option<u32> {
        self.mode.as_deref().and_then(parse_mode)
    }

    /// What can be judged from the text alone; the file system is looked
    /// at by [`Config::preflight`](crate::Config::preflight).
    fn validate(&self) -> Result<(), ConfigError> {
        use std::os::unix::ffi::OsStrExt;
        let path = self.socket.as_os_str().as_bytes();
        if path.is_empty() || path.ends_with(b"/") {
            return Err(invalid("local.socket", "must be the path of a file"));
        }
        if path.contains(&0) {
            return Err(invalid("local.socket", "must not contain a NUL byte"));
        }
        if path.len() > MAX_SOCKET_PATH {
            return Err(invalid(
                "local.socket",
                format!(
                    "{} bytes is longer than a Unix socket path can be ({MAX_SOCKET_PATH})",
                    path.len()
                ),
            ));
        }
        if let Some(m) = &self.mode {
            if parse_mode(m).is_none() {
                return Err(invalid(
                    "local.mode",
                    format!("`{m}` is not octal permission bits up to 0777, e.g. \"0660\""),
                ));
            }
        }
        if let Some(GroupSpec::Name(n)) = &self.group {
            if n.is_empty() || n.len() > 64 || n.bytes().any(|b| b == b':' || b.is_ascii_control())
            {
                return Err(invalid(
                    "local.group",
                    "must be a group name or a numeric gid",
                ));
            }
        }
        Ok(())
    }
}

/// Octal permission bits: `"0660"`, `"660"` or `"0o660"`, at most 0777.
fn parse_mode(s: &str) -> Option<u32> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    if digits.is_empty() || digits.len() > 4 {
        return None;
    }
    u32::from_str_radix(digits, 8).ok().filter(|m| *m <= 0o777)
}

/// The longest socket path `bind` takes: `sun_path` is 108 bytes with
/// its terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// The two HTTP listeners and what each allows per connection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// `host:port` for `/metrics`, `/status` and `/healthz`; empty
    /// disables it.
    #[serde(default = "default_http_admin")]
    pub admin: String,
    /// `host:port` for the post-markup API (`/v1/...`), served only with
    /// a `[verdicts]` section; default `127.0.0.1:9478` then, empty
    /// disables it.
    #[serde(default)]
    pub api: Option<String>,
    /// The old single listener: refused, with a pointer to `admin`/`api`.
    #[serde(default)]
    pub listen: Option<String>,
    /// Connections open at once per listener; at the cap a newcomer
    /// closes the connection that made the least progress.
    #[serde(default = "default_http_max_connections")]
    pub max_connections: usize,
    /// Largest request head (request line and headers), in bytes: 431.
    #[serde(default = "default_http_max_head")]
    pub max_head: usize,
    /// From accept, or from the previous response, to a complete head.
    #[serde(default = "default_http_header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
    /// A connection that sent no byte of a request for this long is
    /// closed (at most `header_read_timeout_ms`).
    #[serde(default = "default_http_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Reading a request's body, from the end of its head: 408 after.
    #[serde(default = "default_http_body_timeout_ms")]
    pub body_timeout_ms: u64,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            admin: default_http_admin(),
            api: None,
            listen: None,
            max_connections: default_http_max_connections(),
            max_head: default_http_max_head(),
            header_read_timeout_ms: default_http_header_read_timeout_ms(),
            idle_timeout_ms: default_http_idle_timeout_ms(),
            body_timeout_ms: default_http_body_timeout_ms(),
        }
    }
}

impl HttpSection {
    fn validate(&self, verdicts: bool) -> Result<(), ConfigError> {
        if self.listen.is_some() {
            return Err(invalid(
                "http.listen",
                "replaced by http.admin (/metrics, /status, /healthz) and http.api (/v1, with [verdicts])",
            ));
        }
        let admin = match self.admin.as_str() {
            "" => None,
            a => Some(
                a.parse::<SocketAddr>()
                    .map_err(|_| invalid("http.admin", "must be host:port, e.g. 127.0.0.1:9477"))?,
            ),
        };
        let api = match self.api.as_deref() {
            None | Some("") => None,
            Some(_) if !verdicts => {
                return Err(invalid(
                    "http.api",
                    "needs a [verdicts] section (the API serves verdicts)",
                ))
            }
            Some(a) => Some(
                a.parse::<SocketAddr>()
                    .map_err(|_| invalid("http.api", "must be host:port, e.g. 127.0.0.1:9478"))?,
            ),
        };
        if let (Some(a), Some(b)) = (admin, api) {
            if a == b && a.port() != 0 {
                return Err(invalid("http.api", "must differ from http.admin"));
            }
        }
        if !(1..=65_536).contains(&self.max_connections) {
            return Err(invalid("http.max_connections", "must be in 1..=65536"));
        }
        if !(1024..=1 << 20).contains(&self.max_head) {
            return Err(invalid("http.max_head", "must be in 1024..=1048576"));
        }
        for (key, v) in [
            ("http.header_read_timeout_ms", self.header_read_timeout_ms),
            ("http.idle_timeout_ms", self.idle_timeout_ms),
            ("http.body_timeout_ms", self.body_timeout_ms),
        ] {
            if !(100..=600_000).contains(&v) {
                return Err(invalid(key, "must be in 100..=600000"));
            }
        }
        if self.idle_timeout_ms > self.header_read_timeout_ms {
            return Err(invalid(
                "http.idle_timeout_ms",
                "must not exceed http.header_read_timeout_ms (the wait for a next head counts as reading it)",
            ));
        }
        Ok(())
    }

    /// The API's address: with `[verdicts]`, the configured one or the
    /// default; `None` when off.
    pub fn api_addr(&self, verdicts: bool) -> Option<String> {
        if !verdicts {
            return None;
        }
        match self.api.as_deref() {
            None => Some(default_http_api()),
            Some("") => None,
            Some(a) => Some(a.to_string()),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSection {
    /// A load gauge older than this stops counting in cluster totals.
    #[serde(default = "default_load_stale_ms")]
    pub load_stale_ms: u64,
    #[serde(default = "default_max_resources")]
    pub max_resources: usize,
    #[serde(default = "default_max_peers")]
    pub max_peers: usize,
    #[serde(default = "default_session_capacity")]
    pub session_capacity: usize,
    /// TTL given to a mode or session mark that arrives with `ttl_ms = 0`.
    #[serde(default = "default_ttl_ms")]
    pub default_ttl_ms: u64,
    /// How far apart the nodes' clocks may be (they must run NTP): a
    /// record with a lifetime older than its TTL plus this, or stamped
    /// further than this in the future, is refused.
    #[serde(default = "default_clock_skew_ms")]
    pub clock_skew_ms: u64,
}

impl Default for StateSection {
    fn default() -> Self {
        StateSection {
            load_stale_ms: default_load_stale_ms(),
            max_resources: default_max_resources(),
            max_peers: default_max_peers(),
            session_capacity: default_session_capacity(),
            default_ttl_ms: default_ttl_ms(),
            clock_skew_ms: default_clock_skew_ms(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModesSection {
    /// Rule for every resource without a rule of its own.
    #[serde(default)]
    pub default: Option<RuleSection>,
    #[serde(default)]
    pub resource: Vec<ResourceRuleSection>,
    /// Most changes of this node's claims per second (raise, lower,
    /// release; keep-alives are not changes). The excess is counted
    /// (`shoal_mode_changes_deferred_total`) and tried again later.
    #[serde(default = "default_max_changes_per_s")]
    pub max_changes_per_s: u32,
}

impl Default for ModesSection {
    fn default() -> Self {
        ModesSection {
            default: None,
            resource: Vec::new(),
            max_changes_per_s: default_max_changes_per_s(),
        }
    }
}

fn default_max_changes_per_s() -> u32 {
    10_000
}

/// Largest `modes.max_changes_per_s`.
const MAX_CHANGES_PER_S: u32 = 10_000_000;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSection {
    #[serde(default = "default_min_hold_ms")]
    pub min_hold_ms: u64,
    #[serde(default = "default_claim_ttl_ms")]
    pub claim_ttl_ms: u64,
    pub levels: Vec<LevelSection>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceRuleSection {
    pub id: u64,
    #[serde(flatten)]
    pub rule: RuleSection,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LevelSection {
    pub level: u8,
    /// Cluster total (requests/s) at which this level switches on.
    pub total_up: u64,
    /// Cluster total below which it may switch off again.
    pub total_down: u64,
    /// This node's own rate at which it switches on (a spike seen locally
    /// first); absent means the local rate alone never raises it.
    #[serde(default)]
    pub local_up: Option<u64>,
    #[serde(default)]
    pub local_down: Option<u64>,
}

fn default_ttl() -> u32 {
    1
}
fn default_true() -> bool {
    true
}
fn default_rcvbuf() -> usize {
    8 << 20
}
fn default_sndbuf() -> usize {
    1 << 20
}
fn default_max_datagram() -> usize {
    1400
}
fn default_flush_us() -> u64 {
    200
}
fn default_http_admin() -> String {
    "127.0.0.1:9477".to_string()
}
fn default_http_api() -> String {
    "127.0.0.1:9478".to_string()
}
fn default_http_max_connections() -> usize {
    1024
}
fn default_http_max_head() -> usize {
    16 << 10
}
fn default_http_header_read_timeout_ms() -> u64 {
    10_000
}
fn default_http_idle_timeout_ms() -> u64 {
    5_000
}
fn default_http_body_timeout_ms() -> u64 {
    10_000
}
fn default_load_stale_ms() -> u64 {
    2000
}
fn default_max_resources() -> usize {
    100_000
}
fn default_max_peers() -> usize {
    256
}
fn default_session_capacity() -> usize {
    1_000_000
}
fn default_ttl_ms() -> u64 {
    10_000
}
fn default_clock_skew_ms() -> u64 {
    500
}
/// Most clock skew allowed: beyond this the clocks are not synchronised,
/// and a replayed record would live too long.
const MAX_CLOCK_SKEW_MS: u64 = 60_000;
fn default_store_user() -> String {
    "shoal".to_string()
}
fn default_backlog() -> usize {
    1_000_000
}
fn default_batch() -> usize {
    1000
}
fn default_in_flight() -> usize {
    4
}
fn default_request_timeout_ms() -> u64 {
    5_000
}
fn default_replay_timeout_ms() -> u64 {
    10_000
}
fn default_ack_timeout_ms() -> u64 {
    500
}
fn default_ping_ms() -> u64 {
    500
}
fn default_dead_ms() -> u64 {
    2_000
}
fn default_suspect_after() -> u32 {
    2
}
fn default_failback_ms() -> u64 {
    5_000
}
fn default_save_function() -> String {
    shoal_tarantool::statelog::SAVE_LUA.to_string()
}
fn default_verdict_timeout_ms() -> u64 {
    1_000
}
fn default_max_body() -> usize {
    4096
}
fn default_max_ttl_s() -> u64 {
    30 * 86_400
}
fn default_lease_ms() -> u64 {
    3_000
}
fn default_poll_ms() -> u64 {
    20
}
fn default_relay_capacity() -> usize {
    DEFAULT_RELAY_CAPACITY
}
fn default_min_hold_ms() -> u64 {
    5_000
}
fn default_claim_ttl_ms() -> u64 {
    10_000
}

/// Checks a `password` / `password_file` pair of section `sec`.
fn validate_password(
    sec: &str,
    password: &Option<Secret>,
    file: &Option<PathBuf>,
) -> Result<(), ConfigError> {
    match (password, file) {
        (Some(p), None) if !p.is_empty() => Ok(()),
        (None, Some(_)) => Ok(()),
        (Some(_), Some(_)) => Err(invalid(
            &format!("{sec}.password"),
            "give password or password_file, not both",
        )),
        _ => Err(invalid(
            &format!("{sec}.password"),
            "required (or password_file); the store never uses guest",
        )),
    }
}

/// The password of section `sec`, read from its file when given that way.
fn read_password(
    sec: &str,
    password: &Option<Secret>,
    file: &Option<PathBuf>,
) -> Result<Secret, ConfigError> {
    match (password, file) {
        (Some(p), _) => Ok(p.clone()),
        (None, Some(f)) => {
            let key = format!("{sec}.password_file");
            let text = read_bounded(f, MAX_SECRET_FILE_BYTES)
                .map_err(|e| invalid(&key, format!("cannot read {}: {e}", f.display())))?;
            let p = text.trim_end_matches(['\n', '\r']);
            if p.is_empty() {
                return Err(invalid(&key, format!("{} is empty", f.display())));
            }
            Ok(Secret::new(p))
        }
        (None, None) => Err(invalid(&format!("{sec}.password"), "required")),
    }
}

fn validate_name(key: &str, name: &Option<String>) -> Result<(), ConfigError> {
    if let Some(n) = name {
        if n.is_empty()
            || n.len() > 64
            || !n
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(invalid(
                key,
                "must be 1-64 characters of letters, digits, '.', '_' or '-'",
            ));
        }
    }
    Ok(())
}

fn validate_host_port(key: &str, addr: &str) -> Result<(), ConfigError> {
    if addr
        .rsplit_once(':')
        .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
    {
        return Err(invalid(key, format!("`{addr}` is not host:port")));
    }
    Ok(())
}

/// A node's name in a store: the configured one or `c<cluster>-n<id>`.
fn node_name(name: &Option<String>, cluster: u32, id: u32) -> String {
    name.clone().unwrap_or_else(|| format!("c{cluster}-n{id}"))
}

impl VerdictsSection {
    fn validate(&self, cluster: u32) -> Result<(), ConfigError> {
        validate_host_port("verdicts.store", &self.store)?;
        if self.user.is_empty() {
            return Err(invalid("verdicts.user", "must not be empty"));
        }
        validate_password("verdicts", &self.password, &self.password_file)?;
        validate_name("verdicts.name", &self.name)?;
        if cluster == 0 {
            return Err(invalid(
                "node.cluster",
                "must be non-zero with [verdicts]: relayed claims carry it",
            ));
        }
        if self.api_tokens.is_empty() && self.api_tokens_file.is_none() {
            return Err(invalid(
                "verdicts.api_tokens",
                "required (or api_tokens_file): the API never runs without auth",
            ));
        }
        if self.api_tokens.iter().any(|t| t.len() < 16) {
            return Err(invalid(
                "verdicts.api_tokens",
                "each token must be at least 16 characters",
            ));
        }
        if self.request_timeout_ms == 0 {
            return Err(invalid("verdicts.request_timeout_ms", "must be non-zero"));
        }
        if !(256..=1 << 20).contains(&self.max_body) {
            return Err(invalid("verdicts.max_body", "must be in 256..=1048576"));
        }
        if self.max_ttl_s == 0 {
            return Err(invalid("verdicts.max_ttl_s", "must be non-zero"));
        }
        if !(100..=86_400_000).contains(&self.lease_ms) {
            return Err(invalid("verdicts.lease_ms", "must be in 100..=86400000"));
        }
        if self.request_timeout_ms > self.lease_ms {
            return Err(invalid(
                "verdicts.request_timeout_ms",
                "must not exceed lease_ms: a hung renewal would outlive the lease",
            ));
        }
        if self.poll_ms == 0 || self.poll_ms * 2 > self.lease_ms {
            return Err(invalid(
                "verdicts.poll_ms",
                "must be non-zero and at most half of lease_ms",
            ));
        }
        if self.relay_capacity == 0 {
            return Err(invalid("verdicts.relay_capacity", "must be non-zero"));
        }
        self.token_keys().map(|_| ())
    }

    /// The password, read from `password_file` when given that way.
    pub fn password(&self) -> Result<String, ConfigError> {
        read_password("verdicts", &self.password, &self.password_file).map(|p| p.0)
    }

    pub fn node_name(&self, cluster: u32, id: u32) -> String {
        node_name(&self.name, cluster, id)
    }

    /// The accepted API bearer tokens: the inline ones and the file's.
    pub fn api_tokens(&self) -> Result<Vec<String>, ConfigError> {
        let mut all: Vec<String> = self.api_tokens.iter().map(|t| t.0.clone()).collect();
        if let Some(f) = &self.api_tokens_file {
            let text = read_bounded(f, MAX_SECRET_FILE_BYTES).map_err(|e| {
                invalid(
                    "verdicts.api_tokens_file",
                    format!("cannot read {}: {e}", f.display()),
                )
            })?;
            for t in text.lines().map(str::trim).filter(|t| !t.is_empty()) {
                if t.len() < 16 {
                    return Err(invalid(
                        "verdicts.api_tokens_file",
                        "each token must be at least 16 characters",
                    ));
                }
                all.push(t.to_string());
            }
        }
        if all.is_empty() {
            return Err(invalid("verdicts.api_tokens_file", "holds no token"));
        }
        Ok(all)
    }

    /// The session-token keys.
    pub fn token_keys(&self) -> Result<shoal_core::TokenKeys, ConfigError> {
        let previous = match (self.previous_token_key_id, &self.previous_token_secret) {
            (Some(id), Some(s)) => Some((id, s.expose().as_bytes())),
            (None, None) => None,
            (Some(_), None) => {
                return Err(invalid(
                    "verdicts.previous_token_secret",
                    "required with previous_token_key_id",
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "verdicts.previous_token_key_id",
                    "required with previous_token_secret",
                ))
            }
        };
        shoal_core::TokenKeys::new(
            (self.token_key_id, self.token_secret.expose().as_bytes()),
            previous,
        )
        .map_err(|e| invalid("verdicts.token_secret", e.to_string()))
    }
}

impl StoreSection {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.masters.is_empty() {
            return Err(invalid("store.masters", "needs at least one host:port"));
        }
        for m in &self.masters {
            validate_host_port("store.masters", m)?;
        }
        if self.user.is_empty() {
            return Err(invalid("store.user", "must not be empty"));
        }
        validate_password("store", &self.password, &self.password_file)?;
        validate_name("store.name", &self.name)?;
        if self.batch == 0 || self.batch > 10_000 {
            return Err(invalid("store.batch", "must be in 1..=10000"));
        }
        if self.backlog < self.batch {
            return Err(invalid("store.backlog", "must be at least store.batch"));
        }
        if self.in_flight == 0 || self.in_flight > 64 {
            return Err(invalid("store.in_flight", "must be in 1..=64"));
        }
        if self.request_timeout_ms == 0 {
            return Err(invalid("store.request_timeout_ms", "must be non-zero"));
        }
        if self.save_function.is_empty() {
            return Err(invalid(
                "store.save_function",
                "must name a stored procedure (e.g. shoal_save)",
            ));
        }
        if self.ack == Some(AckSetting::Replicated) && self.masters.len() < 2 {
            return Err(invalid(
                "store.ack",
                "\"replicated\" needs two masters (or set \"local\")",
            ));
        }
        if self.ack_timeout_ms == 0
            || (self.ack_level() == AckSetting::Replicated
                && self.ack_timeout_ms >= self.request_timeout_ms)
        {
            return Err(invalid(
                "store.ack_timeout_ms",
                "must be non-zero and under store.request_timeout_ms",
            ));
        }
        if self.ping_ms < 10 || self.ping_ms > 60_000 {
            return Err(invalid("store.ping_ms", "must be in 10..=60000"));
        }
        if self.dead_ms < 100 || self.dead_ms > 600_000 {
            return Err(invalid("store.dead_ms", "must be in 100..=600000"));
        }
        if self.suspect_after == 0 || self.suspect_after > 1_000 {
            return Err(invalid("store.suspect_after", "must be in 1..=1000"));
        }
        if self.failback_ms > 3_600_000 {
            return Err(invalid("store.failback_ms", "must be at most 3600000"));
        }
        Ok(())
    }

    /// The acknowledgement level in effect.
    pub fn ack_level(&self) -> AckSetting {
        self.ack.unwrap_or(if self.masters.len() >= 2 {
            AckSetting::Replicated
        } else {
            AckSetting::Local
        })
    }

    /// The password, read from `password_file` when given that way.
    pub fn password(&self) -> Result<String, ConfigError> {
        read_password("store", &self.password, &self.password_file).map(|p| p.0)
    }

    /// This node's key prefix in the log.
    pub fn node_name(&self, cluster: u32, id: u32) -> String {
        node_name(&self.name, cluster, id)
    }
}

impl Config {
    /// What no block may cover on this node, besides `[enforce]
    /// allowlist`: the sync interface's address and its network (the
    /// cluster's peers; unless `protect_sync_network = false`), and the stores this node talks to (given as IP
    /// literals; host names are not resolved here). A block of any of them
    /// would cut the node off from its cluster or its store.
    pub fn protected_prefixes(&self) -> Vec<Prefix> {
        let mut out = vec![Prefix::from(self.multicast.interface)];
        if self
            .enforce
            .as_ref()
            .is_some_and(|e| e.protect_sync_network)
        {
            out.extend(interface_network(self.multicast.interface));
        }
        let stores = self
            .store
            .iter()
            .flat_map(|s| s.masters.iter())
            .chain(self.verdicts.iter().map(|v| &v.store));
        for hp in stores {
            if let Ok(sa) = hp.parse::<SocketAddr>() {
                out.extend(Prefix::new(sa.ip(), if sa.is_ipv4() { 32 } else { 128 }).ok());
            }
        }
        out
    }

    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = read_bounded(path, MAX_CONFIG_BYTES).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<config>"),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(e) = &self.enforce {
            e.validate(self.auth.is_some())?;
        }
        if self.node.id == 0 {
            return Err(invalid("node.id", "must be non-zero"));
        }
        if self.limits.len() > MAX_LIMITS {
            return Err(invalid("limits", format!("at most {MAX_LIMITS}")));
        }
        for (i, l) in self.limits.iter().enumerate() {
            l.validate(&format!("limits[{i}]"))?;
            l.validate_kernel(&format!("limits[{i}]"), self.enforce.as_ref())?;
        }
        for (i, a) in self.limits.iter().enumerate() {
            for b in &self.limits[..i] {
                if a.name == b.name {
                    return Err(invalid(
                        &format!("limits[{i}].name"),
                        format!("`{}` is used twice", a.name),
                    ));
                }
                if name_id(&a.name) == name_id(&b.name) {
                    return Err(invalid(
                        &format!("limits[{i}].name"),
                        format!(
                            "`{}` and `{}` have the same id {:#010x}: rename one",
                            a.name,
                            b.name,
                            name_id(&a.name)
                        ),
                    ));
                }
            }
        }
        let m = &self.multicast;
        if !m.group.is_multicast() {
            return Err(invalid(
                "multicast.group",
                format!("{} is not an IPv4 multicast address", m.group),
            ));
        }
        if m.port == 0 {
            return Err(invalid("multicast.port", "must be non-zero"));
        }
        if m.interface.is_unspecified() || m.interface.is_multicast() {
            return Err(invalid(
                "multicast.interface",
                "must be the unicast address of the interface to use (e.g. 127.0.0.1)",
            ));
        }
        if m.ttl == 0 || m.ttl > 255 {
            return Err(invalid("multicast.ttl", "must be in 1..=255"));
        }
        let min = HEADER_LEN + 4 + 16 + shoal_wire::RECORD_LEN;
        if m.max_datagram < min || m.max_datagram > MAX_DATAGRAM {
            return Err(invalid(
                "multicast.max_datagram",
                format!("must be in {min}..={MAX_DATAGRAM}"),
            ));
        }
        if m.flush_us > 100_000 {
            return Err(invalid(
                "multicast.flush_us",
                "must be at most 100000 (100 ms); sync latency is the point",
            ));
        }
        if m.rcvbuf < 64 << 10 {
            return Err(invalid("multicast.rcvbuf", "must be at least 65536"));
        }
        if let Some(a) = &self.auth {
            if a.secret.len() < 16 {
                return Err(invalid("auth.secret", "must be at least 16 bytes"));
            }
            match (a.previous_key_id, &a.previous_secret) {
                (Some(id), Some(s)) => {
                    if id == a.key_id {
                        return Err(invalid("auth.previous_key_id", "must differ from key_id"));
                    }
                    if s.len() < 16 {
                        return Err(invalid("auth.previous_secret", "must be at least 16 bytes"));
                    }
                }
                (None, None) => {}
                (Some(_), None) => {
                    return Err(invalid(
                        "auth.previous_secret",
                        "required with previous_key_id",
                    ))
                }
                (None, Some(_)) => {
                    return Err(invalid(
                        "auth.previous_key_id",
                        "required with previous_secret",
                    ))
                }
            }
        }
        if let Some(st) = &self.store {
            st.validate()?;
        }
        if let Some(v) = &self.verdicts {
            v.validate(self.node.cluster)?;
        }
        if let Some(s) = &self.syslog {
            s.validate()?;
        }
        self.local.validate()?;
        self.http.validate(self.verdicts.is_some())?;
        let s = &self.state;
        if s.load_stale_ms == 0 {
            return Err(invalid("state.load_stale_ms", "must be non-zero"));
        }
        // Bounded by the memory an entry takes (see the constants).
        for (key, v, max, per_entry) in [
            (
                "state.max_resources",
                s.max_resources,
                MAX_RESOURCES,
                "about 1 KB per resource with 16 nodes reporting, ~5 GB at the limit",
            ),
            (
                "state.max_peers",
                s.max_peers,
                MAX_PEERS,
                "each peer adds a gauge and a claim to every resource",
            ),
            (
                "state.session_capacity",
                s.session_capacity,
                MAX_SESSION_CAPACITY,
                "about 120 bytes per mark, ~6 GB at the limit",
            ),
        ] {
            if v == 0 || v > max {
                return Err(invalid(key, format!("must be in 1..={max} ({per_entry})")));
            }
        }
        if s.default_ttl_ms == 0 || s.default_ttl_ms > u32::MAX as u64 {
            return Err(invalid("state.default_ttl_ms", "must be in 1..=4294967295"));
        }
        if s.clock_skew_ms > MAX_CLOCK_SKEW_MS {
            return Err(invalid(
                "state.clock_skew_ms",
                format!("must be at most {MAX_CLOCK_SKEW_MS} (keep the clocks in sync with NTP)"),
            ));
        }
        if self
            .node
            .incarnation_file
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty() || p.file_name().is_none())
        {
            return Err(invalid("node.incarnation_file", "must be a file path"));
        }
        if !(1..=MAX_CHANGES_PER_S).contains(&self.modes.max_changes_per_s) {
            return Err(invalid(
                "modes.max_changes_per_s",
                format!("must be in 1..={MAX_CHANGES_PER_S}"),
            ));
        }
        if let Some(r) = &self.modes.default {
            validate_rule("modes.default", r)?;
        }
        for (i, r) in self.modes.resource.iter().enumerate() {
            validate_rule(&format!("modes.resource[{i}]"), &r.rule)?;
            if self.modes.resource[..i].iter().any(|o| o.id == r.id) {
                return Err(invalid(
                    &format!("modes.resource[{i}].id"),
                    format!("resource {} has two rules", r.id),
                ));
            }
        }
        Ok(())
    }

    /// The MAC keys, when the cluster authenticates its datagrams.
    pub fn mac_keys(&self) -> Option<MacKeys> {
        self.auth.as_ref().map(|a| MacKeys {
            current: MacKey::derive(a.key_id, a.secret.expose().as_bytes()),
            previous: a
                .previous_key_id
                .zip(a.previous_secret.as_ref())
                .map(|(id, s)| MacKey::derive(id, s.expose().as_bytes())),
        })
    }

    /// `node.incarnation_file`, by default `shoal-<cluster>-<id>.incarnation`
    /// next to the local socket.
    pub fn incarnation_file(&self) -> PathBuf {
        match &self.node.incarnation_file {
            Some(p) => p.clone(),
            None => {
                let name = format!("shoal-{}-{}.incarnation", self.node.cluster, self.node.id);
                match self.local.socket.parent() {
                    Some(dir) => dir.join(name),
                    None => PathBuf::from(name),
                }
            }
        }
    }

    pub fn flush_interval(&self) -> Duration {
        Duration::from_micros(self.multicast.flush_us)
    }

    /// The core's rate limits, in config order.
    pub fn limit_rules(&self) -> Vec<LimitRule> {
        self.limits.iter().map(LimitSection::rule).collect()
    }

    /// The core's parameters for this node.
    pub fn node_params(&self) -> NodeParams {
        NodeParams {
            id: self.node.id,
            cluster: self.node.cluster,
            max_datagram: self.multicast.max_datagram,
            flush: self.flush_interval(),
            keys: self.mac_keys(),
            limits: StateLimits {
                load_stale: Duration::from_millis(self.state.load_stale_ms),
                max_resources: self.state.max_resources,
                session_capacity: self.state.session_capacity,
                default_ttl: Duration::from_millis(self.state.default_ttl_ms),
                clock_skew: Duration::from_millis(self.state.clock_skew_ms),
            },
            max_peers: self.state.max_peers,
            modes: self.modes.rules(),
            store: self.store.as_ref().map(|s| BacklogLimits {
                capacity: s.backlog,
                batch: s.batch,
            }),
            relay_capacity: self
                .verdicts
                .as_ref()
                .map_or(DEFAULT_RELAY_CAPACITY, |v| v.relay_capacity),
            hash_seed: random_seed(),
        }
    }
}

/// A fresh secret key for the core's hash maps, from the OS.
fn random_seed() -> u128 {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        // Never seen on Linux; std's per-process random keys are the
        // next best source of a secret.
        use std::hash::{BuildHasher, Hasher};
        let s = std::collections::hash_map::RandomState::new();
        for (i, chunk) in b.chunks_mut(8).enumerate() {
            let mut h = s.build_hasher();
            h.write_usize(i);
            chunk.copy_from_slice(&h.finish().to_le_bytes());
        }
    }
    u128::from_le_bytes(b)
}

impl ModesSection {
    /// The controller's rules, from the validated sections.
    pub fn rules(&self) -> ModeRules {
        ModeRules {
            default: self.default.as_ref().map(RuleSection::rule),
            resources: self
                .resource
                .iter()
                .map(|r| (r.id, r.rule.rule()))
                .collect(),
            max_changes_per_s: self.max_changes_per_s,
        }
    }
}

impl RuleSection {
    fn rule(&self) -> Rule {
        Rule {
            min_hold: Duration::from_millis(self.min_hold_ms),
            claim_ttl: Duration::from_millis(self.claim_ttl_ms),
            levels: self
                .levels
                .iter()
                .map(|l| Level {
                    level: l.level,
                    total_up: l.total_up,
                    total_down: l.total_down,
                    local_up: l.local_up,
                    local_down: l.local_down,
                })
                .collect(),
        }
    }
}

fn validate_rule(key: &str, r: &RuleSection) -> Result<(), ConfigError> {
    if r.levels.is_empty() {
        return Err(invalid(
            &format!("{key}.levels"),
            "needs at least one level",
        ));
    }
    if r.claim_ttl_ms == 0 || r.claim_ttl_ms > u32::MAX as u64 {
        return Err(invalid(
            &format!("{key}.claim_ttl_ms"),
            "must be in 1..=4294967295",
        ));
    }
    let mut prev: Option<&LevelSection> = None;
    for (i, l) in r.levels.iter().enumerate() {
        let k = format!("{key}.levels[{i}]");
        if l.level == 0 {
            return Err(invalid(
                &format!("{k}.level"),
                "levels start at 1 (0 is off)",
            ));
        }
        if l.total_down > l.total_up {
            return Err(invalid(
                &format!("{k}.total_down"),
                "must not exceed total_up (hysteresis)",
            ));
        }
        match (l.local_up, l.local_down) {
            (Some(up), Some(down)) if down > up => {
                return Err(invalid(
                    &format!("{k}.local_down"),
                    "must not exceed local_up (hysteresis)",
                ))
            }
            (None, Some(_)) => return Err(invalid(&format!("{k}.local_down"), "needs local_up")),
            _ => {}
        }
        if let Some(p) = prev {
            if l.level <= p.level || l.total_up <= p.total_up {
                return Err(invalid(
                    &k,
                    "levels must be listed in increasing level and total_up",
                ));
            }
        }
        prev = Some(l);
    }
    Ok(())
}

/// The network `addr` is configured with on this host (its interface's
/// netmask), if an interface holds it.
fn interface_network(addr: Ipv4Addr) -> Option<Prefix> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below; every
    // node is read only while the list is alive.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return None;
    }
    let mut found = None;
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the live list.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_netmask.is_null() {
            continue;
        }
        // SAFETY: non-null sockaddrs of the list; the family is checked
        // before reading them as IPv4.
        let (a, m) = unsafe {
            if i32::from((*ifa.ifa_addr).sa_family) != libc::AF_INET {
                continue;
            }
            let a = &*(ifa.ifa_addr as *const libc::sockaddr_in);
            let m = &*(ifa.ifa_netmask as *const libc::sockaddr_in);
            (a.sin_addr.s_addr, m.sin_addr.s_addr)
        };
        if Ipv4Addr::from(u32::from_be(a)) == addr {
            let len = u32::from_be(m).leading_ones() as u8;
            found = Prefix::masked(addr.into(), len).ok();
            break;
        }
    }
    // SAFETY: the list getifaddrs gave, freed once.
    unsafe { libc::freeifaddrs(head) };
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    pub(crate) const MINIMAL: &str = r#"
[node]
id = 1
cluster = 7
[multicast]
group = "239.77.0.1"
port = 7700
interface = "127.0.0.1"
[local]
socket = "/tmp/shoal.sock"
"#;

    #[test]
    fn protected_prefixes_cover_the_sync_network_and_the_stores() {
        let stores =
            "[store]\nmasters = [\"10.9.8.7:3301\", \"tt.example:3301\"]\npassword = \"x\"\n";
        let with = |enforce: &str| {
            let text = format!(
                "{MINIMAL}{stores}[auth]\nkey_id = 1\nsecret = \"0123456789abcdef0123456789abcdef\"\n{enforce}"
            );
            Config::parse(&text).expect("valid").protected_prefixes()
        };
        let s = |v: Vec<Prefix>| v.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        // 127.0.0.1 is on lo, 127.0.0.0/8 on every Linux host.
        assert_eq!(
            s(with("[enforce]\n")),
            ["127.0.0.1/32", "127.0.0.0/8", "10.9.8.7/32"]
        );
        assert_eq!(
            s(with("[enforce]\nprotect_sync_network = false\n")),
            ["127.0.0.1/32", "10.9.8.7/32"]
        );
    }

    fn err(text: &str) -> String {
        Config::parse(text)
            .expect_err("must be refused")
            .to_string()
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse(MINIMAL).expect("valid");
        assert_eq!(c.multicast.max_datagram, 1400);
        assert_eq!(c.multicast.flush_us, 200);
        assert!(c.multicast.loopback);
        assert!(c.mac_keys().is_none());
        assert_eq!(c.node_params().modes.max_changes_per_s, 10_000);
        let bounded = format!("{MINIMAL}[modes]\nmax_changes_per_s = 5\n");
        let c = Config::parse(&bounded).expect("valid");
        assert_eq!(c.node_params().modes.max_changes_per_s, 5);
    }

    #[test]
    fn clock_skew_and_incarnation_file() {
        let c = Config::parse(MINIMAL).expect("valid");
        assert_eq!(c.state.clock_skew_ms, 500);
        assert_eq!(
            c.node_params().limits.clock_skew,
            Duration::from_millis(500)
        );
        assert_eq!(
            c.incarnation_file(),
            PathBuf::from("/tmp/shoal-7-1.incarnation")
        );
        let set = MINIMAL.replace(
            "cluster = 7",
            "cluster = 7\nincarnation_file = \"/var/lib/shoal/inc\"",
        );
        let c = Config::parse(&set).expect("valid");
        assert_eq!(c.incarnation_file(), PathBuf::from("/var/lib/shoal/inc"));
        let skew = |v: &str| format!("{MINIMAL}[state]\nclock_skew_ms = {v}\n");
        assert_eq!(
            Config::parse(&skew("60000"))
                .expect("valid")
                .state
                .clock_skew_ms,
            60_000
        );
        assert!(err(&skew("60001")).contains("state.clock_skew_ms"));
        assert!(err(&skew("-1")).contains("clock_skew_ms"));
        let empty = MINIMAL.replace("cluster = 7", "cluster = 7\nincarnation_file = \"\"");
        assert!(err(&empty).contains("node.incarnation_file"));
    }

    #[test]
    fn errors_name_the_key() {
        assert!(err(&MINIMAL.replace("239.77.0.1", "10.0.0.1")).contains("multicast.group"));
        assert!(err(&MINIMAL.replace("id = 1", "id = 0")).contains("node.id"));
        assert!(err(&MINIMAL.replace("port = 7700", "port = 7700\ngrup = 1")).contains("grup"));
        assert!(err(&MINIMAL.replace("port = 7700", "port = \"x\"")).contains("port"));
        assert!(
            err(&MINIMAL.replace("[local]\nsocket = \"/tmp/shoal.sock\"", "")).contains("local")
        );
        let short_secret = format!("{MINIMAL}[auth]\nkey_id = 1\nsecret = \"short\"\n");
        assert!(err(&short_secret).contains("auth.secret"));
        let bad_levels = format!(
            "{MINIMAL}[modes.default]\nlevels = [{{ level = 1, total_up = 10, total_down = 20 }}]\n"
        );
        assert!(err(&bad_levels).contains("modes.default.levels[0].total_down"));
        let unordered = format!(
            "{MINIMAL}[modes.default]\nlevels = [{{ level = 2, total_up = 10, total_down = 5 }}, {{ level = 1, total_up = 20, total_down = 5 }}]\n"
        );
        assert!(err(&unordered).contains("modes.default.levels[1]"));
        let no_changes = format!("{MINIMAL}[modes]\nmax_changes_per_s = 0\n");
        assert!(err(&no_changes).contains("modes.max_changes_per_s"));
        assert!(err("not toml at all [").contains("<config>"));
    }

    #[test]
    fn verdicts_section_is_checked_key_by_key() {
        let good = "[verdicts]\nstore = \"127.0.0.1:3302\"\npassword = \"pw\"\napi_tokens = [\"0123456789abcdef\"]\ntoken_key_id = 2\ntoken_secret = \"0123456789abcdef\"\n";
        let c = Config::parse(&format!("{MINIMAL}{good}")).expect("valid");
        let v = c.verdicts.expect("section");
        assert_eq!((v.lease_ms, v.poll_ms, v.max_body), (3000, 20, 4096));
        assert_eq!(v.node_name(7, 1), "c7-n1");
        for (change, key) in [
            (
                ("store = \"127.0.0.1:3302\"", "store = \"nohost\""),
                "verdicts.store",
            ),
            (("password = \"pw\"\n", ""), "verdicts.password"),
            (
                ("api_tokens = [\"0123456789abcdef\"]\n", ""),
                "verdicts.api_tokens",
            ),
            (
                ("[\"0123456789abcdef\"]", "[\"short\"]"),
                "verdicts.api_tokens",
            ),
            (
                (
                    "token_secret = \"0123456789abcdef\"",
                    "token_secret = \"short\"",
                ),
                "verdicts.token_secret",
            ),
            (
                (
                    "token_key_id = 2\n",
                    "token_key_id = 2\nprevious_token_key_id = 1\n",
                ),
                "verdicts.previous_token_secret",
            ),
            (
                ("token_key_id = 2\n", "token_key_id = 2\nlease_ms = 50\n"),
                "verdicts.lease_ms",
            ),
            (
                ("token_key_id = 2\n", "token_key_id = 2\npoll_ms = 2000\n"),
                "verdicts.poll_ms",
            ),
            (
                ("token_key_id = 2\n", "token_key_id = 2\nmax_body = 10\n"),
                "verdicts.max_body",
            ),
            (
                ("token_key_id = 2\n", "token_key_id = 2\nlease = 1\n"),
                "lease",
            ),
        ] {
            let text = format!("{MINIMAL}{}", good.replace(change.0, change.1));
            let e = err(&text);
            assert!(e.contains(key), "{e} does not name {key}");
        }
        let cluster0 = format!("{}{good}", MINIMAL.replace("cluster = 7", "cluster = 0"));
        assert!(err(&cluster0).contains("node.cluster"));
    }

    #[test]
    fn rules_and_auth_parse() {
        let text = format!(
            "{MINIMAL}[auth]\nkey_id = 2\nsecret = \"0123456789abcdef\"\nprevious_key_id = 1\nprevious_secret = \"fedcba9876543210\"\n\
             [modes.default]\nmin_hold_ms = 100\nlevels = [{{ level = 1, total_up = 100, total_down = 80, local_up = 50, local_down = 40 }}]\n\
             [[modes.resource]]\nid = 9\nlevels = [{{ level = 3, total_up = 10, total_down = 5 }}]\n"
        );
        let c = Config::parse(&text).expect("valid");
        let keys = c.mac_keys().expect("auth on");
        assert_eq!(keys.current.id, 2);
        assert_eq!(keys.previous.as_ref().map(|k| k.id), Some(1));
        assert_eq!(c.modes.resource[0].id, 9);
        assert_eq!(c.modes.default.as_ref().map(|r| r.min_hold_ms), Some(100));
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let text = format!(
            "{MINIMAL}[auth]\nkey_id = 2\nsecret = \"cluster-secret-0123\"\nprevious_key_id = 1\nprevious_secret = \"previous-secret-0123\"\n\
             [store]\nmasters = [\"127.0.0.1:3301\"]\npassword = \"store-password\"\n\
             [verdicts]\nstore = \"127.0.0.1:3302\"\npassword = \"verdict-password\"\napi_tokens = [\"api-token-0123456789\"]\n\
             token_key_id = 2\ntoken_secret = \"token-secret-0123\"\nprevious_token_key_id = 1\nprevious_token_secret = \"old-token-secret-0123\"\n"
        );
        let c = Config::parse(&text).expect("valid");
        let shown = format!("{c:?} {c:#?}");
        for s in [
            "cluster-secret-0123",
            "previous-secret-0123",
            "store-password",
            "verdict-password",
            "api-token-0123456789",
            "token-secret-0123",
            "old-token-secret-0123",
        ] {
            assert!(!shown.contains(s), "{s} shown");
        }
        assert!(shown.contains("<redacted 19 bytes>"), "{shown}");
        // The bytes are still there for the code that uses them.
        assert_eq!(
            c.store.as_ref().expect("store").password().expect("pw"),
            "store-password"
        );
        assert!(c.mac_keys().is_some());
    }

    #[test]
    fn state_tables_are_bounded() {
        for (key, max) in [
            ("session_capacity", MAX_SESSION_CAPACITY),
            ("max_resources", MAX_RESOURCES),
            ("max_peers", MAX_PEERS),
        ] {
            let at = format!("{MINIMAL}[state]\n{key} = {max}\n");
            Config::parse(&at).expect("the limit itself is fine");
            for bad in [max as u64 + 1, 1_000_000_000_000_000, 0] {
                let e = err(&format!("{MINIMAL}[state]\n{key} = {bad}\n"));
                assert!(e.contains(&format!("state.{key}")), "{e}");
                assert!(
                    e.contains(&max.to_string()),
                    "the error says the limit: {e}"
                );
            }
        }
    }

    #[test]
    fn local_section_is_checked() {
        let with = |extra: &str| MINIMAL.replace("socket = \"/tmp/shoal.sock\"\n", extra);
        let c = Config::parse(&with(
            "socket = \"/tmp/shoal.sock\"\nmode = \"0660\"\ngroup = \"shoal\"\ncreate_dir = true\n",
        ))
        .expect("valid");
        assert_eq!(c.local.mode_bits(), Some(0o660));
        assert_eq!(c.local.group, Some(GroupSpec::Name("shoal".into())));
        assert!(c.local.create_dir);
        let c = Config::parse(&with("socket = \"/tmp/shoal.sock\"\ngroup = 65534\n")).expect("gid");
        assert_eq!(c.local.group, Some(GroupSpec::Id(65534)));
        assert!(!c.local.create_dir, "off by default");
        for m in ["660", "0o660", "0600", "0"] {
            let c = Config::parse(&with(&format!("socket = \"/s\"\nmode = \"{m}\"\n"))).expect(m);
            assert!(c.local.mode_bits().is_some(), "{m}");
        }
        for (local, key) in [
            ("socket = \"/s\"\nmode = \"0999\"\n", "local.mode"),
            ("socket = \"/s\"\nmode = \"4755\"\n", "local.mode"),
            ("socket = \"/s\"\nmode = \"\"\n", "local.mode"),
            ("socket = \"/s\"\nmode = 660\n", "mode"),
            ("socket = \"/s\"\ngroup = \"\"\n", "local.group"),
            ("socket = \"/s\"\ngroup = \"a:b\"\n", "local.group"),
            ("socket = \"\"\n", "local.socket"),
            ("socket = \"/run/shoal/\"\n", "local.socket"),
            ("socket = \"/tmp/a\\u0000b\"\n", "local.socket"),
        ] {
            let e = err(&with(local));
            assert!(e.contains(key), "{local}: {e}");
        }
        let long = format!("socket = \"/{}\"\n", "a".repeat(MAX_SOCKET_PATH));
        assert!(err(&with(&long)).contains("local.socket"));
        let longest = format!("socket = \"/{}\"\n", "a".repeat(MAX_SOCKET_PATH - 1));
        Config::parse(&with(&longest)).expect("107 bytes fit");
    }

    #[test]
    fn a_password_file_is_read_and_must_hold_one() {
        let dir = std::env::temp_dir().join(format!("shoal-config-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let pw = dir.join("pw");
        let store = |f: &Path| {
            format!(
                "{MINIMAL}[store]\nmasters = [\"127.0.0.1:3301\"]\npassword_file = \"{}\"\n",
                f.display()
            )
        };
        std::fs::write(&pw, "from-file\n").expect("write");
        let c = Config::parse(&store(&pw)).expect("valid");
        assert_eq!(
            c.store.as_ref().expect("store").password().expect("read"),
            "from-file"
        );
        std::fs::write(&pw, "\n").expect("write");
        let c = Config::parse(&store(&pw)).expect("the text is valid");
        let e = c
            .store
            .as_ref()
            .expect("store")
            .password()
            .expect_err("empty")
            .to_string();
        assert!(
            e.contains("store.password_file") && e.contains("empty"),
            "{e}"
        );
        let c = Config::parse(&store(&dir.join("missing"))).expect("the text is valid");
        let e = c
            .store
            .as_ref()
            .expect("store")
            .password()
            .expect_err("missing")
            .to_string();
        assert!(
            e.contains("store.password_file") && e.contains("No such file"),
            "{e}"
        );
        // A file without end is refused after a bounded read.
        let c = Config::parse(&store(Path::new("/dev/zero"))).expect("the text is valid");
        let e = c
            .store
            .as_ref()
            .expect("store")
            .password()
            .expect_err("endless")
            .to_string();
        assert!(e.contains("longer than 65536 bytes"), "{e}");
        assert!(Config::load(Path::new("/dev/zero"))
            .expect_err("endless config")
            .source()
            .is_some_and(|e| e.to_string().contains("longer than")));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn http_listeners_and_limits_are_checked_key_by_key() {
        let c = Config::parse(MINIMAL).expect("valid");
        assert_eq!(c.http.admin, "127.0.0.1:9477");
        assert_eq!(c.http.api_addr(false), None);
        assert_eq!(c.http.api_addr(true).as_deref(), Some("127.0.0.1:9478"));
        assert_eq!(c.http.max_connections, 1024);
        let verdicts = "[verdicts]\nstore = \"127.0.0.1:3302\"\npassword = \"pw\"\napi_tokens = [\"0123456789abcdef\"]\ntoken_key_id = 2\ntoken_secret = \"0123456789abcdef\"\n";
        let with = |http: &str| format!("{MINIMAL}[http]\n{http}\n{verdicts}");
        let c = Config::parse(&with("admin = \"\"\napi = \"0.0.0.0:8080\"")).expect("valid");
        assert_eq!(c.http.api_addr(true).as_deref(), Some("0.0.0.0:8080"));
        let c = Config::parse(&with("api = \"\"")).expect("valid");
        assert_eq!(c.http.api_addr(true), None);
        for (http, key) in [
            ("listen = \"127.0.0.1:9477\"", "http.listen"),
            ("admin = \"nohost\"", "http.admin"),
            ("api = \"nohost\"", "http.api"),
            (
                "admin = \"127.0.0.1:9000\"\napi = \"127.0.0.1:9000\"",
                "http.api",
            ),
            ("max_connections = 0", "http.max_connections"),
            ("max_head = 10", "http.max_head"),
            ("body_timeout_ms = 0", "http.body_timeout_ms"),
            ("idle_timeout_ms = 20000", "http.idle_timeout_ms"),
            ("header_read_timeout_ms = 99", "http.header_read_timeout_ms"),
            ("admin_port = 1", "admin_port"),
        ] {
            let e = err(&with(http));
            assert!(e.contains(key), "{e} does not name {key}");
        }
        let e = err(&format!("{MINIMAL}[http]\napi = \"127.0.0.1:9478\"\n"));
        assert!(e.contains("http.api") && e.contains("[verdicts]"), "{e}");
    }

    #[test]
    fn store_save_function_defaults_to_the_lua_procedure() {
        let store = "[store]\nmasters = [\"127.0.0.1:3301\"]\npassword = \"pw\"\n";
        let c = Config::parse(&format!("{MINIMAL}{store}")).expect("valid");
        let s = c.store.expect("a store section");
        assert_eq!(s.save_function, "shoal_save");
        let native = format!("{MINIMAL}{store}save_function = \"shoal_expirer.shoal_save\"\n");
        let c = Config::parse(&native).expect("valid");
        assert_eq!(
            c.store.expect("a store section").save_function,
            "shoal_expirer.shoal_save"
        );
        let empty = format!("{MINIMAL}{store}save_function = \"\"\n");
        assert!(err(&empty).contains("store.save_function"));
    }

    #[test]
    fn store_ack_level_and_liveness_keys() {
        let one = "[store]\nmasters = [\"127.0.0.1:3301\"]\npassword = \"pw\"\n";
        let two =
            "[store]\nmasters = [\"127.0.0.1:3301\", \"127.0.0.1:3302\"]\npassword = \"pw\"\n";
        let level = |text: String| {
            Config::parse(&text)
                .expect("valid")
                .store
                .expect("a store section")
                .ack_level()
        };
        assert_eq!(level(format!("{MINIMAL}{two}")), AckSetting::Replicated);
        assert_eq!(level(format!("{MINIMAL}{one}")), AckSetting::Local);
        assert_eq!(
            level(format!("{MINIMAL}{two}ack = \"local\"\n")),
            AckSetting::Local
        );
        assert!(err(&format!("{MINIMAL}{one}ack = \"replicated\"\n")).contains("store.ack"));
        assert!(err(&format!("{MINIMAL}{two}ack = \"quorum\"\n")).contains("ack"));
        // The master's wait must end before the node gives up on the call.
        assert!(err(&format!(
            "{MINIMAL}{two}request_timeout_ms = 500\nack_timeout_ms = 500\n"
        ))
        .contains("store.ack_timeout_ms"));
        // Not under `local`, where there is no wait.
        assert!(Config::parse(&format!("{MINIMAL}{one}request_timeout_ms = 300\n")).is_ok());
        for (key, bad) in [
            ("ping_ms", "0"),
            ("dead_ms", "5"),
            ("suspect_after", "0"),
            ("failback_ms", "99999999999"),
        ] {
            let text = format!("{MINIMAL}{two}{key} = {bad}\n");
            assert!(err(&text).contains(&format!("store.{key}")), "{key}");
        }
    }

    #[test]
    fn kernel_meters_and_escalation_need_addr_keys_and_enforce() {
        let enforce = "[enforce]\nallow_unsigned = true\n\n";
        let ok = format!(
            "{MINIMAL}{enforce}[[limits]]\nname = \"conn\"\nkey = \"addr\"\nrate = 0.5\nburst = 3.7\nprefix_v4 = 24\nkernel = true\nescalate = {{ after_ms = 10000, ttl_ms = 600000 }}\n"
        );
        let c = Config::parse(&ok).expect("valid");
        let k = c.limits[0].kernel_limit().expect("a kernel limit");
        assert_eq!((k.rate, k.unit_s, k.burst, k.v4_prefix), (30, 60, 3, 24));
        assert_eq!((k.size, k.idle_ms), (65_536, 60_000));
        let e = c.limit_rules()[0].escalate.expect("escalates");
        assert_eq!(
            (e.after, e.ttl, e.gap),
            (
                Duration::from_secs(10),
                Duration::from_secs(600),
                Duration::from_secs(1)
            )
        );
        let limit = |with_enforce: bool, body: &str| {
            let e = if with_enforce { enforce } else { "" };
            format!("{MINIMAL}{e}[[limits]]\nname = \"a\"\n{body}\n")
        };
        for (with_enforce, body, key, says) in [
            (true, "key = \"session\"\nrate = 1\nkernel = true", "limits[0].kernel", "only for key = \"addr\""),
            (false, "key = \"addr\"\nrate = 1\nkernel = true", "limits[0].kernel", "[enforce]"),
            (true, "key = \"opaque\"\nrate = 1\nescalate = { after_ms = 1000, ttl_ms = 1000 }", "limits[0].escalate", "only for key"),
            (false, "key = \"addr\"\nrate = 1\nescalate = { after_ms = 1000, ttl_ms = 1000 }", "limits[0].escalate", "[enforce]"),
            (true, "key = \"addr\"\nrate = 0.0769\nkernel = true", "limits[0].rate", "whole number"),
            (true, "key = \"addr\"\nrate = 1\nescalate = { after_ms = 10, ttl_ms = 1000 }", "limits[0].escalate.after_ms", "100 to"),
            (true, "key = \"addr\"\nrate = 1\nescalate = { after_ms = 1000, ttl_ms = 999999999999 }", "limits[0].escalate.ttl_ms", "max_ttl_ms"),
            (true, "key = \"addr\"\nrate = 1\nescalate = { after_ms = 1000, ttl_ms = 1000, gap_ms = 0 }", "limits[0].escalate.gap_ms", "100 to"),
        ] {
            let e = err(&limit(with_enforce, body));
            assert!(e.contains(key) && e.contains(says), "{body}: {e}");
        }
        let typo = limit(
            true,
            "key = \"addr\"\nrate = 1\nescalate = { after = 1000, ttl_ms = 1000 }",
        );
        assert!(err(&typo).contains("after"), "{}", err(&typo));
    }

    #[test]
    fn limits_are_read_with_defaults_and_checked() {
        let ok = format!(
            "{MINIMAL}[[limits]]\nname = \"conn\"\nkey = \"addr\"\nrate = 50\nprefix_v4 = 24\n\n[[limits]]\nname = \"login\"\nkey = \"session\"\nrate = 2.5\nburst = 10\nscope = \"node\"\n"
        );
        let c = Config::parse(&ok).expect("valid");
        let r = c.limit_rules();
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0].kind,
            KeyKind::Addr {
                v4_prefix: 24,
                v6_prefix: 64
            }
        );
        assert_eq!((r[0].rate, r[0].burst, r[0].max_keys), (50.0, 50.0, 65_536));
        assert_eq!(r[0].idle, Duration::from_secs(60));
        assert_eq!(r[0].scope, Scope::Cluster);
        assert_eq!(
            (r[1].kind, r[1].burst, r[1].scope),
            (KeyKind::Session, 10.0, Scope::Node)
        );
        let limit = |body: &str| format!("{MINIMAL}[[limits]]\nname = \"a\"\n{body}\n");
        for (body, key) in [
            ("key = \"ip\"\nrate = 1", "limits[0].key"),
            ("key = \"opaque\"\nrate = 0", "limits[0].rate"),
            ("key = \"opaque\"\nrate = nan", "limits[0].rate"),
            ("key = \"opaque\"\nrate = 1\nburst = 0.5", "limits[0].burst"),
            (
                "key = \"opaque\"\nrate = 1\nmax_keys = 0",
                "limits[0].max_keys",
            ),
            (
                "key = \"opaque\"\nrate = 1\nidle_ms = 0",
                "limits[0].idle_ms",
            ),
            (
                "key = \"opaque\"\nrate = 1\nscope = \"global\"",
                "limits[0].scope",
            ),
            (
                "key = \"addr\"\nrate = 1\nprefix_v4 = 33",
                "limits[0].prefix_v4",
            ),
            (
                "key = \"addr\"\nrate = 1\nprefix_v6 = 65",
                "limits[0].prefix_v6",
            ),
        ] {
            assert!(
                err(&limit(body)).contains(key),
                "{body}: {}",
                err(&limit(body))
            );
        }
        let bad_name = format!("{MINIMAL}[[limits]]\nname = \"a b\"\nkey = \"opaque\"\nrate = 1\n");
        assert!(err(&bad_name).contains("limits[0].name"));
        let twice = format!("{MINIMAL}[[limits]]\nname = \"a\"\nkey = \"opaque\"\nrate = 1\n[[limits]]\nname = \"a\"\nkey = \"opaque\"\nrate = 2\n");
        assert!(err(&twice).contains("limits[1].name"), "{}", err(&twice));
        let unknown =
            format!("{MINIMAL}[[limits]]\nname = \"a\"\nkey = \"opaque\"\nrate = 1\nhtable = 5\n");
        assert!(err(&unknown).contains("htable"), "{}", err(&unknown));
    }
}
