//! The store's SQL, written once and instantiated for SQLite and PostgreSQL
//! by `sql_store!`. Both dialects accept `$n` placeholders, `ON CONFLICT`,
//! `RETURNING` and partial indexes; the one difference is the row lock
//! (`FOR UPDATE`), which PostgreSQL needs and SQLite (one writer) does not.

pub const SESSION_COLS: &str = "name, user_name, template, desired, generation, phase, url, agent_id, selector, workload, conditions, failure_reason, message, workload_name, delete_home, external_id, created_ms, updated_ms, last_activity_ms, running_since_ms, ran_ms";
pub const COMMAND_COLS: &str = "id, session, agent_id, generation, action, state, deadline_ms, created_ms, updated_ms, failure_reason, message, retryable, attempt, not_before_ms, trace_context, sent_before";
pub const UPSERT_SESSION: &str = " ON CONFLICT (name) DO UPDATE SET user_name=excluded.user_name, template=excluded.template,
 desired=excluded.desired, generation=excluded.generation, phase=excluded.phase, url=excluded.url,
 agent_id=excluded.agent_id, selector=excluded.selector, workload=excluded.workload,
 conditions=excluded.conditions, failure_reason=excluded.failure_reason, message=excluded.message,
 workload_name=excluded.workload_name, delete_home=excluded.delete_home, external_id=excluded.external_id,
 updated_ms=excluded.updated_ms, last_activity_ms=excluded.last_activity_ms,
 running_since_ms=excluded.running_since_ms, ran_ms=excluded.ran_ms,
 cpu_millis=excluded.cpu_millis, memory_bytes=excluded.memory_bytes";
/// The unfinished states. The dispatch and deadline indexes are partial on
/// exactly this predicate, and SQLite uses a partial index only when the
/// query repeats its WHERE term verbatim (`state = 'pending'` alone does not
/// imply it there): every query meant to walk them carries this text.
macro_rules! active {
    () => {
        "state IN ('pending', 'delivered', 'acknowledged')"
    };
}
pub const ACTIVE: &str = active!();
/// One batch of retention: finished commands last updated before $1, oldest
/// first, at most $2 (active commands are never pruned); `$hint` names the
/// index to walk where the dialect needs telling.
macro_rules! prune_commands {
    ($hint:literal) => {
        concat!(
            "DELETE FROM commands WHERE seq IN (SELECT seq FROM commands",
            $hint,
            " WHERE state IN ('succeeded', 'failed', 'expired', 'superseded') AND updated_ms < $1
             ORDER BY updated_ms LIMIT $2)"
        )
    };
}
/// PostgreSQL plans with statistics and finds the partial index itself.
pub const PRUNE_COMMANDS: &str = prune_commands!("");
/// SQLite plans without statistics: when `commands_deadline (state)` still
/// held finished commands it picked that index and sorted every finished
/// command for each batch of 500 (measured: a quarter of the throughput gone
/// under load). The hint pins the partial index, which hands them over
/// oldest first, whatever indexes come later.
pub const PRUNE_COMMANDS_SQLITE: &str = prune_commands!(" INDEXED BY commands_finished");

use std::sync::LazyLock;

/// The statements both SQL stores run (the SQLite writer runs them through
/// rusqlite, everything else through sqlx).
pub static INSERT_SESSION: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO sessions ({SESSION_COLS}, cpu_millis, memory_bytes) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19,$20,$21,$22,$23)"
    )
});
pub static UPSERT_SESSION_SQL: LazyLock<String> =
    LazyLock::new(|| format!("{}{UPSERT_SESSION}", *INSERT_SESSION));
pub static INSERT_COMMAND: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO commands ({COMMAND_COLS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16)"
    )
});
pub const UPDATE_COMMAND: &str = "UPDATE commands SET state=$1, updated_ms=$2, failure_reason=$3, message=$4, retryable=$5 WHERE id=$6";
pub static SELECT_SESSION: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {SESSION_COLS} FROM sessions WHERE name = $1"));
pub static SELECT_ACTIVE: LazyLock<String> = LazyLock::new(|| {
    format!("SELECT {COMMAND_COLS} FROM commands WHERE session = $1 AND {ACTIVE}")
});
pub const DELETE_SESSION: &str = "DELETE FROM sessions WHERE name = $1";
/// Activity on a session (its agent's, when $3 is not empty); never moves
/// the time back.
pub const TOUCH_SESSION: &str = "UPDATE sessions SET last_activity_ms = $1
     WHERE name = $2 AND ($3 = '' OR agent_id = $3) AND last_activity_ms < $1";
/// One statement (atomic on both stores): the room left in the window is
/// computed in the LIMIT, and nothing is claimed unless the caller's stream
/// epoch ($4) is still the agent's: a replica that lost the agent to another
/// one claims nothing. `fence_lock` (PostgreSQL: ` FOR SHARE`) makes a
/// concurrent take-over wait for the claim, or the claim see the take-over.
///
/// The outer `state = 'pending'` is not redundant. On PostgreSQL, in READ
/// COMMITTED, the subquery picks its rows from the statement's snapshot; a
/// row that a concurrent transaction changes meanwhile (a session's
/// transition finishing or superseding the command, holding its row lock)
/// is re-checked after that transaction commits against the outer WHERE
/// only, with the subquery's old answer. Without the outer test the claim
/// would turn a command that just finished back into `delivered`: sent
/// twice, or refused by the one-active-command index when its session's
/// next command was written in the same transaction.
///
/// Parameters appear first in the order $1, $2, $3, $4: SQLite numbers
/// `$N` parameters by first appearance.
fn claim_sql(fence_lock: &str) -> String {
    format!(
        "UPDATE commands SET state = 'delivered', updated_ms = $1
         WHERE seq IN (SELECT seq FROM commands WHERE agent_id = $2 AND state = 'pending' AND {ACTIVE} AND not_before_ms <= $1 ORDER BY seq
           LIMIT (SELECT CASE WHEN $3 - COUNT(*) > 0 THEN $3 - COUNT(*) ELSE 0 END FROM commands
                  WHERE agent_id = $2 AND state IN ('delivered', 'acknowledged') AND {ACTIVE}))
           AND state = 'pending'
           AND EXISTS (SELECT 1 FROM agents WHERE id = $2 AND stream_epoch = $4{fence_lock})
         RETURNING seq, {COMMAND_COLS}"
    )
}
pub static CLAIM: LazyLock<String> = LazyLock::new(|| claim_sql(""));
pub static CLAIM_LOCKED: LazyLock<String> = LazyLock::new(|| claim_sql(" FOR SHARE"));
/// A row while $2 is still agent $1's stream epoch (a transition's
/// `StreamFence`). Locked (PostgreSQL: ` FOR SHARE`) like the claim's fence:
/// a concurrent take-over waits for the transition, or the transition sees it.
fn stream_current_sql(lock: &str) -> String {
    format!("SELECT 1 FROM agents WHERE id = $1 AND stream_epoch = $2{lock}")
}
pub static STREAM_CURRENT: LazyLock<String> = LazyLock::new(|| stream_current_sql(""));
pub static STREAM_CURRENT_LOCKED: LazyLock<String> =
    LazyLock::new(|| stream_current_sql(" FOR SHARE"));
pub const ACK: &str = "UPDATE commands SET state = 'acknowledged', updated_ms = $1 WHERE id = $2 AND agent_id = $3 AND state = 'delivered'";
pub const REQUEUE: &str = concat!(
    "UPDATE commands SET state = 'pending', sent_before = TRUE WHERE agent_id = $1 AND state IN ('delivered', 'acknowledged') AND ",
    active!()
);
/// Agents with a retry whose backoff has run out.
pub const DUE_RETRIES: &str = concat!(
    "SELECT DISTINCT agent_id FROM commands WHERE state = 'pending' AND ",
    active!(),
    " AND not_before_ms > 0 AND not_before_ms <= $1"
);
/// Commands in flight per agent.
pub const IN_FLIGHT_PER_AGENT: &str = concat!(
    "SELECT agent_id, COUNT(*) FROM commands WHERE state IN ('delivered', 'acknowledged') AND ",
    active!(),
    " GROUP BY agent_id"
);
pub const UPSERT_AGENT: &str = "INSERT INTO agents (id, platform, region, capacity, version, fencing_token, last_seen_ms)
     VALUES ($1,$2,$3,$4,$5,$6,$7)
     ON CONFLICT (id) DO UPDATE SET platform=excluded.platform, region=excluded.region,
     capacity=excluded.capacity, version=excluded.version,
     fencing_token=CASE WHEN excluded.fencing_token > agents.fencing_token THEN excluded.fencing_token ELSE agents.fencing_token END,
     last_seen_ms=excluded.last_seen_ms";
/// An attach: the agent's row as Hello describes it, held by replica $8
/// with the next stream epoch, which it returns.
pub const TAKE_OVER_AGENT: &str = "INSERT INTO agents (id, platform, region, capacity, version, fencing_token, last_seen_ms, replica_id, stream_epoch)
     VALUES ($1,$2,$3,$4,$5,$6,$7,$8,1)
     ON CONFLICT (id) DO UPDATE SET platform=excluded.platform, region=excluded.region,
     capacity=excluded.capacity, version=excluded.version,
     fencing_token=CASE WHEN excluded.fencing_token > agents.fencing_token THEN excluded.fencing_token ELSE agents.fencing_token END,
     last_seen_ms=excluded.last_seen_ms, replica_id=excluded.replica_id, stream_epoch=agents.stream_epoch + 1
     RETURNING stream_epoch";
pub const RENEW_REPLICA: &str = "INSERT INTO replicas (id, last_seen_ms) VALUES ($1, $2)
     ON CONFLICT (id) DO UPDATE SET last_seen_ms = excluded.last_seen_ms";
pub const LIVE_REPLICAS: &str = "SELECT id FROM replicas WHERE last_seen_ms >= $1 ORDER BY id";
/// Agents with a pending command due by $1 and written before $2.
pub const WAITING_COMMANDS: &str = concat!(
    "SELECT DISTINCT agent_id FROM commands WHERE state = 'pending' AND ",
    active!(),
    " AND not_before_ms <= $1 AND created_ms < $2"
);
/// The channel of PostgreSQL notifications between replicas.
pub const CHANGES_CHANNEL: &str = "streamspace_changes";

/// What a write tells the other replicas: `<origin> c <agent>` or
/// `<origin> s <session> <user>` (names hold no spaces).
#[derive(Debug, Clone, Copy)]
pub enum RemoteWrite<'a> {
    Commands(&'a str),
    Session(&'a str, &'a str),
}

impl RemoteWrite<'_> {
    pub fn payload(self, origin: &str) -> String {
        match self {
            RemoteWrite::Commands(agent) => format!("{origin} c {agent}"),
            RemoteWrite::Session(name, user) => format!("{origin} s {name} {user}"),
        }
    }
}

/// A notification's payload back as a change, unless `origin` (this
/// process) wrote it or it is not one of ours.
pub fn remote_change(payload: &str, origin: &str) -> Option<streamspace_core::store::RemoteChange> {
    use streamspace_core::store::RemoteChange;
    let mut it = payload.split(' ');
    let (from, kind) = (it.next()?, it.next()?);
    if from == origin {
        return None;
    }
    match (kind, it.next(), it.next(), it.next()) {
        ("c", Some(agent), None, _) => Some(RemoteChange::Commands {
            agent: agent.into(),
        }),
        ("s", Some(name), Some(user), None) => Some(RemoteChange::Session {
            name: name.into(),
            user: user.into(),
        }),
        _ => None,
    }
}

/// A stream ended: the agent ($2) is held by nobody, unless another stream
/// took it over since (an epoch other than $3).
pub const RELEASE_AGENT: &str =
    "UPDATE agents SET replica_id = '', last_seen_ms = $1 WHERE id = $2 AND stream_epoch = $3";
pub const PUT_TEMPLATE: &str = "INSERT INTO templates (name, spec, updated_ms) VALUES ($1,$2,$3)
     ON CONFLICT (name) DO UPDATE SET spec=excluded.spec, updated_ms=excluded.updated_ms";
pub const GET_TEMPLATE: &str = "SELECT spec FROM templates WHERE name = $1";
pub const DELETE_TEMPLATE: &str = "DELETE FROM templates WHERE name = $1";
/// The four sums of a `Usage`, over the rows a query selects: sessions,
/// running ones, and their CPU and memory requests.
macro_rules! usage_cols {
    () => {
        "COUNT(*), CAST(COALESCE(SUM(CASE WHEN desired = 'running' THEN 1 ELSE 0 END), 0) AS BIGINT),
         CAST(COALESCE(SUM(cpu_millis), 0) AS BIGINT), CAST(COALESCE(SUM(memory_bytes), 0) AS BIGINT)"
    };
}
/// Sessions per phase (metrics).
pub const TALLY_PHASES: &str = "SELECT phase, COUNT(*) FROM sessions GROUP BY phase";
/// Unfinished commands per state (metrics; the partial index serves it).
pub const TALLY_STATES: &str = concat!(
    "SELECT state, COUNT(*) FROM commands WHERE ",
    active!(),
    " GROUP BY state"
);
/// What the sessions on each agent hold (placement).
pub const USAGE_PER_AGENT: &str = concat!(
    "SELECT agent_id, ",
    usage_cols!(),
    " FROM sessions WHERE agent_id IS NOT NULL GROUP BY agent_id"
);
/// What the sessions on one agent hold (the slot check).
pub const USAGE_ON_AGENT: &str = concat!(
    "SELECT ",
    usage_cols!(),
    " FROM sessions WHERE agent_id = $1"
);
/// What one user's sessions hold, for the quotas: sessions being deleted do
/// not count, and CPU and memory only of the running ones.
pub const USAGE_OF_USER: &str = "SELECT COUNT(*),
     CAST(COALESCE(SUM(CASE WHEN desired = 'running' THEN 1 ELSE 0 END), 0) AS BIGINT),
     CAST(COALESCE(SUM(CASE WHEN desired = 'running' THEN cpu_millis ELSE 0 END), 0) AS BIGINT),
     CAST(COALESCE(SUM(CASE WHEN desired = 'running' THEN memory_bytes ELSE 0 END), 0) AS BIGINT)
     FROM sessions WHERE user_name = $1 AND desired <> 'terminated'";
pub const INSERT_REVOCATION: &str =
    "INSERT INTO revocations (kind, value, reason, revoked_by, revoked_ms) VALUES ($1,$2,$3,$4,$5)";
pub const DELETE_REVOCATION: &str = "DELETE FROM revocations WHERE kind = $1 AND value = $2
     RETURNING kind, value, reason, revoked_by, revoked_ms";
pub const LIST_REVOCATIONS: &str = "SELECT kind, value, reason, revoked_by, revoked_ms FROM revocations ORDER BY revoked_ms, kind, value";
pub const FIND_REVOCATION: &str =
    "SELECT kind, value, reason, revoked_by, revoked_ms FROM revocations
     WHERE (kind = 'agent' AND value = $1) OR (kind = 'serial' AND value = $2)
     ORDER BY revoked_ms LIMIT 1";
/// PostgreSQL: serializes slot checks per agent until the transaction ends
/// (two transactions counting at READ COMMITTED would both see room).
pub const LOCK_AGENT_SLOTS: &str = "SELECT pg_advisory_xact_lock(hashtext($1))";
/// PostgreSQL: serializes quota checks per user the same way (its own key
/// space, so a user never waits on an agent of the same name).
pub const LOCK_USER_QUOTA: &str = "SELECT pg_advisory_xact_lock(7, hashtext($1))";

/// A usage row's four sums (see `usage_cols!`), as stored (BIGINT).
pub fn usage(n: [i64; 4]) -> streamspace_core::model::Usage {
    let u = |v: i64| v.max(0) as u64;
    streamspace_core::model::Usage {
        sessions: u(n[0]),
        running: u(n[1]),
        cpu_millis: u(n[2]),
        memory_bytes: u(n[3]),
    }
}

/// The CPU and memory a session requests, as the columns store them.
pub fn requested(s: &streamspace_core::model::Session) -> (i64, i64) {
    let (cpu, mem) = s.workload.resources.requests.amounts();
    (cpu as i64, mem.min(i64::MAX as u64) as i64)
}

/// Implements `Store` for `$store` over its sqlx `pool`. `$store` also
/// brings `write_started()` (a timer for one write transaction, see
/// `observe.rs`) and `observe(observer)`.
macro_rules! sql_store {
    ($store:ident, $db:ty, $lock:literal, $slot_lock:expr, $quota_lock:expr, $notify:literal) => {
        use std::collections::HashMap;

        use async_trait::async_trait;
        use sqlx::Row;

        use streamspace_core::model::*;
        use streamspace_core::quota::QuotaCheck;
        use streamspace_core::store::{CommandFilter, SessionFilter, SessionWrite, Slot, Store, StoreError, StreamFence, Tally, TransitionFn, Transitioned, WriteObserver};
        use crate::rows::*;
        use crate::sql::*;
        use crate::db_err;

        type Conn = <$db as sqlx::Database>::Connection;

        async fn upsert_session(c: &mut Conn, s: &Session) -> Result<(), StoreError> {
            write_session(c, s, true).await
        }

        /// Inserts `s`; with `upsert`, replaces the row of the same name,
        /// otherwise the primary key refuses it (AlreadyExists).
        async fn write_session(c: &mut Conn, s: &Session, upsert: bool) -> Result<(), StoreError> {
            let sql = if upsert { &*UPSERT_SESSION_SQL } else { &*INSERT_SESSION };
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(&s.name)
            .bind(&s.user)
            .bind(&s.template)
            .bind(s.desired.as_str())
            .bind(s.generation)
            .bind(s.phase.as_str())
            .bind(&s.url)
            .bind(&s.agent_id)
            .bind(to_json(&s.selector))
            .bind(to_json(&s.workload))
            .bind(to_json(&s.conditions))
            .bind(s.failure_reason.as_str())
            .bind(&s.message)
            .bind(&s.workload_name)
            .bind(s.delete_home)
            .bind(&s.external_id)
            .bind(s.created_ms)
            .bind(s.updated_ms)
            .bind(s.last_activity_ms)
            .bind(s.running_since_ms)
            .bind(s.ran_ms)
            .bind(requested(s).0)
            .bind(requested(s).1)
            .execute(&mut *c)
            .await
            .map_err(db_err)?;
            Ok(())
        }

        /// Tells the other replicas (`$notify`: PostgreSQL's NOTIFY, sent
        /// when the transaction commits) what `what` changed.
        async fn notify(c: &mut Conn, origin: &str, what: RemoteWrite<'_>) -> Result<(), StoreError> {
            if $notify.is_empty() {
                return Ok(());
            }
            sqlx::query($notify)
                .bind(what.payload(origin))
                .execute(&mut *c)
                .await
                .map_err(db_err)?;
            Ok(())
        }

        impl $store {
            /// Runs one write statement, timed as a transaction; whether it
            /// changed a row.
            async fn changed(
                &self,
                q: sqlx::query::Query<'_, $db, <$db as sqlx::Database>::Arguments>,
            ) -> Result<bool, StoreError> {
                let timer = self.write_started();
                let r = q.execute(&self.pool).await.map_err(db_err)?;
                timer.committed(1);
                Ok(r.rows_affected() > 0)
            }
        }

        async fn insert_command(c: &mut Conn, cmd: &Command) -> Result<(), StoreError> {
            sqlx::query(sqlx::AssertSqlSafe(INSERT_COMMAND.as_str()))
            .bind(&cmd.id)
            .bind(&cmd.session)
            .bind(&cmd.agent_id)
            .bind(cmd.generation)
            .bind(to_json(&cmd.action))
            .bind(cmd.state.as_str())
            .bind(cmd.deadline_ms)
            .bind(cmd.created_ms)
            .bind(cmd.updated_ms)
            .bind(cmd.failure_reason.as_str())
            .bind(&cmd.message)
            .bind(cmd.retryable)
            .bind(cmd.attempt)
            .bind(cmd.not_before_ms)
            .bind(&cmd.trace_context)
            .bind(cmd.sent_before)
            .execute(&mut *c)
            .await
            .map_err(db_err)?;
            Ok(())
        }

        async fn update_command(c: &mut Conn, cmd: &Command) -> Result<(), StoreError> {
            sqlx::query(UPDATE_COMMAND)
            .bind(cmd.state.as_str())
            .bind(cmd.updated_ms)
            .bind(cmd.failure_reason.as_str())
            .bind(&cmd.message)
            .bind(cmd.retryable)
            .bind(&cmd.id)
            .execute(&mut *c)
            .await
            .map_err(db_err)?;
            Ok(())
        }

        /// Runs a `SELECT agent_id, COUNT(*) ... GROUP BY agent_id` query.
        async fn count_per_agent(
            pool: &sqlx::Pool<$db>,
            sql: &'static str,
        ) -> Result<HashMap<String, u32>, StoreError> {
            let rows = sqlx::query(sql).fetch_all(pool).await.map_err(db_err)?;
            rows.iter()
                .map(|r| {
                    let agent = r.try_get::<String, _>(0).map_err(db_err)?;
                    let n = r.try_get::<i64, _>(1).map_err(db_err)?;
                    Ok((agent, n as u32))
                })
                .collect()
        }

        /// Reads one usage row (see `usage_cols!`) for `key`.
        async fn usage_row(c: &mut Conn, sql: &'static str, key: &str) -> Result<Usage, StoreError> {
            let r = sqlx::query(sql).bind(key).fetch_one(&mut *c).await.map_err(db_err)?;
            let mut n = [0i64; 4];
            for (i, v) in n.iter_mut().enumerate() {
                *v = r.try_get::<i64, _>(i).map_err(db_err)?;
            }
            Ok(usage(n))
        }

        /// Refuses the transaction's write if the session does not fit on `slot`'s agent.
        async fn check_slot(c: &mut Conn, slot: Option<&Slot>) -> Result<(), StoreError> {
            let Some(slot) = slot.filter(|s| s.limited()) else {
                return Ok(());
            };
            let lock: Option<&str> = $slot_lock;
            if let Some(lock) = lock {
                sqlx::query(lock).bind(&slot.agent).execute(&mut *c).await.map_err(db_err)?;
            }
            if !slot.fits(&usage_row(c, USAGE_ON_AGENT, &slot.agent).await?) {
                return Err(StoreError::NoRoom(slot.agent.clone()));
            }
            Ok(())
        }

        /// Refuses the transaction's write if it would break one of the user's quotas.
        async fn check_quota(c: &mut Conn, q: Option<&QuotaCheck>) -> Result<(), StoreError> {
            let Some(q) = q.filter(|q| !q.quotas.is_empty()) else {
                return Ok(());
            };
            let lock: Option<&str> = $quota_lock;
            if let Some(lock) = lock {
                sqlx::query(lock).bind(&q.user).execute(&mut *c).await.map_err(db_err)?;
            }
            q.check(usage_row(c, USAGE_OF_USER, &q.user).await?)
                .map_err(StoreError::QuotaExceeded)
        }

        fn sessions(rows: Vec<SessionRow>) -> Result<Vec<Session>, StoreError> {
            rows.into_iter().map(Session::try_from).collect()
        }

        fn commands(rows: Vec<CommandRow>) -> Result<Vec<Command>, StoreError> {
            rows.into_iter().map(Command::try_from).collect()
        }

        #[async_trait]
        impl Store for $store {
            fn observe_writes(&self, o: std::sync::Arc<dyn WriteObserver>) {
                self.observe(o)
            }

            async fn tally(&self, what: Tally) -> Result<Vec<(String, u64)>, StoreError> {
                let sql = match what {
                    Tally::SessionsByPhase => TALLY_PHASES,
                    Tally::ActiveCommandsByState => TALLY_STATES,
                };
                let rows = sqlx::query(sql).fetch_all(&self.pool).await.map_err(db_err)?;
                rows.iter()
                    .map(|r| {
                        let k = r.try_get::<String, _>(0).map_err(db_err)?;
                        let n = r.try_get::<i64, _>(1).map_err(db_err)?;
                        Ok((k, n.max(0) as u64))
                    })
                    .collect()
            }

            async fn get_session(&self, name: &str) -> Result<Option<Session>, StoreError> {
                sqlx::query_as::<_, SessionRow>(sqlx::AssertSqlSafe(SELECT_SESSION.as_str()))
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err)?
                    .map(Session::try_from)
                    .transpose()
            }

            async fn list_sessions(&self, f: &SessionFilter) -> Result<Vec<Session>, StoreError> {
                let mut sql = format!("SELECT {SESSION_COLS} FROM sessions WHERE 1=1");
                let mut n = 0;
                let mut next = || {
                    n += 1;
                    format!("${n}")
                };
                if f.user.is_some() {
                    sql += &format!(" AND user_name = {}", next());
                }
                if f.phase.is_some() {
                    sql += &format!(" AND phase = {}", next());
                }
                if f.after.is_some() {
                    let (a, b, c) = (next(), next(), next());
                    sql += &format!(" AND (created_ms < {a} OR (created_ms = {b} AND name > {c}))");
                }
                sql += &format!(" ORDER BY created_ms DESC, name ASC LIMIT {}", next());
                let mut q = sqlx::query_as::<_, SessionRow>(sqlx::AssertSqlSafe(sql));
                if let Some(u) = &f.user {
                    q = q.bind(u.clone());
                }
                if let Some(p) = f.phase {
                    q = q.bind(p.as_str());
                }
                if let Some((ms, name)) = &f.after {
                    q = q.bind(*ms).bind(*ms).bind(name.clone());
                }
                let rows = q.bind(i64::from(f.limit)).fetch_all(&self.pool).await.map_err(db_err)?;
                sessions(rows)
            }

            async fn insert_session(&self, s: &Session, cmd: Option<&Command>, slot: Option<&Slot>, quota: Option<&QuotaCheck>) -> Result<(), StoreError> {
                let timer = self.write_started();
                let mut tx = self.pool.begin().await.map_err(db_err)?;
                check_quota(&mut tx, quota).await?;
                check_slot(&mut tx, slot).await?;
                write_session(&mut tx, s, false).await.map_err(|e| match e {
                    StoreError::AlreadyExists(_) => StoreError::AlreadyExists(format!("session {:?}", s.name)),
                    e => e,
                })?;
                if let Some(c) = cmd {
                    insert_command(&mut tx, c).await?;
                    notify(&mut tx, self.origin(), RemoteWrite::Commands(&c.agent_id)).await?;
                }
                notify(&mut tx, self.origin(), RemoteWrite::Session(&s.name, &s.user)).await?;
                tx.commit().await.map_err(db_err)?;
                timer.committed(1);
                Ok(())
            }

            async fn transition_fenced(&self, name: &str, fence: Option<StreamFence>, f: TransitionFn) -> Result<Transitioned, StoreError> {
                let timer = self.write_started();
                let mut tx = self.pool.begin().await.map_err(db_err)?;
                let session = sqlx::query_as::<_, SessionRow>(sqlx::AssertSqlSafe(format!("{}{}", *SELECT_SESSION, $lock)))
                .bind(name)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?
                .map(Session::try_from)
                .transpose()?;
                let active = sqlx::query_as::<_, CommandRow>(sqlx::AssertSqlSafe(format!("{}{}", *SELECT_ACTIVE, $lock)))
                .bind(name)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?
                .map(Command::try_from)
                .transpose()?;
                let before = session.clone();
                if let Some(fence) = &fence {
                    let sql = if $lock.is_empty() { &*STREAM_CURRENT } else { &*STREAM_CURRENT_LOCKED };
                    let current = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                        .bind(&fence.agent)
                        .bind(fence.epoch)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(db_err)?
                        .is_some();
                    if !current {
                        tx.rollback().await.map_err(db_err)?;
                        return Ok(Transitioned { before, superseded: true, ..Transitioned::default() });
                    }
                }
                let change = f(session, active)?;
                check_quota(&mut tx, change.quota.as_ref()).await?;
                check_slot(&mut tx, change.slot.as_ref()).await?;
                match &change.session {
                    SessionWrite::Keep => {}
                    SessionWrite::Upsert(s) => upsert_session(&mut tx, s).await?,
                    SessionWrite::Delete => {
                        sqlx::query(DELETE_SESSION)
                            .bind(name)
                            .execute(&mut *tx)
                            .await
                            .map_err(db_err)?;
                    }
                }
                if let Some(c) = &change.update_command {
                    update_command(&mut tx, c).await?;
                }
                if let Some(c) = &change.new_command {
                    insert_command(&mut tx, c).await?;
                    notify(&mut tx, self.origin(), RemoteWrite::Commands(&c.agent_id)).await?;
                }
                match (&change.session, &before) {
                    (SessionWrite::Upsert(s), _) | (SessionWrite::Delete, Some(s)) => {
                        notify(&mut tx, self.origin(), RemoteWrite::Session(&s.name, &s.user)).await?;
                    }
                    _ => {}
                }
                tx.commit().await.map_err(db_err)?;
                timer.committed(1);
                Ok(Transitioned { change, before, superseded: false })
            }

            async fn unplaced_sessions(&self) -> Result<Vec<String>, StoreError> {
                let rows = sqlx::query(
                    "SELECT name FROM sessions WHERE agent_id IS NULL AND desired <> 'terminated' ORDER BY created_ms",
                )
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
                rows.iter().map(|r| r.try_get::<String, _>(0).map_err(db_err)).collect()
            }

            async fn sessions_on_agent(&self, agent: &str) -> Result<Vec<Session>, StoreError> {
                let rows = sqlx::query_as::<_, SessionRow>(sqlx::AssertSqlSafe(format!(
                    "SELECT {SESSION_COLS} FROM sessions WHERE agent_id = $1 ORDER BY name"
                )))
                .bind(agent)
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
                sessions(rows)
            }

            async fn usage_per_agent(&self) -> Result<HashMap<String, Usage>, StoreError> {
                let rows = sqlx::query(USAGE_PER_AGENT).fetch_all(&self.pool).await.map_err(db_err)?;
                rows.iter()
                    .map(|r| {
                        let agent = r.try_get::<String, _>(0).map_err(db_err)?;
                        let mut n = [0i64; 4];
                        for (i, v) in n.iter_mut().enumerate() {
                            *v = r.try_get::<i64, _>(i + 1).map_err(db_err)?;
                        }
                        Ok((agent, usage(n)))
                    })
                    .collect()
            }

            async fn usage_of_user(&self, user: &str) -> Result<Usage, StoreError> {
                let mut c = self.pool.acquire().await.map_err(db_err)?;
                usage_row(&mut c, USAGE_OF_USER, user).await
            }

            async fn get_command(&self, id: &str) -> Result<Option<Command>, StoreError> {
                sqlx::query_as::<_, CommandRow>(sqlx::AssertSqlSafe(format!("SELECT {COMMAND_COLS} FROM commands WHERE id = $1")))
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err)?
                    .map(Command::try_from)
                    .transpose()
            }

            async fn prune_commands(&self, before: Millis, limit: u32) -> Result<u64, StoreError> {
                let timer = self.write_started();
                let r = sqlx::query(PRUNE_COMMANDS)
                .bind(before)
                .bind(i64::from(limit))
                .execute(&self.pool)
                .await
                .map_err(db_err)?;
                timer.committed(1);
                Ok(r.rows_affected())
            }

            async fn agents_with_due_commands(&self, now: Millis) -> Result<Vec<String>, StoreError> {
                let rows: Vec<(String,)> = sqlx::query_as(
                    DUE_RETRIES,
                )
                .bind(now)
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
                Ok(rows.into_iter().map(|(a,)| a).collect())
            }

            async fn list_commands(&self, f: &CommandFilter) -> Result<Vec<Command>, StoreError> {
                let mut sql = format!("SELECT {COMMAND_COLS} FROM commands WHERE 1=1");
                let mut n = 0;
                let mut next = || {
                    n += 1;
                    format!("${n}")
                };
                if f.session.is_some() {
                    sql += &format!(" AND session = {}", next());
                }
                if f.agent.is_some() {
                    sql += &format!(" AND agent_id = {}", next());
                }
                if f.state.is_some() {
                    sql += &format!(" AND state = {}", next());
                }
                if f.updated_before.is_some() {
                    sql += &format!(" AND updated_ms < {}", next());
                }
                sql += &format!(" ORDER BY seq DESC LIMIT {}", next());
                let mut q = sqlx::query_as::<_, CommandRow>(sqlx::AssertSqlSafe(sql));
                if let Some(s) = &f.session {
                    q = q.bind(s.clone());
                }
                if let Some(a) = &f.agent {
                    q = q.bind(a.clone());
                }
                if let Some(s) = f.state {
                    q = q.bind(s.as_str());
                }
                if let Some(t) = f.updated_before {
                    q = q.bind(t);
                }
                let rows = q.bind(i64::from(f.limit)).fetch_all(&self.pool).await.map_err(db_err)?;
                commands(rows)
            }

            async fn claim_commands(&self, agent: &str, epoch: i64, window: u32, now: Millis) -> Result<Vec<Command>, StoreError> {
                let timer = self.write_started();
                let sql = if $lock.is_empty() { &*CLAIM } else { &*CLAIM_LOCKED };
                let mut rows = sqlx::query_as::<_, ClaimedRow>(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(now)
                .bind(agent)
                .bind(i64::from(window))
                .bind(epoch)
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
                timer.committed(1);
                rows.sort_by_key(|r| r.seq);
                commands(rows.into_iter().map(|r| r.command).collect())
            }

            async fn ack_command(&self, agent: &str, id: &str, now: Millis) -> Result<bool, StoreError> {
                self.changed(sqlx::query(ACK).bind(now).bind(id).bind(agent)).await
            }

            async fn touch_sessions(&self, agent: &str, names: &[String], now: Millis) -> Result<u64, StoreError> {
                let mut n = 0;
                for name in names {
                    let timer = self.write_started();
                    let r = sqlx::query(TOUCH_SESSION)
                    .bind(now)
                    .bind(name)
                    .bind(agent)
                    .execute(&self.pool)
                    .await
                    .map_err(db_err)?;
                    timer.committed(1);
                    n += r.rows_affected();
                }
                Ok(n)
            }

            async fn requeue_commands(&self, agent: &str) -> Result<u64, StoreError> {
                let timer = self.write_started();
                let r = sqlx::query(REQUEUE)
                .bind(agent)
                .execute(&self.pool)
                .await
                .map_err(db_err)?;
                timer.committed(1);
                Ok(r.rows_affected())
            }

            async fn overdue_commands(&self, now: Millis) -> Result<Vec<Command>, StoreError> {
                let rows = sqlx::query_as::<_, CommandRow>(sqlx::AssertSqlSafe(format!(
                    "SELECT {COMMAND_COLS} FROM commands WHERE {ACTIVE} AND deadline_ms < $1 ORDER BY seq"
                )))
                .bind(now)
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
                commands(rows)
            }

            async fn active_commands_per_agent(&self) -> Result<HashMap<String, u32>, StoreError> {
                count_per_agent(
                    &self.pool,
                    IN_FLIGHT_PER_AGENT,
                )
                .await
            }

            async fn upsert_agent(&self, a: &AgentRecord) -> Result<(), StoreError> {
                let timer = self.write_started();
                sqlx::query(UPSERT_AGENT)
                .bind(&a.id)
                .bind(&a.platform)
                .bind(&a.region)
                .bind(to_json(&a.capacity))
                .bind(&a.version)
                .bind(a.fencing_token)
                .bind(a.last_seen_ms)
                .execute(&self.pool)
                .await
                .map_err(db_err)?;
                timer.committed(1);
                Ok(())
            }

            fn shared(&self) -> bool {
                !$notify.is_empty()
            }

            fn remote_changes(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<streamspace_core::store::RemoteChange>> {
                self.listen()
            }

            async fn renew_replica(&self, id: &str, now: Millis) -> Result<(), StoreError> {
                sqlx::query(RENEW_REPLICA)
                .bind(id)
                .bind(now)
                .execute(&self.pool)
                .await
                .map_err(db_err)?;
                Ok(())
            }

            async fn live_replicas(&self, since: Millis) -> Result<Vec<String>, StoreError> {
                sqlx::query_scalar(LIVE_REPLICAS)
                .bind(since)
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)
            }

            async fn agents_with_waiting_commands(&self, now: Millis, before: Millis) -> Result<Vec<String>, StoreError> {
                sqlx::query_scalar(WAITING_COMMANDS)
                .bind(now)
                .bind(before)
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)
            }

            async fn take_over_agent(&self, a: &AgentRecord) -> Result<i64, StoreError> {
                let timer = self.write_started();
                let epoch: i64 = sqlx::query_scalar(TAKE_OVER_AGENT)
                .bind(&a.id)
                .bind(&a.platform)
                .bind(&a.region)
                .bind(to_json(&a.capacity))
                .bind(&a.version)
                .bind(a.fencing_token)
                .bind(a.last_seen_ms)
                .bind(&a.replica_id)
                .fetch_one(&self.pool)
                .await
                .map_err(db_err)?;
                timer.committed(1);
                Ok(epoch)
            }

            async fn release_agent(&self, id: &str, epoch: i64, now: Millis) -> Result<bool, StoreError> {
                self.changed(sqlx::query(RELEASE_AGENT).bind(now).bind(id).bind(epoch)).await
            }

            async fn get_agent(&self, id: &str) -> Result<Option<AgentRecord>, StoreError> {
                sqlx::query_as::<_, AgentRow>("SELECT id, platform, region, capacity, version, fencing_token, last_seen_ms, replica_id, stream_epoch FROM agents WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err)?
                    .map(AgentRecord::try_from)
                    .transpose()
            }

            async fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
                sqlx::query_as::<_, AgentRow>("SELECT id, platform, region, capacity, version, fencing_token, last_seen_ms, replica_id, stream_epoch FROM agents ORDER BY id")
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err)?
                    .into_iter()
                    .map(AgentRecord::try_from)
                    .collect()
            }

            async fn put_template(&self, t: &Template) -> Result<(), StoreError> {
                let timer = self.write_started();
                sqlx::query(PUT_TEMPLATE)
                .bind(&t.name)
                .bind(to_json(t))
                .bind(now_ms())
                .execute(&self.pool)
                .await
                .map_err(db_err)?;
                timer.committed(1);
                Ok(())
            }

            async fn get_template(&self, name: &str) -> Result<Option<Template>, StoreError> {
                sqlx::query_as::<_, TemplateRow>(GET_TEMPLATE)
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err)?
                    .map(Template::try_from)
                    .transpose()
            }

            async fn list_templates(&self) -> Result<Vec<Template>, StoreError> {
                sqlx::query_as::<_, TemplateRow>("SELECT spec FROM templates ORDER BY name")
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err)?
                    .into_iter()
                    .map(Template::try_from)
                    .collect()
            }

            async fn delete_template(&self, name: &str) -> Result<bool, StoreError> {
                let timer = self.write_started();
                let r = sqlx::query(DELETE_TEMPLATE)
                    .bind(name)
                    .execute(&self.pool)
                    .await
                    .map_err(db_err)?;
                timer.committed(1);
                Ok(r.rows_affected() > 0)
            }

            async fn insert_revocation(&self, r: &Revocation) -> Result<(), StoreError> {
                let timer = self.write_started();
                sqlx::query(INSERT_REVOCATION)
                    .bind(r.target.kind())
                    .bind(r.target.value())
                    .bind(&r.reason)
                    .bind(&r.revoked_by)
                    .bind(r.revoked_ms)
                    .execute(&self.pool)
                    .await
                    .map_err(db_err)?;
                timer.committed(1);
                Ok(())
            }

            async fn delete_revocation(&self, target: &RevokedTarget) -> Result<Option<Revocation>, StoreError> {
                let timer = self.write_started();
                let row = sqlx::query_as::<_, RevocationRow>(DELETE_REVOCATION)
                    .bind(target.kind())
                    .bind(target.value())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err)?;
                timer.committed(1);
                row.map(Revocation::try_from).transpose()
            }

            async fn list_revocations(&self) -> Result<Vec<Revocation>, StoreError> {
                sqlx::query_as::<_, RevocationRow>(LIST_REVOCATIONS)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err)?
                    .into_iter()
                    .map(Revocation::try_from)
                    .collect()
            }

            async fn find_revocation(&self, agent: &str, serial: &str) -> Result<Option<Revocation>, StoreError> {
                sqlx::query_as::<_, RevocationRow>(FIND_REVOCATION)
                    .bind(agent)
                    .bind(serial)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err)?
                    .map(Revocation::try_from)
                    .transpose()
            }
        }
    };
}

pub(crate) use sql_store;
