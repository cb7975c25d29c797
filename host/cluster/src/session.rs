//! A node's membership in the cluster: its etcd lease kept alive, its member
//! key, a view of the others and of the compactor lease kept current by a
//! watch, and — on the node etcd's election makes leader — the lease
//! manager.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, WatchOptions};

use crate::lease::{CompactorLease, Decision, FailoverError, LeaseManager, LeaseManagerStats};
use crate::{ClusterError, ClusterStatus, LeaseFacts, Member, Mode, Settings, Share};

/// The keys under the prefix (docs/architecture.md): the cluster's state
/// under `state/`, read whole in one request, apart from the file registry.
struct Keys {
    prefix: String,
}

impl Keys {
    fn state(&self) -> String {
        format!("{}/state/", self.prefix)
    }
    fn member(&self, node_id: &str) -> String {
        format!("{}/state/members/{node_id}", self.prefix)
    }
    fn election(&self) -> String {
        format!("{}/state/election", self.prefix)
    }
    fn lease(&self) -> String {
        format!("{}/state/compactor-lease", self.prefix)
    }
    fn manager(&self) -> String {
        format!("{}/state/lease-manager", self.prefix)
    }
    fn failover_request(&self) -> String {
        format!("{}/state/failover-request", self.prefix)
    }
}

/// What this node knows, kept current by the background tasks.
#[derive(Debug, Default)]
struct View {
    /// The session's etcd lease.
    lease_id: i64,
    /// Until when the session is surely alive: the last renewal plus the TTL.
    alive_until: Option<Instant>,
    last_error: String,
    members: Vec<Member>,
    compactor_lease: Option<CompactorLease>,
    compactor_lease_raw: Option<Vec<u8>>,
    manager: Option<LeaseManagerStats>,
    failover_requested: bool,
    leader: Option<String>,
    me: Member,
    /// The lease facts the gate last decided on.
    gate_facts: Option<LeaseFacts>,
    /// The etcd lease (session) the gate decided under.
    gate_session: Option<i64>,
}

/// A node in the cluster. Dropping it stops its tasks; [`Cluster::leave`]
/// also hands back the compactor lease and removes the member key at once.
pub struct Cluster {
    settings: Settings,
    client: Client,
    keys: Arc<Keys>,
    view: Arc<Mutex<View>>,
    changed: Arc<tokio::sync::Notify>,
    /// Wakes the lead task after a change (a permit is kept if it is busy,
    /// so that no change waits for the next periodic check).
    wake_leader: Arc<tokio::sync::Notify>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cluster({} at {})", self.settings.node_id, self.settings.key_prefix)
    }
}

fn etcd_error(e: etcd_client::Error) -> ClusterError {
    ClusterError::Etcd(e.to_string())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs `request` with the settings' timeout.
pub(crate) async fn timed<T>(timeout: Duration, request: impl Future<Output = Result<T, etcd_client::Error>>) -> Result<T, ClusterError> {
    match tokio::time::timeout(timeout, request).await {
        Ok(result) => result.map_err(etcd_error),
        Err(_) => Err(ClusterError::Etcd(format!("no answer within {timeout:?}"))),
    }
}

impl Cluster {
    /// Connects, registers this node and starts its tasks. Fails when etcd
    /// cannot be reached, or when another live process uses this `node_id`
    /// (after waiting one `session_ttl` for a dead one's key to expire).
    pub async fn join(settings: Settings) -> Result<Arc<Self>, ClusterError> {
        let cluster = Self::connect(settings).await?;
        cluster.register().await.map_err(|e| match e {
            ClusterError::Etcd(message) => cluster.unreachable(message),
            other => other,
        })?;
        cluster.refresh().await?;
        let tasks =
            vec![tokio::spawn(cluster.clone().keep_alive()), tokio::spawn(cluster.clone().watch()), tokio::spawn(cluster.clone().lead())];
        *lock(&cluster.tasks) = tasks;
        Ok(cluster)
    }

    /// Reads the cluster's state without joining it (`compactor cluster
    /// status`): no member key, no campaign, so looking never takes the
    /// compactor lease.
    pub async fn observe(settings: Settings) -> Result<ClusterStatus, ClusterError> {
        let cluster = Self::connect(settings).await?;
        cluster.refresh().await.map_err(|e| cluster.unreachable(e.to_string()))?;
        let mut status = cluster.status();
        status.up = true;
        status.error = None;
        Ok(status)
    }

    /// A connection that only reads (the cluster file manifest for
    /// `compactor files`): no member key, no campaign.
    pub async fn reader(settings: Settings) -> Result<Arc<Self>, ClusterError> {
        Self::connect(settings).await
    }

    fn unreachable(&self, message: String) -> ClusterError {
        ClusterError::Unreachable { endpoints: self.settings.endpoints.join(","), message }
    }

    async fn connect(settings: Settings) -> Result<Arc<Self>, ClusterError> {
        let timeout = settings.request_timeout();
        let mut options = ConnectOptions::new().with_connect_timeout(timeout).with_timeout(timeout);
        if let Some((user, password)) = &settings.credentials {
            options = options.with_user(user.clone(), password.clone());
        }
        if let Some(tls) = &settings.tls {
            options = options.with_tls(tls_options(tls)?);
        }
        let unreachable = |message: String| ClusterError::Unreachable { endpoints: settings.endpoints.join(","), message };
        let client = match tokio::time::timeout(timeout * 2, Client::connect(&settings.endpoints, Some(options))).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Err(_) => return Err(unreachable(format!("no connection within {:?}", timeout * 2))),
        };
        let keys = Arc::new(Keys { prefix: settings.key_prefix.trim_end_matches('/').to_owned() });
        let me = Member {
            node_id: settings.node_id.clone(),
            role: settings.role.clone(),
            labels: settings.labels.clone(),
            version: settings.version.clone(),
            engine_id: settings.engine_id.clone(),
            joined_at: Utc::now(),
            healthy: true,
            // Until its gate answers: what its role says, so that nodes
            // joining together see each other's share at once.
            compacts: !matches!(settings.role.as_str(), "writer" | "reader"),
            session: format!("{:016x}", rand_u64()),
        };
        Ok(Arc::new(Self {
            settings,
            client,
            keys,
            view: Arc::new(Mutex::new(View { me, ..View::default() })),
            changed: Arc::new(tokio::sync::Notify::new()),
            wake_leader: Arc::new(tokio::sync::Notify::new()),
            tasks: Mutex::new(Vec::new()),
        }))
    }

    /// Grants a session lease and creates this node's member key under it,
    /// waiting up to one TTL for a previous process's key to expire.
    async fn register(&self) -> Result<(), ClusterError> {
        let timeout = self.settings.request_timeout();
        let mut client = self.client.clone();
        let ttl = self.settings.session_ttl.as_secs().max(1) as i64;
        let granted = timed(timeout, client.lease_grant(ttl, None)).await?;
        let key = self.keys.member(&self.settings.node_id);
        let deadline = Instant::now() + self.settings.session_ttl + Duration::from_secs(1);
        loop {
            let me = lock(&self.view).me.clone();
            let value = serde_json::to_vec(&me).map_err(|e| ClusterError::Etcd(e.to_string()))?;
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key.clone(), value, Some(PutOptions::new().with_lease(granted.id())))])
                .or_else([TxnOp::get(key.clone(), None)]);
            let answer = timed(timeout, client.txn(txn)).await?;
            if answer.succeeded() {
                let mut view = lock(&self.view);
                view.lease_id = granted.id();
                view.alive_until = Some(Instant::now() + self.settings.session_ttl);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = client.lease_revoke(granted.id()).await;
                let other = self.member(&key).await?.unwrap_or_default();
                return Err(ClusterError::DuplicateNode {
                    node_id: self.settings.node_id.clone(),
                    engine_id: other.engine_id,
                    joined_at: other.joined_at.to_rfc3339(),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn member(&self, key: &str) -> Result<Option<Member>, ClusterError> {
        let mut client = self.client.clone();
        let answer = timed(self.settings.request_timeout(), client.get(key, None)).await?;
        Ok(answer.kvs().first().and_then(|kv| serde_json::from_slice(kv.value()).ok()))
    }

    /// Renews the session every third of its TTL; registers again under a
    /// new lease when the old one expired (after a partition).
    async fn keep_alive(self: Arc<Self>) {
        let period = self.settings.session_ttl / 3;
        loop {
            let lease_id = lock(&self.view).lease_id;
            let renewed = async {
                let mut client = self.client.clone();
                let (mut keeper, mut stream) = timed(self.settings.request_timeout(), client.lease_keep_alive(lease_id)).await?;
                loop {
                    let sent = Instant::now();
                    timed(self.settings.request_timeout(), keeper.keep_alive()).await?;
                    match timed(self.settings.request_timeout(), stream.message()).await? {
                        Some(answer) if answer.ttl() > 0 => {
                            lock(&self.view).alive_until = Some(sent + self.settings.session_ttl);
                        }
                        _ => return Err(ClusterError::Etcd("the session lease expired".to_owned())),
                    }
                    tokio::time::sleep(period).await;
                }
            };
            let error: Result<(), ClusterError> = renewed.await;
            if let Err(e) = error {
                let expired = e.to_string().contains("expired");
                lock(&self.view).last_error = e.to_string();
                tracing::warn!(node = %self.settings.node_id, error = %e, "cluster: cannot renew the session");
                if expired || !self.alive() {
                    // The lease is gone (or will be): join again under a new one.
                    lock(&self.view).me.joined_at = Utc::now();
                    match self.register().await {
                        Ok(()) => {
                            tracing::info!(node = %self.settings.node_id, "cluster: joined again");
                            self.changed.notify_waiters();
                        }
                        Err(e) => lock(&self.view).last_error = e.to_string(),
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }

    /// Keeps the view current: a full read, then a watch of the prefix, read
    /// again on every change and at every check interval.
    async fn watch(self: Arc<Self>) {
        loop {
            let mut client = self.client.clone();
            let stream = client.watch(self.keys.state(), Some(WatchOptions::new().with_prefix())).await;
            let Ok(mut stream) = stream else {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            };
            loop {
                if let Err(e) = self.refresh().await {
                    lock(&self.view).last_error = e.to_string();
                }
                self.changed.notify_waiters();
                self.wake_leader.notify_one();
                match tokio::time::timeout(self.settings.timings.check_interval, stream.message()).await {
                    Ok(Ok(Some(_))) | Err(_) => continue,
                    Ok(Ok(None) | Err(_)) => break,
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Reads the cluster's state (members, the compactor lease, the
    /// manager's stats, the election, a pending failover request) in one
    /// request.
    async fn refresh(&self) -> Result<(), ClusterError> {
        let mut client = self.client.clone();
        let state = timed(self.settings.request_timeout(), client.get(self.keys.state(), Some(GetOptions::new().with_prefix()))).await?;
        let (members_prefix, election_prefix) = (self.keys.member(""), format!("{}/", self.keys.election()));
        let (lease_key, manager_key, request_key) = (self.keys.lease(), self.keys.manager(), self.keys.failover_request());
        let mut view = lock(&self.view);
        view.members.clear();
        view.compactor_lease_raw = None;
        view.manager = None;
        view.failover_requested = false;
        let mut leader: Option<(i64, String)> = None;
        for kv in state.kvs() {
            let key = String::from_utf8_lossy(kv.key());
            if key.starts_with(&members_prefix) {
                view.members.extend(serde_json::from_slice::<Member>(kv.value()).ok());
            } else if key.starts_with(&election_prefix) {
                // The election's leader is its oldest key.
                if leader.as_ref().is_none_or(|(revision, _)| kv.create_revision() < *revision) {
                    leader = Some((kv.create_revision(), String::from_utf8_lossy(kv.value()).into_owned()));
                }
            } else if key == lease_key {
                view.compactor_lease_raw = Some(kv.value().to_vec());
            } else if key == manager_key {
                view.manager = serde_json::from_slice(kv.value()).ok();
            } else if key == request_key {
                view.failover_requested = true;
            }
        }
        view.members.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        view.compactor_lease = view.compactor_lease_raw.as_deref().and_then(|raw| serde_json::from_slice(raw).ok());
        view.leader = leader.map(|(_, node)| node);
        Ok(())
    }

    /// Campaigns in etcd's election; as leader, runs Arc's lease manager
    /// until it loses the election key (its writes then fail).
    async fn lead(self: Arc<Self>) {
        loop {
            let lease_id = lock(&self.view).lease_id;
            let mut client = self.client.clone();
            // Blocks until this node leads (or the session's lease expires).
            let campaign = client.campaign(self.keys.election(), self.settings.node_id.clone(), lease_id).await;
            let Some(leader_key) = campaign.ok().and_then(|c| c.leader().cloned()) else {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            };
            tracing::info!(node = %self.settings.node_id, "cluster: this node leads the compactor lease manager");
            let still_leader = Compare::create_revision(leader_key.key().to_vec(), CompareOp::Equal, leader_key.rev());
            let mut manager = {
                let view = lock(&self.view);
                LeaseManager::resume(self.settings.timings, view.manager.as_ref(), view.compactor_lease.as_ref())
            };
            let mut next_check = Instant::now();
            loop {
                let periodic = Instant::now() >= next_check;
                if periodic {
                    next_check = Instant::now() + self.settings.timings.check_interval;
                }
                if self.settings.mode == Mode::Single && !self.manage(&mut manager, &still_leader, periodic).await {
                    break;
                }
                if lock(&self.view).lease_id != lease_id {
                    break;
                }
                let wait = next_check.saturating_duration_since(Instant::now());
                let _ = tokio::time::timeout(wait, self.wake_leader.notified()).await;
            }
            tracing::info!(node = %self.settings.node_id, "cluster: this node no longer leads");
        }
    }

    /// One turn of the lease manager; false when this node no longer leads.
    async fn manage(&self, manager: &mut LeaseManager, still_leader: &Compare, periodic: bool) -> bool {
        let (lease, raw, members, manual) = {
            let view = lock(&self.view);
            (view.compactor_lease.clone(), view.compactor_lease_raw.clone(), view.members.clone(), view.failover_requested)
        };
        let mut client = self.client.clone();
        let decision = if manual {
            match manager.manual_failover(lease.as_ref(), &members, Utc::now()) {
                Ok(lease) => Decision::Assign(lease),
                Err(e) => {
                    tracing::warn!(error = %e, "cluster: manual failover refused");
                    Decision::Keep
                }
            }
        } else if periodic || lease.is_none() {
            manager.check(lease.as_ref(), &members, Utc::now())
        } else {
            Decision::Keep
        };
        let mut then = Vec::new();
        if let Decision::Assign(new) = &decision {
            tracing::info!(holder = %new.holder, epoch = new.epoch, reason = %new.reason, "cluster: compactor lease assigned");
            then.push(TxnOp::put(self.keys.lease(), serde_json::to_vec(new).unwrap_or_default(), None));
        }
        if manual {
            then.push(TxnOp::delete(self.keys.failover_request(), None));
        }
        if !periodic && then.is_empty() {
            return true;
        }
        then.push(TxnOp::put(self.keys.manager(), serde_json::to_vec(&manager.stats()).unwrap_or_default(), None));
        // The lease is written only while this node still leads and the
        // lease is what this decision was based on.
        let lease_unchanged = match &raw {
            Some(raw) => Compare::value(self.keys.lease(), CompareOp::Equal, raw.clone()),
            None => Compare::create_revision(self.keys.lease(), CompareOp::Equal, 0),
        };
        let txn = Txn::new().when([still_leader.clone(), lease_unchanged]).and_then(then);
        match timed(self.settings.request_timeout(), client.txn(txn)).await {
            Ok(answer) if answer.succeeded() => true,
            Ok(_) => {
                // Either another leader, or the lease changed under us (a
                // hand-back): the next turn decides again.
                let leads = self.leads(still_leader).await;
                if leads && self.refresh().await.is_ok() {
                    self.wake_leader.notify_one();
                }
                leads
            }
            Err(e) => {
                tracing::warn!(error = %e, "cluster: cannot write the lease manager's decision");
                self.alive()
            }
        }
    }

    async fn leads(&self, still_leader: &Compare) -> bool {
        let mut client = self.client.clone();
        let txn = Txn::new().when([still_leader.clone()]);
        timed(self.settings.request_timeout(), client.txn(txn)).await.is_ok_and(|a| a.succeeded())
    }

    /// Whether the session is surely alive: renewed within its TTL.
    pub fn alive(&self) -> bool {
        lock(&self.view).alive_until.is_some_and(|until| Instant::now() < until)
    }

    /// Ok when this node may start work: its session is alive, and the
    /// compactor lease is as it was when the gate last decided (a lease that
    /// moved mid-cycle stops this node from starting more; the next cycle
    /// asks the gate again). Checked before every partition.
    pub fn may_start(&self) -> Result<(), ClusterError> {
        self.ensure_alive()?;
        let view = lock(&self.view);
        if view.gate_session.is_some_and(|session| session != view.lease_id) {
            return Err(ClusterError::SessionRenewed);
        }
        match view.gate_facts {
            Some(decided) if decided != self.facts(&view) => Err(ClusterError::LeaseMoved),
            _ => Ok(()),
        }
    }

    /// What the gate is told; an error when the node is cut off. The facts
    /// are remembered: [`Cluster::may_start`] holds the cycle to them.
    pub fn lease_facts(&self) -> Result<LeaseFacts, ClusterError> {
        self.ensure_alive()?;
        let mut view = lock(&self.view);
        let facts = self.facts(&view);
        view.gate_facts = Some(facts);
        view.gate_session = Some(view.lease_id);
        Ok(facts)
    }

    /// [`ClusterError::CutOff`] once the session has not been renewed for
    /// its TTL.
    fn ensure_alive(&self) -> Result<(), ClusterError> {
        if self.alive() {
            return Ok(());
        }
        let message = lock(&self.view).last_error.clone();
        Err(ClusterError::CutOff { ttl: self.settings.session_ttl, message })
    }

    fn facts(&self, view: &View) -> LeaseFacts {
        if self.settings.mode == Mode::Spread {
            return LeaseFacts::default();
        }
        LeaseFacts {
            holds_compactor_lease: view.compactor_lease.as_ref().is_some_and(|l| l.holder == self.settings.node_id),
            lease_assigned: view.compactor_lease.is_some(),
        }
    }

    /// In single mode, waits at most `timeout` for the lease to be
    /// assigned (a node that just joined may be the one to get it); in
    /// spread mode, a fifth of the session TTL at most for the members to
    /// settle.
    pub async fn wait_for_lease_decision(&self, timeout: Duration) {
        if self.settings.mode == Mode::Spread {
            // No lease: give nodes that start together a moment to see
            // each other, so that the first cycle already splits the work.
            tokio::time::sleep(timeout.min(self.settings.session_ttl / 5)).await;
            return;
        }
        let deadline = Instant::now() + timeout;
        // Undecided: no lease, or a lease whose holder is not a live member
        // (dead: the leader is about to move it).
        let undecided = || {
            let view = lock(&self.view);
            view.compactor_lease.as_ref().is_none_or(|lease| !view.members.iter().any(|m| m.node_id == lease.holder))
        };
        while undecided() && Instant::now() < deadline {
            let _ = tokio::time::timeout(Duration::from_millis(100), self.changed.notified()).await;
        }
    }

    /// The settings this node joined with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// A handle on the etcd client (cheap: it shares the channel).
    pub(crate) fn client(&self) -> Client {
        self.client.clone()
    }

    /// This node's share in spread mode (`None` in single mode): the
    /// healthy members whose gate lets them compact, this node included.
    pub fn share(&self) -> Option<Share> {
        (self.settings.mode == Mode::Spread).then(|| Share { node_id: self.settings.node_id.clone(), nodes: self.compacting_nodes() })
    }

    fn compacting_nodes(&self) -> Vec<String> {
        let view = lock(&self.view);
        match self.settings.mode {
            Mode::Spread => {
                let mut nodes: Vec<String> = view.members.iter().filter(|m| m.healthy && m.compacts).map(|m| m.node_id.clone()).collect();
                if view.me.compacts && !nodes.contains(&view.me.node_id) {
                    nodes.push(view.me.node_id.clone());
                }
                nodes.sort();
                nodes
            }
            Mode::Single => view.compactor_lease.iter().map(|l| l.holder.clone()).collect(),
        }
    }

    /// Records this node's health and whether its gate lets it compact
    /// (after each gate decision), at once for this node's own share;
    /// true when it changed and should be published ([`Cluster::publish`]).
    pub fn note(&self, healthy: bool, compacts: bool) -> bool {
        let mut view = lock(&self.view);
        let changed = view.me.healthy != healthy || view.me.compacts != compacts;
        view.me.healthy = healthy;
        view.me.compacts = compacts;
        changed
    }

    /// Writes this node's member record as it stands.
    pub async fn publish(&self) -> Result<(), ClusterError> {
        let (me, lease_id) = {
            let view = lock(&self.view);
            (view.me.clone(), view.lease_id)
        };
        let mut client = self.client.clone();
        let value = serde_json::to_vec(&me).map_err(|e| ClusterError::Etcd(e.to_string()))?;
        timed(
            self.settings.request_timeout(),
            client.put(self.keys.member(&self.settings.node_id), value, Some(PutOptions::new().with_lease(lease_id))),
        )
        .await?;
        Ok(())
    }

    /// Asks the leader to move the compactor lease to another node (Arc's
    /// manual failover); waits up to two check intervals for the move.
    pub async fn request_failover(&self) -> Result<CompactorLease, FailoverError> {
        let (lease, stats) = {
            let view = lock(&self.view);
            (view.compactor_lease.clone(), view.manager.clone())
        };
        let lease = lease.ok_or(FailoverError::NoHolder)?;
        if stats.is_some_and(|s| s.failover_in_progress) {
            return Err(FailoverError::InProgress);
        }
        let mut client = self.client.clone();
        let request = serde_json::json!({ "requested_by": self.settings.node_id, "at": Utc::now() }).to_string();
        let create = Txn::new().when([Compare::create_revision(self.keys.failover_request(), CompareOp::Equal, 0)]).and_then([TxnOp::put(
            self.keys.failover_request(),
            request,
            None,
        )]);
        match timed(self.settings.request_timeout(), client.txn(create)).await {
            Ok(answer) if answer.succeeded() => {}
            _ => return Err(FailoverError::InProgress),
        }
        self.changed.notify_waiters();
        let deadline = Instant::now() + self.settings.timings.check_interval * 2;
        while Instant::now() < deadline {
            let _ = tokio::time::timeout(Duration::from_millis(100), self.changed.notified()).await;
            let now = lock(&self.view).compactor_lease.clone();
            if let Some(now) = now
                && now.epoch > lease.epoch
            {
                return Ok(now);
            }
        }
        let _ = client.delete(self.keys.failover_request(), None).await;
        Err(FailoverError::NoCandidate)
    }

    /// What `compactor cluster status` shows.
    pub fn status(&self) -> ClusterStatus {
        let up = self.alive();
        let compacting_nodes = self.compacting_nodes();
        let view = lock(&self.view);
        ClusterStatus {
            node_id: self.settings.node_id.clone(),
            mode: self.settings.mode,
            key_prefix: self.keys.prefix.clone(),
            up,
            error: (!up).then(|| view.last_error.clone()),
            members: view.members.clone(),
            leader: view.leader.clone(),
            compactor_lease: view.compactor_lease.clone(),
            lease_manager: view.manager.clone(),
            compacting_nodes,
        }
    }

    /// Leaves: hands back the compactor lease if this node holds it (so the
    /// leader assigns it at once, not after the failover timeout), then
    /// revokes the session, which removes the member and election keys.
    pub async fn leave(&self) {
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
        // The lease may have come to this node since the last read.
        let _ = self.refresh().await;
        let (raw, holds, lease_id) = {
            let view = lock(&self.view);
            (
                view.compactor_lease_raw.clone(),
                view.compactor_lease.as_ref().is_some_and(|l| l.holder == self.settings.node_id),
                view.lease_id,
            )
        };
        let mut client = self.client.clone();
        let timeout = self.settings.request_timeout();
        if holds && let Some(raw) = raw {
            let hand_back = Txn::new()
                .when([Compare::value(self.keys.lease(), CompareOp::Equal, raw)])
                .and_then([TxnOp::delete(self.keys.lease(), None)]);
            if let Err(e) = timed(timeout, client.txn(hand_back)).await {
                tracing::warn!(error = %e, "cluster: cannot hand back the compactor lease; it moves after the failover timeout");
            }
        }
        let _ = timed(timeout, client.lease_revoke(lease_id)).await;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
    }
}

fn tls_options(tls: &crate::TlsFiles) -> Result<etcd_client::TlsOptions, ClusterError> {
    let read = |path: &std::path::Path| std::fs::read(path).map_err(|e| ClusterError::Etcd(format!("cannot read {}: {e}", path.display())));
    let mut options = etcd_client::TlsOptions::new();
    if let Some(ca) = &tls.ca_file {
        options = options.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
    }
    if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
        options = options.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(options)
}

/// A random number for the session id (no RNG crate needed for this).
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default());
    hasher.write_u32(std::process::id());
    hasher.finish()
}
