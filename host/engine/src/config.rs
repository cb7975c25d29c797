//! The TOML configuration: its shape, Arc's defaults, and validation that
//! names the offending key.
//!
//! ```toml
//! [storage]
//! url = "file:///var/lib/arc"
//!
//! [compaction]
//! max_files_per_batch = 30
//!
//! [[tiers]]
//! name = "hourly"
//! plugin = "builtin:hourly"
//! [tiers.config]
//! min_files = 10
//! ```
//!
//! A config without `[[tiers]]` runs Arc's defaults: `hourly`, then `daily`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use compactor_runtime::{ArtifactCache, PluginLimits};
use compactor_storage::lease::LeaseSettings;
use serde::Deserialize;

use compactor_planning::batching::clamp_max_files_per_batch;

/// A configuration error, naming the key and the bad value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this shape (unknown key, wrong type…).
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// The parser's message, which names the key and line.
        message: String,
    },
    /// `--tier` names a tier the config does not define.
    #[error("unknown tier {name:?} (configured: {configured})")]
    UnknownTier {
        /// The name given.
        name: String,
        /// The configured names, comma-separated.
        configured: String,
    },
    /// A value is out of range or malformed.
    #[error("invalid {key} value: {message}")]
    Value {
        /// Dotted key, e.g. `compaction.max_concurrent`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

fn value_error(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Value { key: key.into(), message: message.into() }
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the lake lives.
    pub storage: StorageConfig,
    /// Job and cycle settings.
    #[serde(default)]
    pub compaction: CompactionConfig,
    /// Plugin runtime settings.
    #[serde(default)]
    pub plugins: PluginsConfig,
    /// Tiers in the order they run. Empty means Arc's `hourly` then `daily`.
    #[serde(default)]
    pub tiers: Vec<TierConfig>,
    /// `[[tenants]]`: databases bound to their own tiers and budgets. The
    /// databases no tenant claims run the top-level `[[tiers]]`.
    #[serde(default)]
    pub tenants: Vec<TenantConfig>,
    /// Cluster role and gate.
    #[serde(default)]
    pub cluster: ClusterConfig,
    /// Leases between engines sharing the store.
    #[serde(default)]
    pub coordination: CoordinationConfig,
    /// `[api]`: the HTTP API of `compactor run`; off when the section is
    /// absent.
    #[serde(default)]
    pub api: Option<ApiConfig>,
    /// `[history]`: the persistent job history.
    #[serde(default)]
    pub history: HistoryConfig,
    /// `[log]`: how logs are written.
    #[serde(default)]
    pub log: LogConfig,
    /// Directory of the config file, against which relative paths resolve.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The file it was loaded from, read again by [`Config::reloaded`].
    #[serde(skip)]
    path: Option<PathBuf>,
    /// The TOML as written, to tell which sections a reload changes.
    #[serde(skip)]
    raw: toml::Table,
    /// The file resolved at load; see [`Config::settings`].
    #[serde(skip)]
    settings: Settings,
}

/// The configuration resolved once, when it is loaded: every duration,
/// size, address and schedule parsed, every default and clamp applied, and
/// one registry of every tier of every tenant. Consumers read these instead
/// of the file's strings, so a value is parsed, defaulted and validated in
/// one place, and an error names the key as written.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// `compaction.max_files_per_batch` after Arc's clamp.
    pub max_files_per_batch: usize,
    /// `compaction.max_concurrent` (0 means 2).
    pub max_concurrent: usize,
    /// `compaction.threads` (0 means half the cores, at least 1).
    pub threads: usize,
    /// `compaction.job_timeout`; `None` for never.
    pub job_timeout: Option<Duration>,
    /// Each tenant's planning time per cycle: `compaction.max_planning_time`
    /// under the key `None`, each tenant's own `max_planning_time` under its
    /// name; `None` for no limit.
    pub max_planning_time: BTreeMap<Option<String>, Option<Duration>>,
    /// Each tenant's policy fuel per cycle (`fuel_per_cycle`), keyed as
    /// `max_planning_time`; `None` for no limit.
    pub fuel_per_cycle: BTreeMap<Option<String>, Option<u64>>,
    /// `compaction.multipart_threshold` in bytes.
    pub multipart_threshold: u64,
    /// `[coordination]`.
    pub lease: LeaseSettings,
    /// `[api]`, when present.
    pub api: Option<ApiSettings>,
    /// `[plugins.limits]` over the defaults: the gate's limits, and the base
    /// of every tier's.
    pub plugin_limits: PluginLimits,
    /// `[cluster]`, when cluster mode is on.
    pub cluster: Option<ClusterSettings>,
    /// Every tier, top-level ones first, then each tenant's (its own, or the
    /// top-level ones it inherits): the one list that the plugin loader,
    /// the scheduler, the file watcher, `--tier` checks and the API's
    /// status, stats and trigger all read.
    pub tiers: Vec<RegisteredTier>,
}

/// `[api]`, resolved.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// `api.listen`.
    pub listen: std::net::SocketAddr,
    /// The token in effect, trimmed: `COMPACTOR_API_TOKEN` if set and not
    /// empty, else `api.token`; none when both are empty.
    pub token: Option<String>,
    /// `api.auth`.
    pub auth: ApiAuth,
    /// `api.open_metrics`.
    pub open_metrics: bool,
    /// `api.trigger_timeout`.
    pub trigger_timeout: Duration,
}

/// `[storage]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// `object_store` URL: `file:///path`, `memory://`, `s3://bucket/prefix`,
    /// … A plain path is a local directory (relative to the config file).
    pub url: String,
    /// Options passed to the `object_store` builder (e.g. `aws_region`).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

/// `[compaction]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompactionConfig {
    /// Files per batch; < 2 means 30, > 500 means 500 (Arc's clamp).
    pub max_files_per_batch: i64,
    /// Partitions compacted at once; 0 means 2.
    pub max_concurrent: i64,
    /// Where jobs download and merge.
    pub temp_directory: PathBuf,
    /// DuckDB memory limit per job, e.g. `2GB`; empty lets DuckDB decide.
    pub memory_limit: String,
    /// DuckDB threads per job; 0 means half the cores.
    pub threads: i64,
    /// Sort keys of measurements without their own entry.
    pub default_sort_keys: Vec<String>,
    /// Sort keys per measurement.
    pub sort_keys: BTreeMap<String, Vec<String>>,
    /// Use the sort keys as written. By default `time` is appended to a
    /// measurement's keys when they lack it, as Arc's ingestion and
    /// compaction do (Arc #792, #890): files of one partition then come out
    /// in time order within each series.
    pub sort_keys_verbatim: bool,
    /// Outputs larger than this are uploaded in parts of this size.
    pub multipart_threshold: String,
    /// Rows per Parquet row group of an output (Arc's 122,880; larger groups
    /// make scans of big files faster, Arc #151).
    pub row_group_size: i64,
    /// A job process running longer than this is killed (and its batch
    /// retried in halves, as for any killed job), so that a hung job cannot
    /// hold its partition's lease forever; e.g. `"1h"`, `"0s"` for never.
    pub job_timeout: String,
    /// How long each tenant's planning may take in one cycle (the
    /// top-level tiers count as one tenant); e.g. `"10m"`, `"0s"` for no
    /// limit. A tier still planning then stops, its remaining partitions
    /// wait for the next cycle, and the cycle reports it.
    pub max_planning_time: String,
    /// Let a job whose inputs are our own outputs, of one schema, without
    /// dedup and each sorted by the sort keys skip DuckDB's full sort: copy
    /// their row groups (sort keys beginning with `time`, no overlap in
    /// time) or merge them as streams; `false` merges every job with DuckDB.
    pub fast_path: bool,
    /// Rows the streaming merge decodes ahead per input: its memory is
    /// about this many rows of each input plus the row group it writes.
    pub merge_batch_rows: i64,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        Self {
            max_files_per_batch: 30,
            max_concurrent: 2,
            temp_directory: PathBuf::from("./data/compaction"),
            memory_limit: String::new(),
            threads: 0,
            default_sort_keys: vec!["time".into()],
            sort_keys: BTreeMap::new(),
            sort_keys_verbatim: false,
            multipart_threshold: "64MiB".into(),
            row_group_size: 122_880,
            job_timeout: "1h".into(),
            max_planning_time: "10m".into(),
            fast_path: true,
            merge_batch_rows: compactor_job::streaming_merge::DEFAULT_MERGE_BATCH_ROWS as i64,
        }
    }
}

impl CompactionConfig {
    /// The sort keys of `measurement`: its own or the default, with `time`
    /// appended when missing unless `sort_keys_verbatim`.
    pub(crate) fn sort_keys_for(&self, measurement: &str) -> Vec<String> {
        let mut keys = self.sort_keys.get(measurement).unwrap_or(&self.default_sort_keys).clone();
        if !self.sort_keys_verbatim && !keys.iter().any(|k| k == "time") {
            keys.push("time".to_owned());
        }
        keys
    }
}

/// `[plugins]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// Where compiled components are cached; default
    /// `$XDG_CACHE_HOME/compactor/components` or `~/.cache/compactor/components`.
    pub cache_dir: Option<PathBuf>,
    /// Default sandbox limits of every plugin.
    pub limits: LimitsConfig,
}

/// What a running engine cannot change: its store, its API's socket and
/// token, its leases, history, logs and cluster role, where its jobs work,
/// how many run at once and their timeout. A reload keeps these and says a
/// restart is needed.
pub const RESTART_ONLY: &[&str] = &[
    "storage",
    "api",
    "coordination",
    "history",
    "log",
    "cluster",
    "plugins.cache_dir",
    "compaction.temp_directory",
    "compaction.max_concurrent",
    "compaction.job_timeout",
];

/// Why the store at `url` cannot be compacted, for the schemes
/// `object_store` opens but a job process cannot rebuild or that cannot
/// write create-only: refused when the config is loaded rather than failing
/// every job.
fn unsupported_store(url: &str) -> Option<&'static str> {
    let scheme = url.split_once("://").map(|(scheme, _)| scheme.to_ascii_lowercase())?;
    match scheme.as_str() {
        "gs" | "gcs" => Some(
            "Google Cloud Storage is not supported: a job process cannot open it, and there is no GCS server to test against; \
             GCS serves the S3 API (s3:// with aws_endpoint = \"https://storage.googleapis.com\" and HMAC keys)",
        ),
        "http" | "https" => Some("plain HTTP stores cannot do the create-only writes that keep a job's outputs and leases safe"),
        _ => None,
    }
}

/// Smallest memory a plugin instance may be given: what the built-in
/// policies need to instantiate (1 MiB is too little for them).
const MIN_PLUGIN_MEMORY: u64 = 2 << 20;
/// Largest: a 32-bit WebAssembly instance addresses 4 GiB.
const MAX_PLUGIN_MEMORY: u64 = 4 << 30;

/// Sandbox limits, as written in the config; absent fields take defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Fuel (≈ wasm instructions) per call.
    pub fuel_per_call: Option<u64>,
    /// Linear memory per instance, e.g. `256MiB`.
    pub memory: Option<String>,
    /// Wall-clock deadline per call, in milliseconds.
    pub call_timeout_ms: Option<u64>,
    /// Fuel a tenant's policies may spend in one cycle, over all its
    /// tiers; then they are not called again until the next cycle (its
    /// partitions wait, reported). `[plugins.limits]` sets it for every
    /// tenant ([`DEFAULT_TENANT_FUEL_PER_CYCLE`] when absent) and for the
    /// top-level tiers (unlimited when absent); `[tenants.limits]` for one.
    /// `0`: unlimited.
    pub fuel_per_cycle: Option<u64>,
}

/// A tenant's fuel per cycle by default: about 50 ms of a policy's work,
/// some 1,000 calls of Arc's hourly rule over a 12-file partition (10,000
/// over compacted ones) — all a policy spinning to its limit can take from
/// its neighbours' cycle. A tenant with more partitions is planned over
/// several cycles (each goes on where the last stopped) unless it is given
/// more.
pub const DEFAULT_TENANT_FUEL_PER_CYCLE: u64 = 100_000_000;

impl LimitsConfig {
    /// `limits` with the fields this table sets replaced; `key` names the
    /// table for errors.
    pub(crate) fn apply_to(&self, mut limits: PluginLimits, key: &str) -> Result<PluginLimits, ConfigError> {
        if let Some(fuel) = self.fuel_per_call {
            if fuel == 0 {
                return Err(value_error(format!("{key}.fuel_per_call"), "0 (must be at least 1)"));
            }
            limits.fuel_per_call = fuel;
        }
        if let Some(memory) = &self.memory {
            let bytes = compactor_model::units::parse_size(memory).ok_or_else(|| {
                value_error(
                    format!("{key}.memory"),
                    format!("{memory:?} (expected a size such as \"256MiB\": B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"),
                )
            })?;
            if !(MIN_PLUGIN_MEMORY..=MAX_PLUGIN_MEMORY).contains(&bytes) {
                return Err(value_error(
                    format!("{key}.memory"),
                    format!(
                        "{memory:?} (a plugin's memory is between 2MiB, what the built-in policies need, and 4GiB, the most a 32-bit WebAssembly instance can address)"
                    ),
                ));
            }
            limits.memory_bytes = bytes;
        }
        if let Some(ms) = self.call_timeout_ms {
            if ms == 0 {
                return Err(value_error(format!("{key}.call_timeout_ms"), "0 (must be at least 1)"));
            }
            limits.call_timeout = Duration::from_millis(ms);
        }
        Ok(limits)
    }
}

/// One `[[tiers]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    /// Tier name, used in output names, manifests and `--tier`.
    pub name: String,
    /// `builtin:NAME` or a path to a `.wasm` component (relative to the
    /// config file).
    pub plugin: String,
    /// Disabled tiers are skipped.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// 5-field cron schedule, UTC.
    #[serde(default)]
    pub schedule: Option<String>,
    /// Handed to the plugin's `configure` as JSON.
    #[serde(default)]
    pub config: toml::Table,
    /// Sandbox limits for this tier's plugin, over `[plugins.limits]`.
    #[serde(default)]
    pub limits: LimitsConfig,
}

fn yes() -> bool {
    true
}

impl TierConfig {
    /// Arc's tiers: `hourly` at minute 5 of every hour, `daily` at 03:00.
    pub(crate) fn arc_defaults() -> Vec<TierConfig> {
        let tier = |name: &str, schedule: &str| TierConfig {
            name: name.into(),
            plugin: format!("builtin:{name}"),
            enabled: true,
            schedule: Some(schedule.into()),
            config: toml::Table::new(),
            limits: LimitsConfig::default(),
        };
        vec![tier("hourly", "5 * * * *"), tier("daily", "0 3 * * *")]
    }

    /// The schedule, defaulting to Arc's `5 * * * *`.
    pub fn effective_schedule(&self) -> &str {
        self.schedule.as_deref().filter(|s| !s.trim().is_empty()).unwrap_or("5 * * * *")
    }

    /// The `[tiers.config]` table as the JSON object handed to the plugin.
    pub fn config_json(&self) -> String {
        serde_json::to_string(&self.config).unwrap_or_else(|_| "{}".into())
    }
}

/// One `[[tenants]]` entry: a set of databases with its own policies and
/// budgets, sandboxed apart from every other tenant's.
///
/// ```toml
/// [[tenants]]
/// name = "acme"
/// databases = ["acme", "acme_*"]    # names or patterns (`*`, `?`)
/// max_concurrent = 1                # its jobs at once
/// max_bytes_per_cycle = "20GiB"     # input bytes its jobs read per cycle
/// max_planning_time = "2m"          # its planning per cycle (default: [compaction]'s)
/// [tenants.limits]                  # per call of its policies; overrides the tier's
/// fuel_per_call = 50_000_000
/// [[tenants.tiers]]                 # its own tiers (default: the top-level ones)
/// name = "hourly"
/// plugin = "policies/acme-hourly.wasm"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Tenant name: letters, digits, `-` and `_`.
    pub name: String,
    /// Database names or patterns (`*` any run of characters, `?` one). A
    /// database belongs to the first tenant, in config order, that matches.
    pub databases: Vec<String>,
    /// Its tiers, in order; empty means the top-level `[[tiers]]`.
    #[serde(default)]
    pub tiers: Vec<TierConfig>,
    /// Sandbox limits of its policies' calls, over `[plugins.limits]` and
    /// each tier's own: the tenant's budget has the last word.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Its partitions compacted at once (default: `[compaction]
    /// max_concurrent`); every tenant's jobs together stay within that too.
    #[serde(default)]
    pub max_concurrent: Option<i64>,
    /// Input bytes its jobs may read in one cycle, e.g. `"20GiB"`; the
    /// batches beyond it wait for the next cycle (the first batch always
    /// runs). Unlimited when absent.
    #[serde(default)]
    pub max_bytes_per_cycle: Option<String>,
    /// How long its planning may take in one cycle, e.g. `"2m"` (default:
    /// `[compaction] max_planning_time`): a tier still planning then stops,
    /// its remaining partitions wait for the next cycle, and the cycle says
    /// so. The other tenants never wait for it either way.
    #[serde(default)]
    pub max_planning_time: Option<String>,
}

impl TenantConfig {
    /// Whether `database` matches one of its patterns.
    pub fn claims(&self, database: &str) -> bool {
        self.databases.iter().any(|pattern| wildmatch::WildMatch::new(pattern).matches(database))
    }

    /// The byte budget per cycle (validated at load).
    pub fn max_bytes_per_cycle(&self) -> Option<u64> {
        self.max_bytes_per_cycle.as_deref().and_then(compactor_model::units::parse_size)
    }
}

/// `[coordination]`: the leases that keep one owner per partition when
/// several engines share a store (durations as humantime strings: `"60s"`,
/// `"2m"`). See the ownership model in `docs/architecture.md`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoordinationConfig {
    /// How long a claim lasts without renewal; renewed every third of it.
    pub lease_ttl: String,
    /// The largest difference between two engines' wall clocks.
    pub max_clock_skew: String,
    /// How long before its lease's deadline a job stops trusting it; a
    /// quarter of `lease_ttl` when absent.
    pub safety_margin: Option<String>,
}

impl Default for CoordinationConfig {
    fn default() -> Self {
        Self { lease_ttl: "60s".into(), max_clock_skew: "5s".into(), safety_margin: None }
    }
}

impl CoordinationConfig {
    fn lease_settings(&self) -> Result<LeaseSettings, ConfigError> {
        let duration = |key: &str, value: &str| {
            humantime::parse_duration(value)
                .map_err(|e| value_error(format!("coordination.{key}"), format!("{value:?} ({e}; expected e.g. \"60s\")")))
        };
        let ttl = duration("lease_ttl", &self.lease_ttl)?;
        if ttl < Duration::from_secs(1) {
            return Err(value_error("coordination.lease_ttl", format!("{:?} (must be at least 1s)", self.lease_ttl)));
        }
        let max_clock_skew = duration("max_clock_skew", &self.max_clock_skew)?;
        let safety_margin = match &self.safety_margin {
            Some(margin) => duration("safety_margin", margin)?,
            None => ttl / 4,
        };
        if safety_margin >= ttl / 2 {
            return Err(value_error(
                "coordination.safety_margin",
                format!("{safety_margin:?} (must be less than half of lease_ttl, {:?})", self.lease_ttl),
            ));
        }
        Ok(LeaseSettings { ttl, max_clock_skew, safety_margin })
    }
}

/// `[api]`: present means on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Address to listen on.
    pub listen: String,
    /// Bearer token for the mutating endpoints (`COMPACTOR_API_TOKEN`
    /// overrides it); without one they are refused.
    pub token: Option<String>,
    /// Which endpoints ask for the token: `mutations` (trigger, reload),
    /// or `all` (every endpoint but `/healthz` and `/readyz`, and
    /// `/metrics` with `open_metrics`), as Arc does with auth on.
    pub auth: ApiAuth,
    /// With `auth = "all"`: `/metrics` still answers without the token
    /// (for a scraper that cannot send one).
    pub open_metrics: bool,
    /// How long a cycle the API triggered may start batches, e.g. `"30m"`
    /// (Arc: 30 minutes); then no new batch starts, and running jobs
    /// finish or meet `compaction.job_timeout`.
    pub trigger_timeout: String,
}

/// `api.auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiAuth {
    /// Only the mutating endpoints ask for the token.
    #[default]
    Mutations,
    /// Every endpoint but the probes does.
    All,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self { listen: "127.0.0.1:8081".into(), token: None, auth: ApiAuth::Mutations, open_metrics: false, trigger_timeout: "30m".into() }
    }
}

impl ApiConfig {
    fn resolve(&self) -> Result<ApiSettings, ConfigError> {
        let listen = self
            .listen
            .parse()
            .map_err(|e| value_error("api.listen", format!("{:?} ({e}; expected e.g. \"127.0.0.1:8081\")", self.listen)))?;
        let nonempty = |t: String| Some(t.trim().to_owned()).filter(|t| !t.is_empty());
        let token = std::env::var("COMPACTOR_API_TOKEN").ok().and_then(nonempty).or_else(|| self.token.clone().and_then(nonempty));
        if self.auth == ApiAuth::All && token.is_none() {
            return Err(value_error("api.auth", "\"all\" (needs a token: set api.token or COMPACTOR_API_TOKEN)"));
        }
        let trigger_timeout = humantime::parse_duration(&self.trigger_timeout).ok().filter(|t| !t.is_zero()).ok_or_else(|| {
            value_error("api.trigger_timeout", format!("{:?} (expected a duration above zero, such as \"30m\")", self.trigger_timeout))
        })?;
        Ok(ApiSettings { listen, token, auth: self.auth, open_metrics: self.open_metrics, trigger_timeout })
    }
}

/// `[history]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Entries kept in `_compaction_state/history/` (0: none recorded).
    pub max_records: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self { max_records: 1000 }
    }
}

/// `[log]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` (default) or `json`; `--log-format` overrides it.
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, with the job id, tier and partition of a
    /// job's lines as fields.
    Json,
}

/// `[cluster]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Cluster mode; standalone when false.
    pub enabled: bool,
    /// etcd's client URLs (`http://host:2379`, or `https://` with the TLS
    /// files).
    pub etcd_endpoints: Vec<String>,
    /// etcd user, when etcd has auth on.
    pub username: String,
    /// Its password (or `COMPACTOR_ETCD_PASSWORD`).
    pub password: String,
    /// The CA of etcd's certificate (PEM).
    pub tls_ca_file: String,
    /// This node's client certificate (PEM).
    pub tls_cert_file: String,
    /// Its key (PEM).
    pub tls_key_file: String,
    /// Where this lake's cluster state lives in etcd; default
    /// `/compactor/{lake id}`.
    pub key_prefix: String,
    /// This node's id; default: the host name.
    pub node_id: String,
    /// This node's role: `standalone`, `writer`, `reader`, `compactor`, or
    /// anything else (which may compact, as in Arc).
    pub role: String,
    /// Free-form labels, shown in the member list and given to the gate.
    pub labels: BTreeMap<String, String>,
    /// The TTL of the node's etcd session.
    pub session_ttl: String,
    /// `single` (Arc's one compactor) or `spread`.
    pub mode: compactor_cluster::Mode,
    /// The lease manager's check interval (Arc: 10s).
    pub check_interval: String,
    /// How long a holder may be gone before failover (Arc: 30s).
    pub failover_timeout: String,
    /// No automatic failover within this long of the last (Arc: 60s).
    pub failover_cooldown: String,
    /// Consecutive failed checks before failover (Arc: 3).
    pub unhealthy_threshold: u32,
    /// The cluster-gate component.
    pub gate: String,
    /// Handed to the gate's `configure` as JSON.
    pub gate_config: toml::Table,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            etcd_endpoints: Vec::new(),
            username: String::new(),
            password: String::new(),
            tls_ca_file: String::new(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            key_prefix: String::new(),
            node_id: String::new(),
            role: "standalone".into(),
            labels: BTreeMap::new(),
            session_ttl: "10s".into(),
            mode: compactor_cluster::Mode::Single,
            check_interval: "10s".into(),
            failover_timeout: "30s".into(),
            failover_cooldown: "60s".into(),
            unhealthy_threshold: 3,
            gate: "builtin:role".into(),
            gate_config: toml::Table::new(),
        }
    }
}

/// `[cluster]`, resolved: what [`compactor_cluster::Cluster::join`] needs
/// but the key prefix's lake id and the engine id, known only once the
/// store is open.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// The settings, with `key_prefix` empty when it defaults to the lake id.
    pub join: compactor_cluster::Settings,
}

impl ClusterConfig {
    /// The node id: `node_id`, else the host name.
    pub fn node_id(&self) -> String {
        if !self.node_id.trim().is_empty() {
            return self.node_id.trim().to_owned();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_owned())
    }

    /// Validates the section. Arc #870: a node given cluster settings but
    /// not cluster mode would compact as a standalone engine beside the
    /// lease holder, so that is an error, as is cluster mode without etcd.
    fn resolve(&self) -> Result<Option<ClusterSettings>, ConfigError> {
        if !self.enabled {
            let defaults = ClusterConfig::default();
            let set: Vec<&str> = [
                ("role", self.role != defaults.role),
                ("etcd_endpoints", !self.etcd_endpoints.is_empty()),
                ("mode", self.mode != defaults.mode),
                ("key_prefix", !self.key_prefix.is_empty()),
            ]
            .into_iter()
            .filter_map(|(key, set)| set.then_some(key))
            .collect();
            if let Some(key) = set.first() {
                return Err(value_error(
                    format!("cluster.{key}"),
                    "is set but cluster.enabled is false: this node would compact as a standalone engine beside the cluster's \
                     compactor (Arc #870); set cluster.enabled = true with etcd_endpoints, or remove it",
                ));
            }
            return Ok(None);
        }
        if self.etcd_endpoints.is_empty() {
            return Err(value_error(
                "cluster.etcd_endpoints",
                "[] (cluster mode needs etcd, e.g. [\"http://127.0.0.1:2379\"]; a node never compacts on its own in a cluster)",
            ));
        }
        for endpoint in &self.etcd_endpoints {
            let scheme = endpoint.split_once("://").map(|(s, _)| s);
            if !matches!(scheme, Some("http" | "https")) {
                return Err(value_error(
                    "cluster.etcd_endpoints",
                    format!("{endpoint:?} (expected http://host:port or https://host:port)"),
                ));
            }
        }
        let duration = |key: &str, value: &str, minimum: Duration| -> Result<Duration, ConfigError> {
            let parsed = humantime::parse_duration(value)
                .map_err(|e| value_error(format!("cluster.{key}"), format!("{value:?} ({e}; expected e.g. \"10s\")")))?;
            if parsed < minimum {
                return Err(value_error(format!("cluster.{key}"), format!("{value:?} (at least {})", humantime::format_duration(minimum))));
            }
            Ok(parsed)
        };
        let session_ttl = duration("session_ttl", &self.session_ttl, Duration::from_secs(1))?;
        if session_ttl.subsec_nanos() != 0 {
            return Err(value_error("cluster.session_ttl", format!("{:?} (etcd leases count whole seconds)", self.session_ttl)));
        }
        let timings = compactor_cluster::LeaseTimings {
            check_interval: duration("check_interval", &self.check_interval, Duration::from_millis(100))?,
            failover_timeout: duration("failover_timeout", &self.failover_timeout, Duration::ZERO)?,
            cooldown: duration("failover_cooldown", &self.failover_cooldown, Duration::ZERO)?,
            unhealthy_threshold: self.unhealthy_threshold,
        };
        if self.unhealthy_threshold == 0 {
            return Err(value_error(
                "cluster.unhealthy_threshold",
                "0 (at least 1: the checks a holder may fail before it loses the lease)",
            ));
        }
        if !self.node_id.is_empty() && self.node_id.trim().is_empty() {
            return Err(value_error("cluster.node_id", format!("{:?} (blank; leave it out to use the host name)", self.node_id)));
        }
        let node_id = self.node_id();
        if node_id.contains('/') || node_id.chars().any(char::is_control) {
            return Err(value_error("cluster.node_id", format!("{node_id:?} (no '/' or control characters)")));
        }
        if !self.key_prefix.is_empty() && !self.key_prefix.starts_with('/') {
            return Err(value_error("cluster.key_prefix", format!("{:?} (must start with '/')", self.key_prefix)));
        }
        let password = std::env::var("COMPACTOR_ETCD_PASSWORD").ok().filter(|p| !p.is_empty()).unwrap_or_else(|| self.password.clone());
        let credentials = match (self.username.is_empty(), password.is_empty()) {
            (true, true) => None,
            (false, _) => Some((self.username.clone(), password)),
            (true, false) => return Err(value_error("cluster.username", "\"\" (a password is set but no username)")),
        };
        let file = |path: &str| (!path.is_empty()).then(|| std::path::PathBuf::from(path));
        let tls = compactor_cluster::TlsFiles {
            ca_file: file(&self.tls_ca_file),
            cert_file: file(&self.tls_cert_file),
            key_file: file(&self.tls_key_file),
        };
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            return Err(value_error("cluster.tls_key_file", "(tls_cert_file and tls_key_file go together)"));
        }
        let any_tls = tls != compactor_cluster::TlsFiles::default();
        Ok(Some(ClusterSettings {
            join: compactor_cluster::Settings {
                endpoints: self.etcd_endpoints.clone(),
                credentials,
                tls: any_tls.then_some(tls),
                key_prefix: self.key_prefix.trim_end_matches('/').to_owned(),
                node_id,
                role: self.role.clone(),
                labels: self.labels.clone(),
                session_ttl,
                mode: self.mode,
                timings,
                version: env!("CARGO_PKG_VERSION").to_owned(),
                engine_id: String::new(),
            },
        }))
    }
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let mut config = Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse { path: path.to_owned(), message },
            other => other,
        })?;
        config.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        config.path = Some(path.to_owned());
        Ok(config)
    }

    /// The file this config was loaded from, read and validated again, for
    /// a reload between cycles: everything applies from the next cycle but
    /// the sections a running engine cannot change ([`RESTART_ONLY`]), which
    /// keep their values here and are named in the second element.
    pub fn reloaded(&self) -> Result<(Config, Vec<String>), ConfigError> {
        let Some(path) = &self.path else {
            return Err(value_error("config", "(not loaded from a file: nothing to reload)"));
        };
        let mut new = Config::load(path)?;
        let section = |raw: &toml::Table, key: &str| -> Option<toml::Value> {
            let mut parts = key.split('.');
            let mut value = raw.get(parts.next()?)?.clone();
            for part in parts {
                value = value.as_table()?.get(part)?.clone();
            }
            Some(value)
        };
        let restart: Vec<String> =
            RESTART_ONLY.iter().filter(|key| section(&self.raw, key) != section(&new.raw, key)).map(|key| (*key).to_owned()).collect();
        new.storage = self.storage.clone();
        new.api = self.api.clone();
        new.coordination = self.coordination.clone();
        new.history = self.history.clone();
        new.log = self.log.clone();
        new.cluster = self.cluster.clone();
        new.plugins.cache_dir = self.plugins.cache_dir.clone();
        new.compaction.temp_directory = self.compaction.temp_directory.clone();
        new.compaction.max_concurrent = self.compaction.max_concurrent;
        new.compaction.job_timeout = self.compaction.job_timeout.clone();
        new.settings = new.resolve()?;
        Ok((new, restart))
    }

    /// Parses and validates TOML text; relative paths resolve against the
    /// current directory.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let parse_error = |e: toml::de::Error| ConfigError::Parse { path: PathBuf::new(), message: e.to_string() };
        let raw: toml::Table = toml::from_str(text).map_err(parse_error)?;
        let mut config: Config = toml::from_str(text).map_err(parse_error)?;
        config.raw = raw;
        if config.tiers.is_empty() {
            config.tiers = TierConfig::arc_defaults();
        }
        config.settings = config.resolve()?;
        Ok(config)
    }

    /// The file it was loaded from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The configuration resolved at load.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// What validation accepted but changed, for the composition root to
    /// log once whatever the command (Arc clamps `max_files_per_batch`).
    pub(crate) fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        let configured = self.compaction.max_files_per_batch;
        if clamp_max_files_per_batch(configured).1 {
            let effective = self.settings.max_files_per_batch;
            warnings.push(format!("compaction.max_files_per_batch = {configured} is outside 2..=500; using {effective} (Arc's clamp)"));
        }
        warnings
    }

    /// Refuses `--tier` names the config does not define: a tier's name
    /// (every tenant's tier of that name) or `tenant/tier`.
    pub fn check_tier_names(&self, tiers: &[String]) -> Result<(), ConfigError> {
        let mut known: Vec<String> = self.tiers.iter().map(|t| t.name.clone()).collect();
        for tier in self.settings.tiers.iter().filter(|t| t.id.tenant.is_some()) {
            known.push(tier.id.name.clone());
            known.push(tier.id.key());
        }
        let mut seen = std::collections::HashSet::new();
        known.retain(|name| seen.insert(name.clone()));
        match tiers.iter().find(|t| !known.contains(t)) {
            Some(unknown) => Err(ConfigError::UnknownTier { name: unknown.clone(), configured: known.join(", ") }),
            None => Ok(()),
        }
    }

    /// The registered tier `id`.
    pub fn tier(&self, id: &TierId) -> Option<&RegisteredTier> {
        self.settings.tiers.iter().find(|t| t.id == *id)
    }

    /// The tenant that owns `database`: the first whose patterns match, none
    /// for the databases that run the top-level tiers.
    pub fn tenant_of(&self, database: &str) -> Option<&TenantConfig> {
        self.tenants.iter().find(|t| t.claims(database))
    }

    /// Every enabled tier's cron schedule, with the tiers that fire on it
    /// (`tier` or `tenant/tier`): a tenant's tiers sharing a schedule run
    /// in one cycle; different tenants never share one, so that each
    /// tenant's cycle starts and ends on its own.
    pub fn schedules(&self) -> Vec<(Vec<String>, cron::Schedule)> {
        let mut schedules: Vec<(&str, Option<&str>, Vec<String>, cron::Schedule)> = Vec::new();
        for tier in self.settings.tiers.iter().filter(|t| t.config.enabled) {
            let (expression, tenant) = (tier.config.effective_schedule(), tier.id.tenant.as_deref());
            match schedules.iter_mut().find(|(e, t, ..)| *e == expression && *t == tenant) {
                Some((_, _, keys, _)) => keys.push(tier.id.key()),
                None => schedules.push((expression, tenant, vec![tier.id.key()], tier.schedule.clone())),
            }
        }
        schedules.into_iter().map(|(_, _, keys, schedule)| (keys, schedule)).collect()
    }

    fn resolve(&self) -> Result<Settings, ConfigError> {
        if self.storage.url.trim().is_empty() {
            return Err(value_error("storage.url", "\"\" (expected e.g. \"file:///var/lib/arc\")"));
        }
        if let Some(why) = unsupported_store(&self.storage.url) {
            return Err(value_error("storage.url", format!("{:?} ({why})", self.storage.url)));
        }
        let lease = self.coordination.lease_settings()?;
        let api = self.api.as_ref().map(ApiConfig::resolve).transpose()?;
        let c = &self.compaction;
        let job_timeout = humantime::parse_duration(&c.job_timeout)
            .map_err(|e| value_error("compaction.job_timeout", format!("{:?} ({e}; expected e.g. \"1h\")", c.job_timeout)))?;
        let planning_time = |key: String, value: &str| {
            humantime::parse_duration(value)
                .map(|d| (!d.is_zero()).then_some(d))
                .map_err(|e| value_error(key, format!("{value:?} ({e}; expected e.g. \"10m\", or \"0s\" for no limit)")))
        };
        let default_planning_time = planning_time("compaction.max_planning_time".into(), &c.max_planning_time)?;
        let mut max_planning_time = BTreeMap::from([(None, default_planning_time)]);
        for (i, tenant) in self.tenants.iter().enumerate() {
            let own = match &tenant.max_planning_time {
                Some(value) => planning_time(format!("tenants[{i}].max_planning_time"), value)?,
                None => default_planning_time,
            };
            max_planning_time.insert(Some(tenant.name.clone()), own);
        }
        let unlimited_if_zero = |fuel: u64| (fuel > 0).then_some(fuel);
        let mut fuel_per_cycle = BTreeMap::from([(None, self.plugins.limits.fuel_per_cycle.and_then(unlimited_if_zero))]);
        for tenant in &self.tenants {
            let own = tenant.limits.fuel_per_cycle.or(self.plugins.limits.fuel_per_cycle).unwrap_or(DEFAULT_TENANT_FUEL_PER_CYCLE);
            fuel_per_cycle.insert(Some(tenant.name.clone()), unlimited_if_zero(own));
        }
        if c.max_concurrent < 0 {
            return Err(value_error("compaction.max_concurrent", format!("{} (must be >= 0; 0 = default)", c.max_concurrent)));
        }
        if c.threads < 0 {
            return Err(value_error("compaction.threads", format!("{} (must be >= 0; 0 = auto)", c.threads)));
        }
        validate_memory_limit(&c.memory_limit)?;
        if !(1..=10_000_000).contains(&c.merge_batch_rows) {
            return Err(value_error("compaction.merge_batch_rows", format!("{} (expected 1 to 10000000 rows)", c.merge_batch_rows)));
        }
        if !(1..=100_000_000).contains(&c.row_group_size) {
            return Err(value_error("compaction.row_group_size", format!("{} (expected 1 to 100000000 rows)", c.row_group_size)));
        }
        let Some(multipart_threshold) = compactor_model::units::parse_size(&c.multipart_threshold).filter(|b| *b > 0) else {
            return Err(value_error(
                "compaction.multipart_threshold",
                format!("{:?} (expected a size such as \"64MiB\")", c.multipart_threshold),
            ));
        };
        for (measurement, keys) in
            std::iter::once(("default", &c.default_sort_keys)).chain(c.sort_keys.iter().map(|(m, k)| (m.as_str(), k)))
        {
            if keys.iter().any(|k| k.trim().is_empty()) {
                return Err(value_error(format!("compaction.sort_keys.{measurement}"), "contains an empty column name"));
            }
        }
        let plugin_limits = self.plugins.limits.apply_to(PluginLimits::default(), "plugins.limits")?;
        let mut tiers = self.resolve_tiers(&self.tiers, "tiers", None, plugin_limits)?;
        let mut tenant_names = std::collections::HashSet::new();
        for (i, tenant) in self.tenants.iter().enumerate() {
            let key = format!("tenants[{i}]");
            check_name(&tenant.name, &format!("{key}.name"))?;
            if !tenant_names.insert(tenant.name.as_str()) {
                return Err(value_error(format!("{key}.name"), format!("{:?} (two tenants share this name)", tenant.name)));
            }
            if tenant.databases.is_empty() || tenant.databases.iter().any(|d| d.trim().is_empty()) {
                return Err(value_error(format!("{key}.databases"), "empty (expected database names or patterns, e.g. [\"acme_*\"])"));
            }
            if let Some(n) = tenant.max_concurrent
                && n < 1
            {
                return Err(value_error(format!("{key}.max_concurrent"), format!("{n} (must be at least 1)")));
            }
            if let Some(budget) = &tenant.max_bytes_per_cycle
                && compactor_model::units::parse_size(budget).is_none_or(|b| b == 0)
            {
                return Err(value_error(format!("{key}.max_bytes_per_cycle"), format!("{budget:?} (expected a size such as \"20GiB\")")));
            }
            tenant.limits.apply_to(plugin_limits, &format!("{key}.limits"))?;
            // A tenant without tiers of its own runs the top-level ones, in
            // its own sandboxes and with its own limits.
            let (own, key) =
                if tenant.tiers.is_empty() { (&self.tiers, "tiers".to_owned()) } else { (&tenant.tiers, format!("{key}.tiers")) };
            tiers.extend(self.resolve_tiers(own, &key, Some(tenant), plugin_limits)?);
        }
        let threads = match c.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
            n => n as usize,
        };
        Ok(Settings {
            max_files_per_batch: clamp_max_files_per_batch(c.max_files_per_batch).0,
            max_concurrent: if c.max_concurrent == 0 { 2 } else { c.max_concurrent as usize },
            threads,
            job_timeout: (!job_timeout.is_zero()).then_some(job_timeout),
            max_planning_time,
            fuel_per_cycle,
            multipart_threshold,
            lease,
            api,
            plugin_limits,
            cluster: self.cluster.resolve()?,
            tiers,
        })
    }

    /// `tiers` (of `tenant`, if any; at `key` in the file) resolved: their
    /// schedules parsed, and their sandbox limits: `[plugins.limits]`, then
    /// the tier's, then the tenant's.
    fn resolve_tiers(
        &self,
        tiers: &[TierConfig],
        key: &str,
        tenant: Option<&TenantConfig>,
        plugin_limits: PluginLimits,
    ) -> Result<Vec<RegisteredTier>, ConfigError> {
        let mut names = std::collections::HashSet::new();
        let mut resolved = Vec::new();
        for (i, tier) in tiers.iter().enumerate() {
            let key = format!("{key}[{i}]");
            check_name(&tier.name, &format!("{key}.name"))?;
            if !names.insert(tier.name.as_str()) {
                return Err(value_error(format!("{key}.name"), format!("{:?} (two tiers share this name)", tier.name)));
            }
            if tier.plugin.trim().is_empty() {
                return Err(value_error(format!("{key}.plugin"), "\"\" (expected builtin:NAME or a path to a .wasm component)"));
            }
            let schedule = parse_schedule(tier.effective_schedule()).map_err(|e| value_error(format!("{key}.schedule"), e))?;
            let mut limits = tier.limits.apply_to(plugin_limits, &format!("{key}.limits"))?;
            if let Some(tenant) = tenant {
                limits = tenant.limits.apply_to(limits, &format!("tenants.{}.limits", tenant.name))?;
            }
            let id = TierId::new(tenant.map(|t| t.name.as_str()), &tier.name);
            resolved.push(RegisteredTier { id, config: tier.clone(), limits, schedule });
        }
        Ok(resolved)
    }

    /// Resolves a path from the config against the config file's directory.
    pub(crate) fn resolve_path(&self, path: &Path) -> PathBuf {
        if path.is_absolute() { path.to_owned() } else { self.base_dir.join(path) }
    }

    /// The component cache directory.
    pub fn plugin_cache_dir(&self) -> PathBuf {
        match &self.plugins.cache_dir {
            Some(dir) => self.resolve_path(dir),
            None => ArtifactCache::default_dir(),
        }
    }
}

pub use compactor_planning::TierId;

/// One tier of the config, as [`Settings::tiers`] lists it.
#[derive(Debug, Clone)]
pub struct RegisteredTier {
    /// Which tier.
    pub id: TierId,
    /// Its settings as written.
    pub config: TierConfig,
    /// Its plugin's sandbox limits: `[plugins.limits]`, then the tier's,
    /// then its tenant's.
    pub limits: PluginLimits,
    /// Its parsed schedule.
    pub schedule: cron::Schedule,
}

/// Tier and tenant names become part of keys, logs and metrics.
fn check_name(name: &str, key: &str) -> Result<(), ConfigError> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(value_error(key, format!("{name:?} (letters, digits, '-' and '_' only)")));
    }
    Ok(())
}

/// Arc's rule for `compaction.memory_limit`: empty, or a number with one of
/// the units `B`, `KB`, `MB`, `GB`, `TB` (percent and unit-less forms are
/// refused because DuckDB needs an absolute size).
pub(crate) fn validate_memory_limit(value: &str) -> Result<(), ConfigError> {
    if value.is_empty() {
        return Ok(());
    }
    let trimmed = value.trim_end();
    let unit_start = trimmed.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(unit_start);
    let number_ok = !number.is_empty()
        && number.split('.').count() <= 2
        && number.split('.').all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()));
    let unit = unit.trim_start();
    let shape_ok = number_ok && trimmed.len() == value.len() && matches!(unit, "" | "B" | "KB" | "MB" | "GB" | "TB" | "%");
    if !shape_ok {
        return Err(value_error("compaction.memory_limit", format!("{value:?}")));
    }
    if matches!(unit, "" | "%") {
        return Err(value_error(
            "compaction.memory_limit",
            format!(
                "{value:?} (DuckDB requires an absolute size with a unit, e.g. \"2GB\" or \"512MB\"; percent and unit-less forms are not supported)"
            ),
        ));
    }
    Ok(())
}

/// Parses a standard 5-field cron expression (minute hour day-of-month month
/// day-of-week), evaluated in UTC. Descriptors such as `@hourly` are refused,
/// as in Arc.
pub fn parse_schedule(expression: &str) -> Result<cron::Schedule, String> {
    let fields = expression.split_whitespace().count();
    if fields != 5 {
        return Err(format!("{expression:?} (expected 5 fields: minute hour day-of-month month day-of-week)"));
    }
    format!("0 {expression}").parse::<cron::Schedule>().map_err(|e| format!("{expression:?} ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text)
    }

    #[test]
    fn minimal_config_gets_arc_defaults() {
        let c = parse("[storage]\nurl = \"memory://\"\n").unwrap();
        assert_eq!(c.tiers.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["hourly", "daily"]);
        assert_eq!(c.tiers[1].effective_schedule(), "0 3 * * *");
        assert_eq!(c.settings().max_files_per_batch, 30);
        assert_eq!(c.settings().max_concurrent, 2);
        assert_eq!(c.settings().job_timeout, Some(Duration::from_secs(3600)));
        assert_eq!(c.settings().multipart_threshold, 64 << 20);
        assert_eq!(c.settings().lease.ttl, Duration::from_secs(60));
        assert!(c.settings().api.is_none());
        assert_eq!(c.compaction.sort_keys_for("cpu"), ["time"]);
    }

    /// Issue 21 §3 (Arc #792, #890): `time` is appended to sort keys that
    /// lack it, unless they are to be used verbatim.
    #[test]
    fn time_is_appended_to_sort_keys_unless_verbatim() {
        let config = |extra: &str| parse(&format!("[storage]\nurl = \"memory://\"\n[compaction]\n{extra}\n")).unwrap();
        let c = config("[compaction.sort_keys]\ncpu = [\"host\"]\nmem = [\"time\", \"host\"]\nnone = []");
        assert_eq!(c.compaction.sort_keys_for("cpu"), ["host", "time"]);
        assert_eq!(c.compaction.sort_keys_for("mem"), ["time", "host"], "kept where it is");
        assert_eq!(c.compaction.sort_keys_for("none"), ["time"]);
        let c = config("sort_keys_verbatim = true\n[compaction.sort_keys]\ncpu = [\"host\"]\nnone = []");
        assert_eq!(c.compaction.sort_keys_for("cpu"), ["host"]);
        assert!(c.compaction.sort_keys_for("none").is_empty(), "no ORDER BY");
    }

    #[test]
    fn unknown_keys_are_errors_that_name_the_key() {
        let err = parse("[storage]\nurl = \"memory://\"\n[compaction]\nmax_file_per_batch = 3\n").unwrap_err();
        assert!(err.to_string().contains("max_file_per_batch"), "{err}");
        let err =
            parse("[storage]\nurl = \"memory://\"\n[[tiers]]\nname = \"h\"\nplugin = \"builtin:hourly\"\nenable = true\n").unwrap_err();
        assert!(err.to_string().contains("enable"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let err = parse("[storage]\nurl = \"memory://\"\n[compaction]\nmax_concurrent = -1\n").unwrap_err();
        assert_eq!(err.to_string(), "invalid compaction.max_concurrent value: -1 (must be >= 0; 0 = default)");
        let err = parse("[storage]\nurl = \"memory://\"\n[compaction]\nrow_group_size = 0\n").unwrap_err();
        assert_eq!(err.to_string(), "invalid compaction.row_group_size value: 0 (expected 1 to 100000000 rows)");
        let err = parse("[storage]\nurl = \"memory://\"\n[compaction]\nmerge_batch_rows = 0\n").unwrap_err();
        assert_eq!(err.to_string(), "invalid compaction.merge_batch_rows value: 0 (expected 1 to 10000000 rows)");
        let err = parse("[storage]\nurl = \"memory://\"\n[compaction]\nthreads = -2\n").unwrap_err();
        assert_eq!(err.to_string(), "invalid compaction.threads value: -2 (must be >= 0; 0 = auto)");
        let err = parse("[storage]\nurl = \"memory://\"\n[[tiers]]\nname = \"h\"\nplugin = \"builtin:hourly\"\nschedule = \"@hourly\"\n")
            .unwrap_err();
        assert!(err.to_string().starts_with("invalid tiers[0].schedule value"), "{err}");
        let err = parse(
            "[storage]\nurl = \"memory://\"\n[[tiers]]\nname = \"h\"\nplugin = \"builtin:hourly\"\n[tiers.limits]\nmemory = \"lots\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("invalid tiers[0].limits.memory value"), "{err}");
    }

    #[test]
    fn api_auth_all_needs_a_token_and_trigger_timeout_a_duration() {
        if std::env::var("COMPACTOR_API_TOKEN").is_ok() {
            return;
        }
        let api = |extra: &str| parse(&format!("[storage]\nurl = \"memory://\"\n[api]\n{extra}\n"));
        let err = api("auth = \"all\"").unwrap_err().to_string();
        assert!(err.starts_with("invalid api.auth value") && err.contains("needs a token"), "{err}");
        assert!(api("auth = \"some\"").is_err());
        let settings = api("auth = \"all\"\ntoken = \"t\"").unwrap().settings().api.clone().unwrap();
        assert_eq!((settings.auth, settings.trigger_timeout), (ApiAuth::All, Duration::from_secs(1800)), "Arc's 30 minutes");
        let err = api("trigger_timeout = \"0s\"").unwrap_err().to_string();
        assert!(err.starts_with("invalid api.trigger_timeout value"), "{err}");
    }

    /// Issue 21 §4m: these opened, then failed in every job.
    #[test]
    fn stores_a_job_cannot_open_are_refused_at_load_saying_why() {
        for url in ["gs://bucket/lake", "GS://bucket", "https://host/lake"] {
            let err = parse(&format!("[storage]\nurl = \"{url}\"\n")).unwrap_err().to_string();
            assert!(err.starts_with("invalid storage.url value"), "{url}: {err}");
        }
        let err = parse("[storage]\nurl = \"gs://b\"\n").unwrap_err().to_string();
        assert!(err.contains("storage.googleapis.com"), "{err}");
        for url in ["s3://bucket/lake", "az://container/lake", "abfss://c@a.dfs.core.windows.net/x"] {
            assert!(parse(&format!("[storage]\nurl = \"{url}\"\n")).is_ok(), "{url}");
        }
    }

    /// Issue 21 §4f: `1TiB` was accepted, and `16EiB` said "too small".
    #[test]
    fn plugin_memory_is_bounded_by_what_an_instance_can_address() {
        let limits = |memory: &str| {
            parse(&format!(
                "[storage]\nurl = \"memory://\"\n[[tenants]]\nname = \"t\"\ndatabases = [\"x\"]\n[tenants.limits]\nmemory = \"{memory}\"\n"
            ))
        };
        for too_much in ["1TiB", "5GiB", "512KiB", "1MiB"] {
            let err = limits(too_much).unwrap_err().to_string();
            assert!(err.starts_with("invalid tenants[0].limits.memory value") && err.contains("between 2MiB"), "{err}");
        }
        let err = limits("16EiB").unwrap_err().to_string();
        assert!(err.contains("expected a size such as") && !err.contains("too small"), "{err}");
        assert!(limits("4GiB").is_ok() && limits("2MiB").is_ok());
    }

    #[test]
    fn memory_limit_follows_arc() {
        for ok in ["", "2GB", "512MB", "0.5GB", "8 GB", "100000B", "1.5TB", "4KB"] {
            assert!(validate_memory_limit(ok).is_ok(), "{ok}");
        }
        for bad in ["40%", "80 %", "1000000", "0.5", "bogus", "GB", "-1GB"] {
            assert!(validate_memory_limit(bad).is_err(), "{bad}");
        }
        assert!(validate_memory_limit("40%").unwrap_err().to_string().contains("percent and unit-less"));
    }

    #[test]
    fn tier_limits_layer_over_plugin_defaults() {
        let c = parse(
            "[storage]\nurl = \"memory://\"\n[plugins.limits]\nfuel_per_call = 1000\n[[tiers]]\nname = \"h\"\nplugin = \"builtin:hourly\"\n[tiers.limits]\ncall_timeout_ms = 50\n",
        )
        .unwrap();
        let limits = c.settings().tiers[0].limits;
        assert_eq!(limits.fuel_per_call, 1000);
        assert_eq!(limits.call_timeout, Duration::from_millis(50));
        assert_eq!(limits.memory_bytes, PluginLimits::default().memory_bytes);
    }

    const TENANTS: &str = r#"
[storage]
url = "memory://"
[[tiers]]
name = "hourly"
plugin = "builtin:hourly"
schedule = "5 * * * *"
[tiers.limits]
call_timeout_ms = 50
[[tenants]]
name = "acme"
databases = ["acme", "acme_*"]
[tenants.limits]
fuel_per_call = 1000
[[tenants]]
name = "acme-eu"
databases = ["acme_eu", "eu_?"]
[[tenants.tiers]]
name = "hourly"
plugin = "builtin:hourly"
schedule = "5 * * * *"
[[tenants.tiers]]
name = "daily"
plugin = "builtin:daily"
schedule = "0 3 * * *"
"#;

    #[test]
    fn a_database_belongs_to_the_first_tenant_that_matches() {
        let c = parse(TENANTS).unwrap();
        let owner = |db: &str| c.tenant_of(db).map(|t| t.name.clone());
        assert_eq!(owner("acme"), Some("acme".into()));
        assert_eq!(owner("acme_eu"), Some("acme".into()), "acme's pattern comes first");
        assert_eq!(owner("eu_1"), Some("acme-eu".into()));
        assert_eq!(owner("eu_12"), None, "? is one character");
        assert_eq!(owner("acmeX"), None);
    }

    #[test]
    fn a_tenants_tiers_sharing_a_schedule_fire_together_and_tenants_apart() {
        let c = parse(TENANTS).unwrap();
        let schedules: Vec<(Vec<String>, String)> = c.schedules().into_iter().map(|(keys, s)| (keys, s.to_string())).collect();
        assert_eq!(
            schedules,
            [
                (vec!["hourly".to_owned()], "0 5 * * * *".to_owned()),
                (vec!["acme/hourly".to_owned()], "0 5 * * * *".to_owned()),
                (vec!["acme-eu/hourly".to_owned()], "0 5 * * * *".to_owned()),
                (vec!["acme-eu/daily".to_owned()], "0 0 3 * * *".to_owned()),
            ]
        );
        assert!(c.check_tier_names(&["daily".into(), "acme/hourly".into()]).is_ok());
        assert!(c.check_tier_names(&["acme/daily".into()]).is_err(), "acme inherits only the top-level hourly");
    }

    #[test]
    fn a_tenants_limits_have_the_last_word() {
        let c = parse(TENANTS).unwrap();
        let acme_hourly = c.tier(&TierId::new(Some("acme"), "hourly")).unwrap();
        let limits = acme_hourly.limits;
        assert_eq!(limits.fuel_per_call, 1000);
        assert_eq!(limits.call_timeout, Duration::from_millis(50), "the tier's own limit stays where the tenant sets none");
    }

    #[test]
    fn planning_time_per_tenant_defaults_to_the_compactions_and_names_its_key() {
        let c = parse(TENANTS).unwrap();
        let budget = |tenant: Option<&str>| c.settings().max_planning_time[&tenant.map(str::to_owned)];
        assert_eq!(budget(None), Some(Duration::from_secs(600)));
        assert_eq!(budget(Some("acme")), Some(Duration::from_secs(600)));
        let own = TENANTS.replace("name = \"acme\"\n", "name = \"acme\"\nmax_planning_time = \"0s\"\n");
        assert_eq!(parse(&own).unwrap().settings().max_planning_time[&Some("acme".to_owned())], None, "0s: no limit");
        let bad = TENANTS.replace("name = \"acme\"\n", "name = \"acme\"\nmax_planning_time = \"soon\"\n");
        assert!(parse(&bad).unwrap_err().to_string().contains("tenants[0].max_planning_time"));
    }

    #[test]
    fn five_field_cron_only() {
        assert!(parse_schedule("5 * * * *").is_ok());
        assert!(parse_schedule("0 3 * * *").is_ok());
        assert!(parse_schedule("0 0 3 * * *").is_err());
        assert!(parse_schedule("61 * * * *").is_err());
    }

    #[test]
    fn odd_cluster_values_are_refused_naming_the_key() {
        let cluster = |extra: &str| {
            parse(&format!(
                "[storage]\nurl = \"memory://\"\n[cluster]\nenabled = true\netcd_endpoints = [\"http://127.0.0.1:2379\"]\n{extra}"
            ))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
        };
        for (extra, key) in [
            ("node_id = \" \"", "cluster.node_id"),
            ("node_id = \"a/b\"", "cluster.node_id"),
            ("unhealthy_threshold = 0", "cluster.unhealthy_threshold"),
            ("session_ttl = \"1500ms\"", "cluster.session_ttl"),
            ("check_interval = \"1ms\"", "cluster.check_interval"),
            ("key_prefix = \"compactor\"", "cluster.key_prefix"),
        ] {
            let error = cluster(extra);
            assert!(error.contains(key) && !error.is_empty(), "{extra}: {error:?}");
        }
        assert_eq!(cluster("node_id = \"n1\""), "");
    }
}
