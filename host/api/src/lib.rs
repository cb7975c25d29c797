//! The HTTP API of `compactor run`: Arc's `/api/v1/compaction/*` routes with
//! Arc's JSON field names (spec §14), the partition outlook ("when will my
//! partition be compacted, and why not yet?"), the plugins, health and
//! readiness, and Prometheus metrics at `/metrics`.
//!
//! Reading is open; changing (trigger, reload) needs the bearer token from
//! `[api] token` or `COMPACTOR_API_TOKEN`, and is refused outright when no
//! token is configured. Every error is JSON: `{"error": "..."}`.

pub mod debt;
pub mod metrics;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde_json::{Value, json};

use crate::debt::Debt;
use crate::metrics::Metrics;
use compactor_engine::config::ConfigError;
use compactor_engine::{CycleError, CycleOptions, GateDecision, Manager, PlannedTier};

/// How long `/candidates` may plan (Arc's deadline).
const CANDIDATES_DEADLINE: Duration = Duration::from_secs(30);
/// How long each tenant's planning may take for a planning view: one
/// policy call (5 s by default) may run past it, and the view answers within
/// [`CANDIDATES_DEADLINE`] with what is ready, naming the tenants cut short.
const TENANT_PLANNING_DEADLINE: Duration = Duration::from_secs(10);
/// How often debt is recomputed between cycles.
const DEBT_INTERVAL: Duration = Duration::from_secs(300);
/// Planning views (candidates, partition outlooks) computed at once; others
/// wait their turn (within their deadline): each can make thousands of policy
/// calls on threads of their own.
const PLANNING_VIEWS_AT_ONCE: usize = 2;
/// How long a candidates request waits for its turn before a 503.
const PLANNING_VIEW_WAIT: Duration = Duration::from_secs(5);
/// How long `/partitions` may take, waiting included.
const OUTLOOK_DEADLINE: Duration = Duration::from_secs(30);
/// The largest request body (a trigger's JSON).
const MAX_BODY_BYTES: usize = 64 * 1024;
/// Connections open at once; more are closed on accept.
pub const MAX_CONNECTIONS: usize = 256;
/// How long a client may take to send a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Arc's history route returns at most this many records.
const HISTORY_MAX: usize = 10;

/// The API of one engine.
#[derive(Clone)]
pub struct Api {
    inner: Arc<Inner>,
}

struct Inner {
    manager: Arc<Manager>,
    metrics: Arc<Metrics>,
    token: Option<String>,
    ready: AtomicBool,
    stopping: AtomicBool,
    scheduling: RwLock<Scheduling>,
    debt: RwLock<Option<Debt>>,
    debt_wanted: tokio::sync::Notify,
    /// Planning views computed at once ([`PLANNING_VIEWS_AT_ONCE`]).
    planning_views: tokio::sync::Semaphore,
    /// What each loaded build says about itself, by tier and content hash
    /// (asked once per build).
    tier_info: std::sync::Mutex<HashMap<(String, String), Value>>,
}

/// Whether the schedulers run, and what the gate said.
#[derive(Debug, Clone, Default)]
struct Scheduling {
    running: bool,
    gate: GateDecision,
}

impl Api {
    /// The API over `manager`; its metrics follow the manager's events from
    /// now on. `token` guards the mutating endpoints (none: refused).
    pub fn new(manager: Arc<Manager>, token: Option<String>) -> anyhow::Result<Self> {
        let metrics = Arc::new(Metrics::new()?);
        metrics::attach(&metrics, &manager);
        let api = Self {
            inner: Arc::new(Inner {
                manager,
                metrics,
                token,
                ready: AtomicBool::new(false),
                stopping: AtomicBool::new(false),
                scheduling: RwLock::default(),
                debt: RwLock::default(),
                debt_wanted: tokio::sync::Notify::new(),
                planning_views: tokio::sync::Semaphore::new(PLANNING_VIEWS_AT_ONCE),
                tier_info: std::sync::Mutex::default(),
            }),
        };
        let wake = Arc::downgrade(&api.inner);
        api.inner.manager.subscribe(move |event| {
            if let (compactor_engine::Progress::CycleFinished { .. }, Some(inner)) = (&event, wake.upgrade()) {
                inner.debt_wanted.notify_one();
            }
        });
        Ok(api)
    }

    /// Marks the engine ready (store checked, start-up recovery done) and
    /// says whether its schedulers run.
    pub fn set_ready(&self, schedulers_running: bool, gate: GateDecision) {
        *self.inner.scheduling.write().unwrap_or_else(|e| e.into_inner()) = Scheduling { running: schedulers_running, gate };
        self.inner.ready.store(true, Ordering::SeqCst);
    }

    /// The engine is shutting down: triggers are refused, reads still
    /// answer while running jobs finish.
    pub fn set_stopping(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
    }

    /// Every route.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics_text))
            .route("/api/v1/compaction/status", get(status))
            .route("/api/v1/compaction/stats", get(stats))
            .route("/api/v1/compaction/candidates", get(candidates))
            .route("/api/v1/compaction/jobs", get(jobs))
            .route("/api/v1/compaction/history", get(history))
            .route("/api/v1/compaction/trigger", post(trigger))
            .route("/api/v1/compaction/partitions/{database}/{measurement}", get(partitions))
            .route("/api/v1/files", get(live_files))
            .route("/api/v1/cluster", get(cluster_status))
            .route("/api/v1/cluster/failover", post(cluster_failover))
            .route("/api/v1/plugins", get(plugins))
            .route("/api/v1/plugins/reload", post(reload))
            .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint".into()) })
            .method_not_allowed_fallback(|| async { error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this endpoint".into()) })
            .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
            .layer(axum::middleware::from_fn_with_state(self.clone(), token_for_reads))
            .layer(axum::middleware::map_response(json_errors))
            .with_state(self.clone())
    }

    /// Serves on `listener` until `shutdown` resolves; keeps the debt gauges
    /// fresh meanwhile.
    ///
    /// A client must not be able to take the engine's file descriptors or
    /// hold connections forever: at most [`MAX_CONNECTIONS`] are open (more
    /// are closed at once), and a request's headers must arrive within
    /// [`HEADER_TIMEOUT`].
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        use hyper_util::rt::{TokioIo, TokioTimer};
        let refresher = tokio::spawn(self.clone().refresh_debt());
        let router = self.router();
        let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of descriptors, typically: back off, do not spin.
                        tracing::warn!(error = %e, "the API cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let Ok(permit) = connections.clone().try_acquire_owned() else {
                drop(stream);
                continue;
            };
            let service = hyper_util::service::TowerToHyperService::new(router.clone());
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                let _ = connection.await;
                drop(permit);
            });
        }
        refresher.abort();
        let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
        Ok(())
    }

    /// Recomputes debt now, after each cycle, and every [`DEBT_INTERVAL`].
    async fn refresh_debt(self) {
        loop {
            match debt::compute(&self.inner.manager).await {
                Ok(debt) => *self.inner.debt.write().unwrap_or_else(|e| e.into_inner()) = Some(debt),
                Err(e) => tracing::warn!(error = %e, "cannot compute compaction debt"),
            }
            tokio::select! {
                () = self.inner.debt_wanted.notified() => {}
                () = tokio::time::sleep(DEBT_INTERVAL) => {}
            }
        }
    }

    fn manager(&self) -> &Manager {
        &self.inner.manager
    }
}

/// Errors axum answers itself (a body too large, a path that is not
/// UTF-8, a missing parameter) come as text: make them JSON like ours.
async fn json_errors(response: Response) -> Response {
    let is_json =
        response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("application/json"));
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let text = axum::body::to_bytes(response.into_body(), 64 * 1024).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_owned();
    let message = if text.is_empty() { status.canonical_reason().unwrap_or("error").to_owned() } else { text };
    ApiError::new(status, message).into_response()
}

/// A JSON error answer: `{"error": message}`, or a body of its own.
struct ApiError {
    status: StatusCode,
    body: Value,
}

impl ApiError {
    fn new(status: StatusCode, message: String) -> Self {
        Self { status, body: json!({ "error": message }) }
    }

    fn bad_request(message: String) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body)).into_response()
    }
}

/// What a handler answers.
type Answer = Result<Response, ApiError>;

/// A JSON error.
fn error(status: StatusCode, message: String) -> Response {
    ApiError::new(status, message).into_response()
}

fn ok(value: Value) -> Response {
    axum::Json(value).into_response()
}

/// Lets a mutating request through, or answers it.
fn authorize(api: &Api, headers: &HeaderMap) -> Result<(), ApiError> {
    let refuse = |status: StatusCode, message: &str| ApiError { status, body: json!({ "success": false, "error": message }) };
    let Some(expected) = &api.inner.token else {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "mutating endpoints are disabled: no API token is configured ([api] token or COMPACTOR_API_TOKEN)",
        ));
    };
    // The scheme is case-insensitive (RFC 7235).
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token);
    match presented {
        None => Err(refuse(StatusCode::UNAUTHORIZED, "Authentication required")),
        Some(token) if constant_time_eq(token.trim().as_bytes(), expected.as_bytes()) => Ok(()),
        Some(_) => Err(refuse(StatusCode::UNAUTHORIZED, "Invalid token")),
    }
}

/// With `[api] auth = "all"`, every endpoint asks for the token but the
/// probes (`/healthz`, `/readyz`) and, with `open_metrics`, `/metrics`: the
/// lake's names, plans and job history are not for whoever reaches the port.
async fn token_for_reads(State(api): State<Api>, request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let manager = api.manager();
    if let Some(settings) = &manager.config().settings().api
        && settings.auth == compactor_engine::config::ApiAuth::All
    {
        let path = request.uri().path();
        let open = matches!(path, "/healthz" | "/readyz") || (path == "/metrics" && settings.open_metrics);
        if !open && let Err(refused) = authorize(&api, request.headers()) {
            return refused.into_response();
        }
    }
    next.run(request).await
}

/// Compares without an early exit, so timing does not reveal a prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn healthz() -> Response {
    ok(json!({ "status": "ok" }))
}

async fn readyz(State(api): State<Api>) -> Response {
    if api.inner.stopping.load(Ordering::SeqCst) {
        let body = json!({ "ready": false, "error": "stopping: the running jobs finish, nothing new starts" });
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    }
    if api.inner.ready.load(Ordering::SeqCst) {
        ok(json!({ "ready": true }))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({ "ready": false, "error": "starting: start-up recovery has not finished" })))
            .into_response()
    }
}

async fn metrics_text(State(api): State<Api>) -> Response {
    let debt = api.inner.debt.read().unwrap_or_else(|e| e.into_inner()).clone();
    let text = api.inner.metrics.render(api.manager(), debt.as_ref());
    ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response()
}

async fn status(State(api): State<Api>) -> Response {
    let manager = api.manager();
    let stats = manager.stats();
    let scheduling = api.inner.scheduling.read().unwrap_or_else(|e| e.into_inner()).clone();
    let mut schedulers = serde_json::Map::new();
    for registered in manager.config().settings().tiers.iter().filter(|t| t.config.enabled) {
        let tier = &registered.config;
        let mut status = json!({
            "enabled": true,
            "running": scheduling.running,
            "schedule": tier.effective_schedule(),
        });
        with_tenant(&mut status, registered.id.tenant.as_deref());
        if scheduling.running
            && let Some(next) = registered.schedule.upcoming(Utc).next()
        {
            status["next_run"] = json!(next.to_rfc3339());
        }
        if let GateDecision::Allowed { .. } | GateDecision::Denied { .. } | GateDecision::Failed { .. } | GateDecision::CutOff { .. } =
            &scheduling.gate
        {
            status["role_gated"] = json!(!scheduling.gate.allows());
            status["gate_role"] = json!(manager.config().cluster.role);
        }
        schedulers.insert(registered.id.key(), status);
    }
    ok(json!({
        "manager": {
            "active_jobs": manager.active_jobs().len(),
            "total_completed": stats.total_jobs_completed,
            "total_failed": stats.total_jobs_failed,
            "cycle_running": manager.is_cycle_running(),
            "current_cycle_id": manager.current_cycle_id(),
            // Each tenant's tiers run in cycles of their own (null: the top-level tiers).
            "running_tenants": manager.running_tenants(),
            "engine_id": manager.engine_id(),
        },
        "schedulers": schedulers,
    }))
}

async fn stats(State(api): State<Api>) -> Response {
    let manager = api.manager();
    let stats = manager.stats();
    let recent = manager.recent_jobs();
    let mut body = json!({
        "total_jobs_completed": stats.total_jobs_completed,
        "total_jobs_failed": stats.total_jobs_failed,
        "total_jobs_skipped": stats.total_jobs_skipped,
        "total_files_compacted": stats.total_files_compacted,
        "total_bytes_saved": stats.total_bytes_saved,
        "total_bytes_saved_mb": stats.total_bytes_saved as f64 / 1024.0 / 1024.0,
        // Arc's key, spelled as Arc spells it.
        "total_manifests_recover": stats.total_manifests_recovered,
        "total_manifests_quarantined": stats.total_manifests_quarantined,
        "total_cycles": stats.total_cycles,
        "cycle_running": manager.is_cycle_running(),
        "current_cycle_id": manager.current_cycle_id(),
        "recent_jobs": recent,
    });
    let tiers: Vec<Value> = manager
        .config()
        .settings()
        .tiers
        .iter()
        .map(|registered| {
            let tier = &registered.config;
            let jobs = recent.iter().filter(|j| j.tier_id() == registered.id);
            let mut entry = json!({
                "name": tier.name,
                "enabled": tier.enabled,
                "plugin": tier.plugin,
                "schedule": tier.effective_schedule(),
                "recent_jobs": jobs.count(),
            });
            with_tenant(&mut entry, registered.id.tenant.as_deref());
            entry
        })
        .collect();
    if !tiers.is_empty() {
        body["tiers"] = Value::Array(tiers);
    }
    ok(body)
}

/// Adds `tenant` to a tier's or a candidate's entry when it has one (a
/// top-level tier's entries stay as Arc's).
fn with_tenant(entry: &mut Value, tenant: Option<&str>) {
    if let Some(tenant) = tenant {
        entry["tenant"] = json!(tenant);
    }
}

async fn candidates(State(api): State<Api>) -> Response {
    // Nobody waits once the client is gone: planning stops at the next partition.
    let cancel = CancelOnDrop::default();
    let options = CycleOptions { planning_deadline: Some(TENANT_PLANNING_DEADLINE), cancel: Some(cancel.0.clone()), ..Default::default() };
    let manager = api.manager();
    // A bounded number plan at once; a request that cannot get a turn soon
    // is told to come back rather than left to time out.
    let Ok(Ok(_turn)) = tokio::time::timeout(PLANNING_VIEW_WAIT, api.inner.planning_views.acquire()).await else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "other planning views are being computed; retry in a few seconds".into());
    };
    let planned = tokio::time::timeout(CANDIDATES_DEADLINE, manager.plan(&options)).await;
    let plan = match planned {
        Ok(Ok(plan)) => plan,
        Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("Failed to find candidates: {e}")),
        Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "Failed to find candidates: planning took longer than 30 s".into()),
    };
    // One candidate per tier and partition, as Arc lists them (before batching).
    let mut grouped: BTreeMap<(String, String), Value> = BTreeMap::new();
    for batch in &plan.batches {
        let c = &batch.candidate;
        let entry = grouped.entry((batch.tier_key(), c.partition_path.clone())).or_insert_with(|| {
            let mut entry = json!({ "database": c.database, "measurement": c.measurement, "partition_path": c.partition_path, "file_count": 0, "tier": c.tier });
            with_tenant(&mut entry, batch.tenant.as_deref());
            entry
        });
        entry["file_count"] = json!(entry["file_count"].as_u64().unwrap_or(0) + c.files.len() as u64);
    }
    let candidates: Vec<Value> = grouped.into_values().collect();
    let mut body = json!({ "count": candidates.len(), "candidates": candidates });
    // The tiers whose planning ran out of time answer in part; say whose.
    let tiers = manager.tiers();
    let timed_out: BTreeSet<Option<String>> = plan
        .tiers
        .iter()
        .filter(|t| t.interrupted)
        .filter_map(|t| tiers.iter().find(|p| p.key() == t.tier))
        .map(|t| t.tenant.clone())
        .collect();
    if !timed_out.is_empty() {
        // null: the top-level tiers.
        body["timed_out_tenants"] = json!(timed_out);
        body["partial"] = json!(true);
    }
    ok(body)
}

/// Sets its flag when dropped: a request handler's future is dropped when
/// its client goes away.
#[derive(Default)]
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

async fn jobs(State(api): State<Api>) -> Response {
    let active = api.manager().active_jobs();
    ok(json!({ "active_jobs": active.len(), "jobs": active }))
}

async fn history(State(api): State<Api>, Query(query): Query<HashMap<String, String>>) -> Response {
    // Arc: a missing, non-integer or non-positive limit means 10, and no
    // more than 10 are returned.
    let limit = query.get("limit").and_then(|l| l.trim().parse::<usize>().ok()).filter(|l| *l >= 1).unwrap_or(HISTORY_MAX).min(HISTORY_MAX);
    let manager = api.manager();
    match manager.history().recent(limit).await {
        Ok(compactor_engine::Recent { records, unreadable, kept }) => {
            for entry in &unreadable {
                tracing::warn!(key = %entry.key, error = %entry.error, "unreadable history entry");
            }
            // Arc reports its in-memory count of completed jobs; after a restart
            // that would be 0 beside a history that survived: report the
            // history's size when it is larger.
            ok(json!({ "total_jobs": (kept as u64).max(manager.stats().total_jobs_completed), "recent_jobs": records }))
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot read the job history: {e}")),
    }
}

/// Arc's rule for database names.
fn valid_database(name: &str) -> bool {
    let mut chars = name.chars();
    (1..=64).contains(&name.len())
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn parse_bool(field: &str, value: &str) -> Result<bool, ApiError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(ApiError::bad_request(format!("invalid {field}: {value:?} (expected true or false, 1 or 0, yes or no)"))),
    }
}

/// What a trigger asks for, checked.
#[derive(Debug, Default)]
struct TriggerRequest {
    tiers: Vec<String>,
    database: Option<String>,
    force: bool,
}

const INVALID_DATABASE: &str =
    "Invalid database name: must start with a letter and contain only alphanumeric characters, underscores, or hyphens (max 64 characters)";

impl TriggerRequest {
    /// From the query string (Arc's form) or a JSON body, not both.
    fn parse(query: &[(String, String)], body: &Bytes) -> Result<Self, ApiError> {
        let has_body = body.iter().any(|b| !b.is_ascii_whitespace());
        if has_body && !query.is_empty() {
            return Err(ApiError::bad_request("give the parameters in the query string or in a JSON body, not both".into()));
        }
        let mut request = Self::default();
        let mut seen: Vec<&str> = Vec::new();
        if has_body {
            let UniqueKeys(object) = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e} (expected an object with tier, database, force)")))?;
            for (key, value) in &object {
                match (key.as_str(), value) {
                    ("tier", Value::String(list)) => request.tiers = split_tiers(list)?,
                    ("tier", Value::Array(items)) => {
                        let names: Option<Vec<&str>> = items.iter().map(Value::as_str).collect();
                        let names = names.ok_or_else(|| ApiError::bad_request("tier: expected a list of tier names".into()))?;
                        request.tiers = split_tiers(&names.join(","))?;
                    }
                    ("database", Value::String(name)) => request.database = Some(checked_database(name)?),
                    ("force", Value::Bool(force)) => request.force = *force,
                    ("force", Value::String(text)) => request.force = parse_bool("force", text)?,
                    ("tier" | "database" | "force", other) => {
                        return Err(ApiError::bad_request(format!(
                            "{key}: unexpected {other} (expected a string, or true/false for force)"
                        )));
                    }
                    _ => return Err(ApiError::bad_request(format!("unknown parameter {key:?} (expected tier, database, force)"))),
                }
            }
            return Ok(request);
        }
        for (key, value) in query {
            if seen.contains(&key.as_str()) {
                return Err(ApiError::bad_request(format!("{key} is given more than once")));
            }
            match key.as_str() {
                "tier" => request.tiers = split_tiers(value)?,
                "database" => request.database = Some(checked_database(value)?),
                "force" => request.force = parse_bool("force", value)?,
                _ => return Err(ApiError::bad_request(format!("unknown parameter {key:?} (expected tier, database, force)"))),
            }
            seen.push(key);
        }
        Ok(request)
    }
}

/// A JSON object whose keys are each given once: `serde_json` keeps the
/// last of two, so `{"tier":"daily","tier":"hourly"}` would silently run
/// another tier than the client may think it asked for.
struct UniqueKeys(Vec<(String, Value)>);

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = UniqueKeys;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<UniqueKeys, A::Error> {
                let mut entries: Vec<(String, Value)> = Vec::new();
                while let Some((key, value)) = map.next_entry::<String, Value>()? {
                    if entries.iter().any(|(k, _)| *k == key) {
                        return Err(serde::de::Error::custom(format!("{key:?} is given more than once")));
                    }
                    entries.push((key, value));
                }
                Ok(UniqueKeys(entries))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// `a,b` → its tier names, trimmed and without repeats; none is an error.
fn split_tiers(list: &str) -> Result<Vec<String>, ApiError> {
    let mut tiers: Vec<String> = Vec::new();
    for name in list.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        if !tiers.iter().any(|t| t == name) {
            tiers.push(name.to_owned());
        }
    }
    if tiers.is_empty() {
        return Err(ApiError::bad_request("tier: no tier named (omit tier for every enabled tier)".into()));
    }
    Ok(tiers)
}

fn checked_database(name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    if valid_database(name) { Ok(name.to_owned()) } else { Err(ApiError::bad_request(INVALID_DATABASE.into())) }
}

async fn trigger(State(api): State<Api>, Query(query): Query<Vec<(String, String)>>, request: axum::extract::Request) -> Answer {
    // The token first, then the body, within a deadline: a client that
    // never sends its body must not hold a connection.
    authorize(&api, request.headers())?;
    let body = tokio::time::timeout(HEADER_TIMEOUT, axum::body::to_bytes(request.into_body(), MAX_BODY_BYTES))
        .await
        .map_err(|_| ApiError::new(StatusCode::REQUEST_TIMEOUT, "the request body did not arrive in time".into()))?
        .map_err(|e| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("cannot read the request body: {e}")))?;
    let TriggerRequest { tiers: requested, database, force } = TriggerRequest::parse(&query, &body)?;
    if api.inner.stopping.load(Ordering::SeqCst) {
        return Err(shutting_down());
    }
    let manager = api.manager();
    manager.config().check_tier_names(&requested).map_err(|e| match e {
        ConfigError::UnknownTier { name, configured } => {
            ApiError::bad_request(format!("unknown tier {name:?} in tier (configured: {configured})"))
        }
        other => ApiError::bad_request(other.to_string()),
    })?;
    let loaded = manager.tiers();
    for name in &requested {
        let named: Vec<_> = loaded.iter().filter(|t| t.is_selected_by(std::slice::from_ref(name), false)).collect();
        if !named.iter().any(|t| t.enabled) {
            return Err(ApiError::bad_request(format!("tier {name:?} is disabled in the config")));
        }
        if let Some(tier) = named.iter().find(|t| t.enabled && t.policy.is_err()) {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("tier {:?} has no loaded plugin (see /api/v1/plugins); fix it and reload", tier.key()),
            ));
        }
    }
    let deadline = manager.config().settings().api.as_ref().map(|api| std::time::Instant::now() + api.trigger_timeout);
    let options = CycleOptions { now: None, tiers: requested.clone(), database: database.clone(), force, deadline, ..Default::default() };
    let selected: Vec<&PlannedTier> = loaded.iter().filter(|t| options.selects(t)).collect();
    if let Some(database) = &database {
        check_database_is_compacted_by(manager, database, &selected)?;
    }
    check_some_tier_may_run(manager, &selected)?;
    let ticket = manager.begin_cycle(&options).map_err(|e| match e {
        CycleError::Stopping => shutting_down(),
        _ => ApiError {
            status: StatusCode::CONFLICT,
            body: json!({
                "error": "Compaction cycle already running",
                "message": "A compaction cycle of the selected tenants is already in progress. Please wait for it to complete.",
                "cycle_id": manager.current_cycle_id(),
                "is_running": true,
            }),
        },
    })?;
    // A stop requested while the cycle began: it would not run.
    if manager.stop_requested() || api.inner.stopping.load(Ordering::SeqCst) {
        return Err(shutting_down());
    }
    let cycle_id = ticket.cycle_id;
    let busy = ticket.busy.clone();
    let tiers: Vec<String> = if requested.is_empty() {
        manager.config().settings().tiers.iter().filter(|t| t.config.enabled && ticket.runs(&t.id.tenant)).map(|t| t.id.key()).collect()
    } else {
        requested
    };
    let running = api.inner.manager.clone();
    tokio::spawn(async move {
        let outcome = running.run_begun_cycle(ticket, options).await;
        compactor_engine::scheduler::log_cycle_outcome("triggered", &outcome);
    });
    let mut body = json!({
        "message": "Compaction triggered",
        "status": "running",
        "tiers": if tiers.is_empty() { Value::Null } else { json!(tiers) },
        "cycle_id": cycle_id,
        "force": force,
    });
    if !busy.is_empty() {
        // Tenants whose own cycle still runs are left to it.
        body["busy_tenants"] = json!(busy.iter().map(|t| t.clone().unwrap_or_default()).collect::<Vec<_>>());
    }
    if let Some(db) = database {
        body["database"] = json!(db);
    }
    Ok(ok(body))
}

/// A time bound: RFC 3339, `YYYY-MM-DDTHH:MM:SS` (UTC), or a date.
fn parse_time(field: &str, value: &str) -> Result<DateTime<Utc>, ApiError> {
    let value = value.trim();
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| NaiveDateTime::parse_from_str(value, "%Y-%m-%dT%H:%M:%S").map(|t| t.and_utc()))
        .or_else(|_| NaiveDate::parse_from_str(value, "%Y-%m-%d").map(|d| d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc()))
        .map_err(|_| ApiError::bad_request(format!("invalid {field}: {value:?} (expected RFC 3339, e.g. 2026-04-11T14:00:00Z, or a date)")))
}

/// A database or measurement name that is one key segment.
fn valid_segment(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.starts_with('.') && name.len() <= 255
}

async fn partitions(
    State(api): State<Api>,
    Path((database, measurement)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Answer {
    for (field, value) in [("database", &database), ("measurement", &measurement)] {
        if !valid_segment(value) {
            return Err(ApiError::bad_request(format!("invalid {field}: {value:?}")));
        }
    }
    if let Some(unknown) = query.keys().find(|k| !["from", "to", "now"].contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!("unknown parameter {unknown:?} (expected from, to, now)")));
    }
    let bound = |field: &str| query.get(field).filter(|v| !v.trim().is_empty()).map(|v| parse_time(field, v)).transpose();
    let (from, to, now) = (bound("from")?, bound("to")?, bound("now")?.unwrap_or_else(Utc::now));
    if let (Some(from), Some(to)) = (from, to)
        && from >= to
    {
        return Err(ApiError::bad_request(format!("invalid to: {} is not after from ({})", to.to_rfc3339(), from.to_rfc3339())));
    }
    let computed = tokio::time::timeout(OUTLOOK_DEADLINE, async {
        let _turn = api.inner.planning_views.acquire().await;
        api.manager().partition_outlook(&database, &measurement, from, to, now).await
    })
    .await
    .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the outlook took longer than 30 s; narrow it with from and to".into()))?;
    let (described, truncated) =
        computed.map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot list {database}/{measurement}/: {e}")))?;
    if described.is_empty() && from.is_none() && to.is_none() {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no Parquet files under {database}/{measurement}/")));
    }
    Ok(ok(json!({
        "database": database,
        "measurement": measurement,
        "now": now.to_rfc3339(),
        "count": described.len(),
        "truncated": truncated,        "partitions": described,
    })))
}

fn plugin_list(api: &Api) -> Vec<Value> {
    let manager = api.manager();
    let health = manager.tier_health();
    let now = Utc::now();
    manager
        .tiers()
        .iter()
        .map(|tier| {
            let mut entry = plugin_entry(manager, tier);
            entry["tier_info"] = tier_info(api, tier);
            let health = health.get(&tier.key()).cloned().unwrap_or_default();
            entry["suspended"] = json!(health.is_suspended(now));
            entry["suspended_until"] = json!(health.suspended_until.map(|t| t.to_rfc3339()));
            entry["consecutive_failing_cycles"] = json!(health.consecutive_failures);
            entry["last_error"] = json!(health.last_error);
            entry
        })
        .collect()
}

/// The tier's description from its configured policy, asked once per build.
fn tier_info(api: &Api, tier: &compactor_engine::PlannedTier) -> Value {
    let Ok(policy) = &tier.policy else { return Value::Null };
    let key = (tier.key(), policy.content_hash().to_owned());
    if let Some(info) = api.inner.tier_info.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return info.clone();
    }
    let info = match policy.describe(&tier.config_json, tier.limits) {
        Ok(Some(description)) => serde_json::to_value(description).unwrap_or(Value::Null),
        Ok(None) => Value::Null,
        Err(e) => json!({ "error": e.to_string() }),
    };
    api.inner.tier_info.lock().unwrap_or_else(|e| e.into_inner()).insert(key, info.clone());
    info
}

fn plugin_entry(manager: &Manager, tier: &compactor_engine::PlannedTier) -> Value {
    match &tier.policy {
        Ok(policy) => {
            let counts = policy.call_counts();
            json!({
                "tier": tier.key(),
                "tenant": tier.tenant,
                "name": policy.name(),
                "enabled": tier.enabled,
                "wit_version": policy.wit_version(),
                "content_hash": policy.content_hash(),
                "load_error": Value::Null,
                // The build on disk failed to load at the last reload: this one still runs.
                "reload_error": manager.tier_reload_error(&tier.key()),
                "limits": {
                    "fuel_per_call": tier.limits.fuel_per_call,
                    "memory_bytes": tier.limits.memory_bytes,
                    "call_timeout_ms": tier.limits.call_timeout.as_millis() as u64,
                },
                "calls": counts.calls,
                "fuel_used": counts.fuel_used,
                "traps": counts.traps,
                "timeouts": counts.timeouts,
                "out_of_fuel": counts.out_of_fuel,
                "out_of_memory": counts.out_of_memory,
            })
        }
        Err(load_error) => json!({
            "tier": tier.key(),
            "tenant": tier.tenant,
            "name": manager.config().tier(&tier.id()).map(|t| t.config.plugin.clone()),
            "enabled": tier.enabled,
            "wit_version": Value::Null,
            "content_hash": Value::Null,
            "load_error": load_error,
            "calls": 0, "fuel_used": 0, "traps": 0, "timeouts": 0, "out_of_fuel": 0, "out_of_memory": 0,
        }),
    }
}

async fn plugins(State(api): State<Api>) -> Response {
    ok(json!({
        "host_wit_version": compactor_runtime::host_wit_version().to_string(),
        "accepted_wit_versions": compactor_runtime::accepted_wit_versions(),
        // A replacement on disk that failed to load: the builds listed still run.
        "reload_error": api.manager().reload_error(),
        "plugins": plugin_list(&api),
    }))
}

/// `GET /api/v1/files?partition=P`: the live file set of a partition (as
/// `compactor files`): an array of storage keys.
async fn live_files(State(api): State<Api>, Query(query): Query<HashMap<String, String>>) -> Answer {
    if let Some(unknown) = query.keys().find(|k| k.as_str() != "partition") {
        return Err(ApiError::bad_request(format!("unknown parameter {unknown:?} (expected: partition)")));
    }
    let Some(partition) = query.get("partition") else {
        return Err(ApiError::bad_request("partition is required: ?partition=DATABASE/MEASUREMENT/YYYY/MM/DD[/HH]".to_owned()));
    };
    match api.manager().live_files(partition).await {
        Ok(files) => Ok(axum::Json(files).into_response()),
        Err(e) if e.to_string().starts_with("invalid partition") => Err(ApiError::bad_request(e.to_string())),
        Err(e) => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}"))),
    }
}

/// `GET /api/v1/cluster`: the members, the compactor lease holder, the
/// failover state and the nodes that compact (as `compactor cluster
/// status`); 404 in standalone mode.
async fn cluster_status(State(api): State<Api>) -> Response {
    match api.manager().cluster() {
        Some(cluster) => axum::Json(cluster.status()).into_response(),
        None => error(StatusCode::NOT_FOUND, "cluster mode is off ([cluster] enabled = false)".to_owned()),
    }
}

/// `POST /api/v1/cluster/failover`: moves the compactor lease to another
/// node (Arc's manual failover). 409 while a failover is in progress or
/// when no node holds the lease (Arc's errors) or none can take it.
async fn cluster_failover(State(api): State<Api>, headers: HeaderMap) -> Answer {
    authorize(&api, &headers)?;
    let Some(cluster) = api.manager().cluster().cloned() else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "cluster mode is off ([cluster] enabled = false)".to_owned()));
    };
    match cluster.request_failover().await {
        Ok(lease) => Ok(axum::Json(json!({ "failed_over": true, "compactor_lease": lease })).into_response()),
        Err(e) => Err(ApiError::new(StatusCode::CONFLICT, e.to_string())),
    }
}

/// `POST /api/v1/plugins/reload[?tenant=NAME]`: reloads every tier's
/// component, or one tenant's; without a tenant, the config file is read
/// again first, and an invalid one is a 422 that changes nothing. 200 when every reloaded tier installed its
/// build; 422 when some failed (they keep their last good build; the others
/// are installed all the same). Either way the answer lists what was
/// installed, by hash.
async fn reload(State(api): State<Api>, headers: HeaderMap, Query(query): Query<HashMap<String, String>>) -> Answer {
    authorize(&api, &headers)?;
    if let Some(unknown) = query.keys().find(|k| k.as_str() != "tenant") {
        return Err(ApiError::bad_request(format!("unknown parameter {unknown:?} (expected: tenant)")));
    }
    let tenant = query.get("tenant").cloned();
    if let Some(name) = &tenant
        && !api.manager().config().tenants.iter().any(|t| &t.name == name)
    {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no tenant {name:?} in the config")));
    }
    if api.inner.stopping.load(Ordering::SeqCst) || api.manager().stop_requested() {
        return Err(shutting_down());
    }
    let outcome = api.inner.manager.reload_plugins_in_background("POST /api/v1/plugins/reload", tenant.clone()).await;
    if let Some(Err(error)) = &outcome.config {
        return Err(ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            body: json!({
                "reloaded": false,
                "error": format!("the config file is invalid; the running config is kept: {error}"),
                "config": { "reloaded": false, "error": error },
            }),
        });
    }
    let installed: Vec<Value> =
        outcome.installed.iter().map(|b| json!({ "tier": b.tier, "name": b.name, "content_hash": b.content_hash })).collect();
    let failed: Vec<Value> = outcome.failed.iter().map(|(tier, error)| json!({ "tier": tier, "error": error })).collect();
    let mut body = json!({
        "reloaded": outcome.failed.is_empty(),
        "installed": installed,
        "failed": failed,
        "plugins": plugin_list(&api),
    });
    with_tenant(&mut body, tenant.as_deref());
    if let Some(Ok(config)) = &outcome.config {
        body["config"] = json!({ "reloaded": true, "restart_needed": config.restart_needed });
    }
    if outcome.failed.is_empty() {
        return Ok(ok(body));
    }
    let tiers: Vec<&str> = outcome.failed.iter().map(|(tier, _)| tier.as_str()).collect();
    body["error"] = json!(format!(
        "the new build of {} failed to load; {} their last good build (see failed)",
        tiers.join(", "),
        if tiers.len() == 1 { "it keeps" } else { "they keep" }
    ));
    Err(ApiError { status: StatusCode::UNPROCESSABLE_ENTITY, body })
}

fn shutting_down() -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the engine is shutting down".into())
}

/// Refuses a trigger whose selected tiers are all suspended: it would do
/// nothing.
fn check_some_tier_may_run(manager: &Manager, selected: &[&PlannedTier]) -> Result<(), ApiError> {
    let (now, health) = (Utc::now(), manager.tier_health());
    let suspended = |key: &str| health.get(key).is_some_and(|h| h.is_suspended(now));
    if selected.is_empty() || !selected.iter().all(|t| suspended(&t.key())) {
        return Ok(());
    }
    let notes: Vec<String> =
        selected.iter().filter_map(|t| health.get(&t.key()).map(|h| format!("{}: {}", t.key(), h.suspension_note()))).collect();
    Err(ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        format!("every selected tier is suspended, so the trigger would do nothing ({})", notes.join("; ")),
    ))
}

/// Refuses a trigger for `database` that no selected tier would compact:
/// the database belongs to a tenant whose tiers were not asked for (or to
/// no tenant, and only tenants' tiers were).
fn check_database_is_compacted_by(manager: &Manager, database: &str, selected: &[&PlannedTier]) -> Result<(), ApiError> {
    let owner = manager.config().tenant_of(database).map(|t| t.name.clone());
    if selected.iter().any(|t| t.tenant == owner) {
        return Ok(());
    }
    let whose = match &owner {
        Some(tenant) => format!("belongs to tenant {tenant:?}"),
        None => "belongs to no tenant (the top-level tiers compact it)".to_owned(),
    };
    let asked: Vec<String> = selected.iter().map(|t| t.key()).collect();
    Err(ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        format!(
            "database {database:?} {whose}; the selected tiers ({}) never compact it, so the trigger would do nothing",
            asked.join(", ")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_follow_arc() {
        for good in ["a", "db_1", "my-db", &"a".repeat(64)] {
            assert!(valid_database(good), "{good}");
        }
        for bad in ["", "1db", "a b", "_x", &"a".repeat(65), "db/x", "dé"] {
            assert!(!valid_database(bad), "{bad}");
        }
    }

    /// Issue 21 §4j: the last of two keys won.
    #[test]
    fn a_trigger_body_naming_a_key_twice_is_refused_naming_it() {
        let body = Bytes::from_static(br#"{"tier": "daily", "tier": "hourly"}"#);
        let Err(error) = TriggerRequest::parse(&[], &body) else { panic!("accepted") };
        assert_eq!(error.status, StatusCode::BAD_REQUEST);
        let message = error.body.to_string();
        assert!(message.contains(r#"\"tier\" is given more than once"#), "{message}");
        let Ok(once) = TriggerRequest::parse(&[], &Bytes::from_static(br#"{"tier": "daily", "force": true}"#)) else { panic!() };
        assert_eq!((once.tiers, once.force), (vec!["daily".to_owned()], true));
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secre", b"secret"));
        assert!(!constant_time_eq(b"secreT", b"secret"));
    }
}
