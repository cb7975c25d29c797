//! The test kit: a typed config builder (serialised with `toml`, so no test
//! depends on the order of string appends) and waits on readiness signals.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

/// A `compactor.toml` under construction.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TestConfig {
    storage: Storage,
    plugins: Plugins,
    #[serde(skip_serializing_if = "toml::Table::is_empty")]
    compaction: toml::Table,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tiers: Vec<toml::Table>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tenants: Vec<toml::Table>,
    #[serde(skip_serializing_if = "toml::Table::is_empty")]
    cluster: toml::Table,
    #[serde(skip_serializing_if = "toml::Table::is_empty")]
    coordination: toml::Table,
    /// Other sections (`[api]`, `[history]`, `[log]`), by name.
    #[serde(flatten)]
    sections: BTreeMap<String, toml::Table>,
}

#[derive(Debug, Clone, Serialize)]
struct Storage {
    url: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
struct Plugins {
    cache_dir: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    limits: Option<toml::Value>,
}

/// A TOML value from a Rust one.
pub(crate) fn value(v: impl Into<toml::Value>) -> toml::Value {
    v.into()
}

impl TestConfig {
    /// A config for the store at `url`, with the tests' shared artifact
    /// cache, Arc's default tiers, and nothing else.
    pub(crate) fn new(url: impl Into<String>) -> Self {
        let cache_dir = std::env::temp_dir().join("compactor-test-artifacts").display().to_string();
        Self {
            storage: Storage { url: url.into(), options: BTreeMap::new() },
            plugins: Plugins { cache_dir, limits: None },
            compaction: toml::Table::new(),
            tiers: Vec::new(),
            tenants: Vec::new(),
            cluster: toml::Table::new(),
            coordination: toml::Table::new(),
            sections: BTreeMap::new(),
        }
    }

    /// One key of a section without a method of its own (`[api]`,
    /// `[history]`, `[log]`).
    pub(crate) fn section(mut self, section: &str, key: &str, value: impl Into<toml::Value>) -> Self {
        self.sections.entry(section.into()).or_default().insert(key.into(), value.into());
        self
    }

    /// `[plugins.limits]`, e.g. a table with `call_timeout_ms`.
    pub(crate) fn plugin_limits(mut self, limits: toml::Value) -> Self {
        self.plugins.limits = Some(limits);
        self
    }

    /// `limits` of the last `[[tiers]]` entry.
    pub(crate) fn tier_limits(mut self, limits: toml::Value) -> Self {
        if let Some(tier) = self.tiers.last_mut() {
            tier.insert("limits".into(), limits);
        }
        self
    }

    /// `[storage.options]`.
    pub(crate) fn storage_options(mut self, options: &BTreeMap<String, String>) -> Self {
        self.storage.options.extend(options.iter().map(|(k, v)| (k.clone(), v.clone())));
        self
    }

    /// One `[compaction]` key.
    pub(crate) fn compaction(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.compaction.insert(key.into(), value.into());
        self
    }

    /// Short leases (`lease_ttl`, a tenth of it as `max_clock_skew`), so
    /// that a test can outwait one.
    pub(crate) fn lease_ttl_ms(mut self, millis: u64) -> Self {
        self.coordination.insert("lease_ttl".into(), format!("{millis}ms").into());
        self.coordination.insert("max_clock_skew".into(), format!("{}ms", millis / 10).into());
        self
    }

    /// Cluster mode on the shared etcd, with `role` and timings short
    /// enough for tests (session 4 s, checks every 200 ms, failover after
    /// 3 checks and 1 s).
    pub(crate) fn cluster_on_etcd(self, role: &str) -> Self {
        self.cluster("enabled", true)
            .cluster("etcd_endpoints", vec![shared_etcd_endpoint().to_owned()])
            .cluster("role", role)
            .cluster("session_ttl", "4s")
            .cluster("check_interval", "200ms")
            .cluster("failover_timeout", "1s")
            .cluster("failover_cooldown", "2s")
    }

    /// One `[cluster]` key.
    pub(crate) fn cluster(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.cluster.insert(key.into(), value.into());
        self
    }

    /// A `[[tiers]]` entry running `plugin`, with `config` as its
    /// `[tiers.config]` (pairs of key and value).
    pub(crate) fn tier(mut self, name: &str, plugin: &str, config: &[(&str, toml::Value)]) -> Self {
        let mut tier = toml::Table::new();
        tier.insert("name".into(), name.into());
        tier.insert("plugin".into(), plugin.into());
        if !config.is_empty() {
            tier.insert("config".into(), toml::Value::Table(config.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect()));
        }
        self.tiers.push(tier);
        self
    }

    /// A `[[tenants]]` entry, written as TOML (`name`, `databases`, …).
    pub(crate) fn tenant(mut self, toml_text: &str) -> Self {
        self.tenants.push(toml::from_str(toml_text).expect("a tenant table"));
        self
    }

    /// The same `schedule` for every tier so far.
    pub(crate) fn schedules(mut self, cron: &str) -> Self {
        for tier in &mut self.tiers {
            tier.insert("schedule".into(), cron.into());
        }
        self
    }

    /// Arc's two tiers, daily with `min_files = 2` so that two hours make a
    /// day.
    pub(crate) fn hourly_and_daily(self) -> Self {
        self.tier("hourly", "builtin:hourly", &[]).tier("daily", "builtin:daily", &[("min_files", value(2))])
    }

    /// The TOML text.
    pub(crate) fn to_toml(&self) -> String {
        toml::to_string(self).expect("a test config serialises")
    }

    /// Writes `dir/compactor.toml` and returns its path.
    pub(crate) fn write(&self, dir: &Path) -> String {
        let path = dir.join("compactor.toml");
        std::fs::write(&path, self.to_toml()).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path.display().to_string()
    }
}

/// Polls `ready` every 20 ms until it holds, or panics after `timeout`
/// naming `what`: tests wait on a signal, never on a fixed sleep.
pub(crate) fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ready() {
        assert!(started.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn configs_are_valid_toml_whatever_the_call_order() {
    let config = TestConfig::new("lake")
        .tier("hourly", "builtin:hourly", &[("min_files", value(3))])
        .compaction("threads", 1)
        .cluster("enabled", true)
        .cluster("etcd_endpoints", vec!["http://127.0.0.1:2379".to_owned()])
        .compaction("temp_directory", "tmp");
    let parsed = compactor_engine::config::Config::parse(&config.to_toml()).unwrap();
    assert_eq!(parsed.compaction.threads, 1);
    assert_eq!(parsed.compaction.temp_directory, Path::new("tmp"));
    assert_eq!(parsed.tiers.len(), 1);
    assert_eq!(parsed.tiers[0].config_json(), r#"{"min_files":3}"#);
    assert!(parsed.cluster.enabled);
}

/// Kills an engine process and waits until the jobs it had started are gone
/// too (they die with it through `PR_SET_PDEATHSIG`, but not at once): a
/// test that starts the next engine earlier races a live job.
pub(crate) fn kill_engine_and_wait_for_jobs(engine: &mut std::process::Child) {
    let pid = engine.id() as i32;
    // Stopped, the engine starts no job between the listing and the kill.
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(pid, libc::SIGSTOP);
    }
    let jobs = children_of(pid);
    let _ = engine.kill();
    let _ = engine.wait();
    wait_until("the killed engine's jobs to exit", Duration::from_secs(30), || jobs.iter().all(|job| !is_running(*job)));
}

/// The processes whose parent is `pid`.
fn children_of(pid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|candidate| stat_fields(*candidate).is_some_and(|(_, parent)| parent == pid))
        .collect()
}

/// A process that exists and is not a zombie.
fn is_running(pid: i32) -> bool {
    stat_fields(pid).is_some_and(|(state, _)| state != 'Z' && state != 'X')
}

/// (state, parent pid) from `/proc/PID/stat`.
fn stat_fields(pid: i32) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let parent = fields.next()?.parse().ok()?;
    Some((state, parent))
}

/// An S3-compatible server (`moto_server`) on a free loopback port, ready
/// when `start` returns. It dies with the thread that started it
/// (`PR_SET_PDEATHSIG`) and is stopped by PID on drop.
pub(crate) struct MotoServer {
    child: std::process::Child,
    /// `http://127.0.0.1:PORT`.
    pub(crate) endpoint: String,
}

impl MotoServer {
    /// Starts a server and waits until it accepts connections.
    pub(crate) fn start() -> Self {
        let (child, port) =
            spawn_loopback_server("moto_server", |port| vec!["-H".into(), "127.0.0.1".into(), "-p".into(), port.to_string()]);
        Self { child, endpoint: format!("http://127.0.0.1:{port}") }
    }

    /// Sends `signal` to the server (SIGSTOP cuts the store off).
    pub(crate) fn signal(&self, signal: i32) {
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }
}

/// Starts `program` with `args(port)` on a free loopback port, killed when
/// the thread that started it ends (`PR_SET_PDEATHSIG`); returns once it
/// accepts connections.
fn spawn_loopback_server(program: &str, args: impl Fn(u16) -> Vec<String>) -> (std::process::Child, u16) {
    use std::os::unix::process::CommandExt;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut command = std::process::Command::new(program);
    command.args(args(port)).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    // SAFETY: prctl only sets a flag on the new process.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = command.spawn().unwrap_or_else(|e| panic!("cannot start {program}: {e} (`.ci/run` installs it)"));
    wait_until(&format!("{program} to accept connections"), Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    (child, port)
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The S3 endpoint the tests share: `$COMPACTOR_TEST_S3_ENDPOINT` (as
/// `.ci/run` sets it), else a `moto_server` started for this test process.
pub(crate) fn shared_s3_endpoint() -> &'static str {
    static ENDPOINT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ENDPOINT.get_or_init(|| {
        shared_server("COMPACTOR_TEST_S3_ENDPOINT", || {
            let server = MotoServer::start();
            let endpoint = server.endpoint.clone();
            (Box::new(server), endpoint)
        })
    })
}

/// The Azure Blob endpoint the tests share (Azurite's, with its account in
/// the path): `$COMPACTOR_TEST_AZURE_ENDPOINT` (as `.ci/run` sets it), else
/// an `azurite-blob` started for this test process, from the PATH or where
/// `.ci/run` installs it.
pub(crate) fn shared_azure_endpoint() -> &'static str {
    static ENDPOINT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ENDPOINT.get_or_init(|| {
        shared_server("COMPACTOR_TEST_AZURE_ENDPOINT", || {
            let installed = std::env::var("HOME").map(|h| format!("{h}/.cache/compactor/azurite/node_modules/.bin/azurite-blob"));
            let program = installed.ok().filter(|p| Path::new(p).exists()).unwrap_or_else(|| "azurite-blob".to_owned());
            // In memory: nothing to clean up (its debug log and account
            // files would otherwise land in the working directory).
            let (child, port) = spawn_loopback_server(&program, |port| {
                [
                    "--blobHost",
                    "127.0.0.1",
                    "--blobPort",
                    &port.to_string(),
                    "--inMemoryPersistence",
                    "--skipApiVersionCheck",
                    "--disableTelemetry",
                    "--silent",
                ]
                .iter()
                .map(|a| (*a).to_owned())
                .collect()
            });
            (Box::new(child), format!("http://127.0.0.1:{port}/devstoreaccount1"))
        })
    })
}

/// The endpoint in `variable`, waited for, else a server `start`ed on a
/// thread that outlives every test, so that the server lives as long as the
/// test process and no longer.
/// The etcd endpoint the tests share: `$COMPACTOR_TEST_ETCD_ENDPOINT` (as
/// `.ci/run` sets it), else an `etcd` started for this test process. Each
/// lake's cluster state lives under its own lake id, so tests never meet.
pub(crate) fn shared_etcd_endpoint() -> &'static str {
    static ENDPOINT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ENDPOINT.get_or_init(|| {
        shared_server("COMPACTOR_TEST_ETCD_ENDPOINT", || {
            let server = EtcdServer::start();
            let endpoint = server.endpoint.clone();
            (Box::new(server), endpoint)
        })
    })
}

/// An etcd of a test's own (one a test may pause), on free loopback
/// ports, its data in a temporary directory; killed on drop.
pub(crate) struct EtcdServer {
    child: std::process::Child,
    _data: tempfile::TempDir,
    /// `http://127.0.0.1:PORT`.
    pub(crate) endpoint: String,
}

impl EtcdServer {
    /// Starts etcd and waits until it accepts connections.
    pub(crate) fn start() -> Self {
        // On tmpfs where there is one: etcd fsyncs every write, and a busy
        // disk would make its answers late enough to cut nodes off.
        let shm = Path::new("/dev/shm");
        let data = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() }.unwrap();
        let peer = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let data_dir = data.path().display().to_string();
        let (child, port) = spawn_loopback_server("etcd", |port| {
            let client = format!("http://127.0.0.1:{port}");
            let peer = format!("http://127.0.0.1:{peer}");
            let cluster = format!("default={peer}");
            [
                "--data-dir",
                &data_dir,
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
                "--initial-cluster",
                &cluster,
            ]
            .iter()
            .map(|a| (*a).to_owned())
            .collect()
        });
        Self { child, _data: data, endpoint: format!("http://127.0.0.1:{port}") }
    }

    /// Sends `signal` (SIGSTOP pauses etcd, SIGCONT resumes it).
    pub(crate) fn signal(&self, signal: i32) {
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `start` returns what keeps its server alive, and the endpoint.
fn shared_server(variable: &str, start: impl FnOnce() -> (Box<dyn Send>, String) + Send + 'static) -> String {
    if let Ok(endpoint) = std::env::var(variable) {
        let address = endpoint.trim_start_matches("http://").split('/').next().unwrap_or_default().to_owned();
        wait_until(&format!("a server at {endpoint}"), Duration::from_secs(10), || std::net::TcpStream::connect(&address).is_ok());
        return endpoint;
    }
    let (ready, started) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (_server, endpoint) = start();
        let _ = ready.send(endpoint);
        loop {
            std::thread::park();
        }
    });
    started.recv().unwrap_or_else(|_| panic!("the server for {variable} did not start"))
}

/// Starts `compactor -v run --config CONFIG`, waits for its readiness line
/// ("compactor is running"), sends SIGTERM, and returns its exit status and
/// everything it wrote on stderr.
pub(crate) fn run_until_ready_then_sigterm(config: &str) -> (std::process::ExitStatus, String) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_compactor"))
        .args(["-v", "run", "--config", config])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = String::new();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stderr.take().unwrap()));
    for line in lines.by_ref() {
        let line = line.unwrap();
        stderr.push_str(&line);
        stderr.push('\n');
        if line.contains("compactor is running") {
            break;
        }
    }
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    for line in lines {
        stderr.push_str(&line.unwrap());
        stderr.push('\n');
    }
    (child.wait().unwrap(), stderr)
}

/// A proxy in front of an S3 server that answers everything as the server
/// does, except the first PUT whose path contains `pattern`: it takes the
/// whole request, never answers it, and forwards it to the server `delay`
/// later — an upload that lands after the client has given up on it.
pub(crate) struct LateProxy {
    /// `http://127.0.0.1:PORT`.
    pub(crate) endpoint: String,
    /// Set once the held request has reached the server.
    pub(crate) landed: Arc<AtomicBool>,
}

impl LateProxy {
    pub(crate) fn start(upstream: &str, pattern: &'static str, delay: Duration) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let landed = Arc::new(AtomicBool::new(false));
        let held = Arc::new(AtomicBool::new(false));
        let flag = landed.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (upstream, held, landed) = (upstream.clone(), held.clone(), flag.clone());
                std::thread::spawn(move || {
                    let mut reader = std::io::BufReader::new(client.try_clone().unwrap());
                    let mut client = client;
                    while let Some((head, body)) = read_request(&mut reader) {
                        let is_put = head.starts_with("PUT ") && head.lines().next().is_some_and(|l| l.contains(pattern));
                        if is_put && !held.swap(true, Ordering::SeqCst) {
                            let landed = landed.clone();
                            std::thread::spawn(move || {
                                std::thread::sleep(delay);
                                forward(&upstream, &head, &body);
                                landed.store(true, Ordering::SeqCst);
                            });
                            return; // The client hears nothing and times out.
                        }
                        let response = forward(&upstream, &head, &body);
                        if std::io::Write::write_all(&mut client, &response).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { endpoint, landed }
    }
}

/// A proxy in front of an S3 server that delays the requests `delayed`
/// picks (by their request line) by `delay`, as a far-away bucket does, and
/// completes every request whose body it received even when its client is
/// gone, as S3 does: a killed engine's request lands after its death.
pub(crate) struct DelayProxy {
    /// `http://127.0.0.1:PORT`.
    pub(crate) endpoint: String,
    /// The request line of each delayed request, as it arrives.
    pub(crate) arrivals: std::sync::Mutex<std::sync::mpsc::Receiver<String>>,
    /// Delayed requests the server has not answered yet.
    pub(crate) in_flight: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl DelayProxy {
    pub(crate) fn start(upstream: &str, delayed: fn(&str) -> bool, delay: Duration) -> Self {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let (arrived, arrivals) = std::sync::mpsc::channel();
        let counter = in_flight.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (upstream, in_flight, arrived) = (upstream.clone(), counter.clone(), arrived.clone());
                std::thread::spawn(move || {
                    let mut reader = std::io::BufReader::new(client.try_clone().unwrap());
                    let mut client = client;
                    while let Some((head, body)) = read_request(&mut reader) {
                        let line = head.lines().next().unwrap_or_default().to_owned();
                        let response = if delayed(&line) {
                            in_flight.fetch_add(1, Ordering::SeqCst);
                            let _ = arrived.send(line);
                            std::thread::sleep(delay);
                            let response = forward(&upstream, &head, &body);
                            in_flight.fetch_sub(1, Ordering::SeqCst);
                            response
                        } else {
                            forward(&upstream, &head, &body)
                        };
                        if std::io::Write::write_all(&mut client, &response).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { endpoint, arrivals: std::sync::Mutex::new(arrivals), in_flight }
    }

    /// Waits for the next delayed request whose line `wanted` accepts.
    pub(crate) fn wait_for(&self, wanted: impl Fn(&str) -> bool, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let arrivals = self.arrivals.lock().unwrap();
        loop {
            let line = arrivals.recv_timeout(deadline.checked_duration_since(Instant::now())?).ok()?;
            if wanted(&line) {
                return Some(line);
            }
        }
    }
}

/// One HTTP/1.1 request: its head (up to the blank line) and its body (by
/// `Content-Length`); `None` at the end of the connection.
fn read_request(reader: &mut impl std::io::BufRead) -> Option<(String, Vec<u8>)> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let length = head
        .lines()
        .find_map(|l| {
            l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")).map(|(_, v)| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0);
    let mut body = vec![0; length];
    std::io::Read::read_exact(reader, &mut body).ok()?;
    Some((head, body))
}

/// Sends one request to `upstream` on a fresh connection and returns the
/// whole response (the connection is closed after it).
fn forward(upstream: &str, head: &str, body: &[u8]) -> Vec<u8> {
    use std::io::{Read, Write};
    let head: String = head
        .split("\r\n")
        .filter(|l| !l.is_empty() && !l.to_ascii_lowercase().starts_with("connection:"))
        .map(|l| format!("{l}\r\n"))
        .collect::<String>()
        + "Connection: close\r\n\r\n";
    let Ok(mut server) = std::net::TcpStream::connect(upstream) else { return Vec::new() };
    let _ = server.write_all(head.as_bytes()).and_then(|()| server.write_all(body));
    let mut response = Vec::new();
    let _ = server.read_to_end(&mut response);
    response
}

/// `compactor -v ARGS --config CONFIG` in its own process group (so that a
/// test can stop or kill the engine with its jobs), output piped, not
/// waited for.
pub(crate) fn spawn_compactor(config: &str, args: &[&str], env: &[(&str, &str)]) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_compactor"));
    command
        .arg("-v")
        .args(args)
        .args(["--config", config])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0);
    command.envs(env.iter().copied());
    command.spawn().expect("run compactor")
}

/// Sends `signal` to the process group of a child started by
/// [`spawn_compactor`]: the engine and its jobs.
pub(crate) fn signal_group(child: &std::process::Child, signal: i32) {
    // SAFETY: signalling the process group of our own child.
    unsafe {
        libc::killpg(child.id() as i32, signal);
    }
}

/// After two lease TTLs (so that every earlier engine's lease has expired):
/// `recover`, then `once --now NOW`, until recovery leaves no manifest to a
/// live job (on S3 a dead job's claim also waits for the request timeout)
/// and a cycle has nothing to do; panics after six rounds. `keep` sees each
/// run (a test may save its log).
pub(crate) fn run_until_idle(config: &str, now: &str, lease_ttl_ms: u64, keep: impl Fn(&str, &std::process::Output)) {
    use crate::util::{compactor, text};
    std::thread::sleep(Duration::from_millis(2 * lease_ttl_ms));
    for attempt in 0..6 {
        let recovered = compactor(&["-v", "recover", "--config", config], &[]);
        keep("recover", &recovered);
        assert!(recovered.status.success(), "{}", text(&recovered));
        let cycle = compactor(&["-v", "once", "--config", config, "--now", now], &[]);
        keep("once", &cycle);
        let none_live = String::from_utf8_lossy(&recovered.stdout).contains(" 0 left to live jobs");
        if none_live && cycle.status.success() && String::from_utf8_lossy(&cycle.stdout).contains(": 0 jobs,") {
            return;
        }
        assert!(attempt < 5, "no convergence: {}", text(&cycle));
        std::thread::sleep(Duration::from_millis(lease_ttl_ms));
    }
}

/// A TCP relay to a server that a test can cut, as a network partition
/// would (nothing passes either way; bytes sent meanwhile wait), and heal.
pub(crate) struct CutProxy {
    /// `http://127.0.0.1:PORT`.
    pub(crate) endpoint: String,
    cut: Arc<AtomicBool>,
    stopped: Arc<AtomicBool>,
}

impl CutProxy {
    /// Relays to `upstream` (`http://HOST:PORT`).
    pub(crate) fn start(upstream: &str) -> Self {
        let upstream = upstream.trim_start_matches("http://").trim_end_matches('/').to_owned();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let (cut, stopped) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let (cut_flag, stop_flag) = (cut.clone(), stopped.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop_flag.load(Ordering::SeqCst) {
                    return;
                }
                let (Ok(client), Ok(server)) = (client, std::net::TcpStream::connect(&upstream)) else { continue };
                for (from, to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)] {
                    let (cut, stopped) = (cut_flag.clone(), stop_flag.clone());
                    std::thread::spawn(move || relay(from, to, &cut, &stopped));
                }
            }
        });
        Self { endpoint, cut, stopped }
    }

    /// Cuts (`true`) or heals (`false`) every connection, present and new.
    pub(crate) fn cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag.
        let _ = std::net::TcpStream::connect(self.endpoint.trim_start_matches("http://"));
    }
}

/// Copies `from` to `to`, holding what it read while `cut` is set.
fn relay(mut from: std::net::TcpStream, mut to: std::net::TcpStream, cut: &AtomicBool, stopped: &AtomicBool) {
    use std::io::{Read, Write};
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        while cut.load(Ordering::SeqCst) && !stopped.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let n = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        while cut.load(Ordering::SeqCst) && !stopped.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if stopped.load(Ordering::SeqCst) || to.write_all(&buffer[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}
