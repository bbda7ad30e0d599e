//! The SQLite store. Every write (and the reads on the command path) runs on
//! one writer thread that owns a rusqlite connection and commits in groups:
//! it takes every job that is queued (up to `MAX_BATCH`), runs each inside a
//! savepoint of one transaction, commits once, and only then answers the
//! callers. A job that fails is rolled back to its savepoint alone, so
//! nothing half-written survives and the other jobs of the group commit.
//!
//! Why not sqlx for these: sqlx runs each SQLite statement on a worker thread
//! and hands every statement and its result across threads. Measured on this
//! 2-core machine (docs/BENCHMARKS.md): ~113 µs per sqlx statement against
//! ~6 µs through rusqlite on the calling thread, ~3 µs per transition when
//! 100 share a commit; the hand-offs, not SQLite, were the command path's
//! cost. sqlx still opens the database, runs the migrations and serves the
//! other reads (listing, sweeps) on a small read-only pool; both link the
//! same libsqlite3-sys.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::observe::Observer;
use super::rows::*;
use super::sql::*;
use streamspace_core::model::*;
use streamspace_core::quota::QuotaCheck;
use streamspace_core::store::{
    CommandFilter, SessionFilter, SessionWrite, Slot, Store, StoreError, StreamFence, Tally,
    TransitionFn, Transitioned, WriteObserver,
};

/// Most jobs in one commit.
const MAX_BATCH: usize = 512;

/// A unit of work for the writer thread.
trait Job: Send {
    /// Runs the job's statements; false if it failed (it is rolled back).
    fn run(&mut self, c: &Connection) -> bool;
    /// Answers the caller once the group's fate is known.
    fn finish(self: Box<Self>, committed: Result<(), String>);
}

struct Typed<T, F> {
    f: Option<F>,
    result: Option<Result<T, StoreError>>,
    reply: tokio::sync::oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Job for Typed<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> Result<T, StoreError> + Send,
{
    fn run(&mut self, c: &Connection) -> bool {
        let f = self.f.take().expect("a job runs once");
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(c)))
            .unwrap_or_else(|_| Err(StoreError::Backend("a store job panicked".into())));
        let ok = r.is_ok();
        self.result = Some(r);
        ok
    }

    fn finish(self: Box<Self>, committed: Result<(), String>) {
        let r = match (self.result, committed) {
            (Some(Err(e)), _) => Err(e),
            (Some(Ok(v)), Ok(())) => Ok(v),
            (_, Err(e)) => Err(StoreError::Backend(format!("SQLite commit: {e}"))),
            (None, Ok(())) => Err(StoreError::Backend("job did not run".into())),
        };
        let _ = self.reply.send(r);
    }
}

/// The writer thread's handle; the thread stops when this is dropped.
struct Writer {
    jobs: mpsc::Sender<Box<dyn Job>>,
}

impl Writer {
    fn start(path: &Path, observer: Arc<Observer>) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(|e| backend("opening SQLite", e))?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(|e| backend("SQLite busy timeout", e))?;
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")
            .map_err(|e| backend("SQLite pragmas", e))?;
        conn.set_prepared_statement_cache_capacity(32);
        let (tx, rx) = mpsc::channel::<Box<dyn Job>>();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx, &observer))
            .map_err(|e| backend("starting the SQLite writer", e))?;
        Ok(Self { jobs: tx })
    }

    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let job = Box::new(Typed {
            f: Some(f),
            result: None,
            reply,
        });
        self.jobs
            .send(job)
            .map_err(|_| StoreError::Backend("the SQLite writer stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Backend("the SQLite writer stopped".into()))?
    }
}

fn writer_loop(conn: Connection, rx: mpsc::Receiver<Box<dyn Job>>, observer: &Observer) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let timer = observer.start();
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            for j in jobs {
                j.finish(Err(e.to_string()));
            }
            continue;
        }
        let exec = |sql: &str| conn.prepare_cached(sql).and_then(|mut s| s.execute([]));
        for j in jobs.iter_mut() {
            let ok = exec("SAVEPOINT job").is_ok() && j.run(&conn);
            if !ok {
                let _ = exec("ROLLBACK TO job");
            }
            let _ = exec("RELEASE job");
        }
        let committed = conn.execute_batch("COMMIT").map_err(|e| e.to_string());
        if committed.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        } else {
            timer.committed(jobs.len());
        }
        for j in jobs {
            j.finish(committed.clone());
        }
    }
}

fn backend(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("{what}: {e}"))
}

fn db(e: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(f, msg) = &e
        && (f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
            || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE)
    {
        return StoreError::AlreadyExists(msg.clone().unwrap_or_else(|| e.to_string()));
    }
    StoreError::Backend(e.to_string())
}

fn session_row(r: &Row) -> rusqlite::Result<SessionRow> {
    Ok(SessionRow {
        name: r.get(0)?,
        user_name: r.get(1)?,
        template: r.get(2)?,
        desired: r.get(3)?,
        generation: r.get(4)?,
        phase: r.get(5)?,
        url: r.get(6)?,
        agent_id: r.get(7)?,
        selector: r.get(8)?,
        workload: r.get(9)?,
        conditions: r.get(10)?,
        failure_reason: r.get(11)?,
        message: r.get(12)?,
        workload_name: r.get(13)?,
        delete_home: r.get(14)?,
        external_id: r.get(15)?,
        created_ms: r.get(16)?,
        updated_ms: r.get(17)?,
        last_activity_ms: r.get(18)?,
        running_since_ms: r.get(19)?,
        ran_ms: r.get(20)?,
    })
}

/// A command row starting at column `at` (COMMAND_COLS order).
fn command_row(r: &Row, at: usize) -> rusqlite::Result<CommandRow> {
    Ok(CommandRow {
        id: r.get(at)?,
        session: r.get(at + 1)?,
        agent_id: r.get(at + 2)?,
        generation: r.get(at + 3)?,
        action: r.get(at + 4)?,
        state: r.get(at + 5)?,
        deadline_ms: r.get(at + 6)?,
        created_ms: r.get(at + 7)?,
        updated_ms: r.get(at + 8)?,
        failure_reason: r.get(at + 9)?,
        message: r.get(at + 10)?,
        retryable: r.get(at + 11)?,
        attempt: r.get(at + 12)?,
        not_before_ms: r.get(at + 13)?,
        trace_context: r.get(at + 14)?,
        sent_before: r.get(at + 15)?,
    })
}

fn get_session(c: &Connection, name: &str) -> Result<Option<Session>, StoreError> {
    c.prepare_cached(&SELECT_SESSION)
        .and_then(|mut st| st.query_row([name], session_row).optional())
        .map_err(db)?
        .map(Session::try_from)
        .transpose()
}

fn write_session(c: &Connection, s: &Session, upsert: bool) -> Result<(), StoreError> {
    let sql = if upsert {
        &*UPSERT_SESSION_SQL
    } else {
        &*INSERT_SESSION
    };
    c.prepare_cached(sql)
        .and_then(|mut st| {
            st.execute(params![
                s.name,
                s.user,
                s.template,
                s.desired.as_str(),
                s.generation,
                s.phase.as_str(),
                s.url,
                s.agent_id,
                to_json(&s.selector),
                to_json(&s.workload),
                to_json(&s.conditions),
                s.failure_reason.as_str(),
                s.message,
                s.workload_name,
                s.delete_home,
                s.external_id,
                s.created_ms,
                s.updated_ms,
                s.last_activity_ms,
                s.running_since_ms,
                s.ran_ms,
                requested(s).0,
                requested(s).1,
            ])
        })
        .map_err(db)?;
    Ok(())
}

fn insert_command(c: &Connection, cmd: &Command) -> Result<(), StoreError> {
    c.prepare_cached(&INSERT_COMMAND)
        .and_then(|mut st| {
            st.execute(params![
                cmd.id,
                cmd.session,
                cmd.agent_id,
                cmd.generation,
                to_json(&cmd.action),
                cmd.state.as_str(),
                cmd.deadline_ms,
                cmd.created_ms,
                cmd.updated_ms,
                cmd.failure_reason.as_str(),
                cmd.message,
                cmd.retryable,
                cmd.attempt,
                cmd.not_before_ms,
                cmd.trace_context,
                cmd.sent_before,
            ])
        })
        .map_err(db)?;
    Ok(())
}

fn update_command(c: &Connection, cmd: &Command) -> Result<(), StoreError> {
    c.prepare_cached(UPDATE_COMMAND)
        .and_then(|mut st| {
            st.execute(params![
                cmd.state.as_str(),
                cmd.updated_ms,
                cmd.failure_reason.as_str(),
                cmd.message,
                cmd.retryable,
                cmd.id,
            ])
        })
        .map_err(db)?;
    Ok(())
}

/// Reads one usage row (see `usage_cols!` in `sql.rs`) for `key`.
fn usage_row(c: &Connection, sql: &str, key: &str) -> Result<Usage, StoreError> {
    c.prepare_cached(sql)
        .and_then(|mut st| {
            st.query_row([key], |r| Ok([r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?]))
        })
        .map(usage)
        .map_err(db)
}

/// Refuses the job's write if the session does not fit on `slot`'s agent.
/// The writer thread runs one job at a time, so the sums cannot go stale
/// before the write.
fn check_slot(c: &Connection, slot: Option<&Slot>) -> Result<(), StoreError> {
    let Some(slot) = slot.filter(|s| s.limited()) else {
        return Ok(());
    };
    if !slot.fits(&usage_row(c, USAGE_ON_AGENT, &slot.agent)?) {
        return Err(StoreError::NoRoom(slot.agent.clone()));
    }
    Ok(())
}

/// Refuses the job's write if it would break one of the user's quotas.
fn check_quota(c: &Connection, q: Option<&QuotaCheck>) -> Result<(), StoreError> {
    let Some(q) = q.filter(|q| !q.quotas.is_empty()) else {
        return Ok(());
    };
    q.check(usage_row(c, USAGE_OF_USER, &q.user)?)
        .map_err(StoreError::QuotaExceeded)
}

fn transition(
    c: &Connection,
    name: &str,
    fence: Option<&StreamFence>,
    f: TransitionFn,
) -> Result<Transitioned, StoreError> {
    let session = get_session(c, name)?;
    let active = c
        .prepare_cached(&SELECT_ACTIVE)
        .and_then(|mut st| st.query_row([name], |r| command_row(r, 0)).optional())
        .map_err(db)?
        .map(Command::try_from)
        .transpose()?;
    let before = session.clone();
    if let Some(fence) = fence {
        let current = c
            .prepare_cached(&STREAM_CURRENT)
            .and_then(|mut st| {
                st.query_row(params![fence.agent, fence.epoch], |_| Ok(()))
                    .optional()
            })
            .map_err(db)?
            .is_some();
        if !current {
            return Ok(Transitioned {
                before,
                superseded: true,
                ..Transitioned::default()
            });
        }
    }
    let change = f(session, active)?;
    check_quota(c, change.quota.as_ref())?;
    check_slot(c, change.slot.as_ref())?;
    match &change.session {
        SessionWrite::Keep => {}
        SessionWrite::Upsert(s) => write_session(c, s, true)?,
        SessionWrite::Delete => {
            c.prepare_cached(DELETE_SESSION)
                .and_then(|mut st| st.execute([name]))
                .map_err(db)?;
        }
    }
    if let Some(cmd) = &change.update_command {
        update_command(c, cmd)?;
    }
    if let Some(cmd) = &change.new_command {
        insert_command(c, cmd)?;
    }
    Ok(Transitioned {
        change,
        before,
        superseded: false,
    })
}

/// SQLite: a writer thread for writes and the command path's reads, and a
/// read-only sqlx pool for the rest (WAL lets readers run beside the writer).
pub struct SqliteStore {
    writer: Writer,
    reads: super::SqliteReads,
    /// Shared with the writer thread, which times its group commits.
    observer: Arc<Observer>,
}

impl SqliteStore {
    /// `path` has been migrated already (through `pool`, which must be read-only).
    pub(crate) fn new(path: PathBuf, pool: sqlx::SqlitePool) -> Result<Self, StoreError> {
        let observer = Arc::new(Observer::new("sqlite"));
        Ok(Self {
            writer: Writer::start(&path, observer.clone())?,
            reads: super::SqliteReads { pool },
            observer,
        })
    }

    /// Runs one write statement on the writer thread; whether it changed a
    /// row. `params` in the order their `$N` first appear in `sql`.
    async fn changed<P>(&self, sql: &'static str, params: P) -> Result<bool, StoreError>
    where
        P: rusqlite::Params + Send + 'static,
    {
        self.writer
            .run(move |c| {
                let n = c
                    .prepare_cached(sql)
                    .and_then(|mut st| st.execute(params))
                    .map_err(db)?;
                Ok(n > 0)
            })
            .await
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn observe_writes(&self, observer: Arc<dyn WriteObserver>) {
        self.observer.set(observer)
    }

    async fn get_session(&self, name: &str) -> Result<Option<Session>, StoreError> {
        let name = name.to_string();
        self.writer.run(move |c| get_session(c, &name)).await
    }

    async fn list_sessions(&self, filter: &SessionFilter) -> Result<Vec<Session>, StoreError> {
        self.reads.list_sessions(filter).await
    }

    async fn insert_session(
        &self,
        session: &Session,
        command: Option<&Command>,
        slot: Option<&Slot>,
        quota: Option<&QuotaCheck>,
    ) -> Result<(), StoreError> {
        let (s, cmd, slot, quota) = (
            session.clone(),
            command.cloned(),
            slot.cloned(),
            quota.cloned(),
        );
        self.writer
            .run(move |c| {
                check_quota(c, quota.as_ref())?;
                check_slot(c, slot.as_ref())?;
                write_session(c, &s, false).map_err(|e| match e {
                    StoreError::AlreadyExists(_) => {
                        StoreError::AlreadyExists(format!("session {:?}", s.name))
                    }
                    e => e,
                })?;
                if let Some(cmd) = &cmd {
                    insert_command(c, cmd)?;
                }
                Ok(())
            })
            .await
    }

    async fn transition_fenced(
        &self,
        session: &str,
        fence: Option<StreamFence>,
        f: TransitionFn,
    ) -> Result<Transitioned, StoreError> {
        let name = session.to_string();
        self.writer
            .run(move |c| transition(c, &name, fence.as_ref(), f))
            .await
    }

    async fn unplaced_sessions(&self) -> Result<Vec<String>, StoreError> {
        self.reads.unplaced_sessions().await
    }

    async fn sessions_on_agent(&self, agent: &str) -> Result<Vec<Session>, StoreError> {
        self.reads.sessions_on_agent(agent).await
    }

    async fn usage_per_agent(&self) -> Result<HashMap<String, Usage>, StoreError> {
        self.writer
            .run(|c| {
                let mut st = c.prepare_cached(USAGE_PER_AGENT).map_err(db)?;
                let rows = st
                    .query_map([], |r| {
                        let n = [r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?];
                        Ok((r.get::<_, String>(0)?, usage(n)))
                    })
                    .map_err(db)?;
                rows.collect::<Result<_, _>>().map_err(db)
            })
            .await
    }

    async fn usage_of_user(&self, user: &str) -> Result<Usage, StoreError> {
        self.reads.usage_of_user(user).await
    }

    async fn tally(&self, what: Tally) -> Result<Vec<(String, u64)>, StoreError> {
        self.reads.tally(what).await
    }

    async fn get_command(&self, id: &str) -> Result<Option<Command>, StoreError> {
        self.reads.get_command(id).await
    }

    async fn list_commands(&self, filter: &CommandFilter) -> Result<Vec<Command>, StoreError> {
        self.reads.list_commands(filter).await
    }

    async fn agents_with_due_commands(&self, now: Millis) -> Result<Vec<String>, StoreError> {
        self.reads.agents_with_due_commands(now).await
    }

    async fn prune_commands(&self, before: Millis, limit: u32) -> Result<u64, StoreError> {
        self.writer
            .run(move |c| {
                let n = c
                    .prepare_cached(PRUNE_COMMANDS_SQLITE)
                    .and_then(|mut st| st.execute(params![before, i64::from(limit)]))
                    .map_err(db)?;
                Ok(n as u64)
            })
            .await
    }

    async fn ack_command(&self, agent: &str, id: &str, now: Millis) -> Result<bool, StoreError> {
        self.changed(ACK, (now, id.to_string(), agent.to_string()))
            .await
    }

    async fn touch_sessions(
        &self,
        agent: &str,
        names: &[String],
        now: Millis,
    ) -> Result<u64, StoreError> {
        let (agent, names) = (agent.to_string(), names.to_vec());
        self.writer
            .run(move |c| {
                let mut st = c.prepare_cached(TOUCH_SESSION).map_err(db)?;
                let mut n = 0;
                for name in &names {
                    n += st.execute(params![now, name, agent]).map_err(db)? as u64;
                }
                Ok(n)
            })
            .await
    }

    async fn claim_commands(
        &self,
        agent: &str,
        epoch: i64,
        window: u32,
        now: Millis,
    ) -> Result<Vec<Command>, StoreError> {
        let agent = agent.to_string();
        self.writer
            .run(move |c| {
                let mut st = c.prepare_cached(&CLAIM).map_err(db)?;
                let rows = st
                    .query_map(params![now, agent, i64::from(window), epoch], |r| {
                        Ok((r.get::<_, i64>(0)?, command_row(r, 1)?))
                    })
                    .map_err(db)?;
                let mut rows: Vec<(i64, CommandRow)> =
                    rows.collect::<Result<_, _>>().map_err(db)?;
                rows.sort_by_key(|(seq, _)| *seq);
                rows.into_iter()
                    .map(|(_, r)| Command::try_from(r))
                    .collect()
            })
            .await
    }

    async fn requeue_commands(&self, agent: &str) -> Result<u64, StoreError> {
        let agent = agent.to_string();
        self.writer
            .run(move |c| {
                let n = c
                    .prepare_cached(REQUEUE)
                    .and_then(|mut st| st.execute([agent]))
                    .map_err(db)?;
                Ok(n as u64)
            })
            .await
    }

    async fn overdue_commands(&self, now: Millis) -> Result<Vec<Command>, StoreError> {
        self.reads.overdue_commands(now).await
    }

    async fn active_commands_per_agent(&self) -> Result<HashMap<String, u32>, StoreError> {
        self.reads.active_commands_per_agent().await
    }

    async fn upsert_agent(&self, a: &AgentRecord) -> Result<(), StoreError> {
        let a = a.clone();
        self.writer
            .run(move |c| {
                c.prepare_cached(UPSERT_AGENT)
                    .and_then(|mut st| {
                        st.execute(params![
                            a.id,
                            a.platform,
                            a.region,
                            to_json(&a.capacity),
                            a.version,
                            a.fencing_token,
                            a.last_seen_ms,
                        ])
                    })
                    .map_err(db)?;
                Ok(())
            })
            .await
    }

    async fn take_over_agent(&self, a: &AgentRecord) -> Result<i64, StoreError> {
        let a = a.clone();
        self.writer
            .run(move |c| {
                c.prepare_cached(TAKE_OVER_AGENT)
                    .and_then(|mut st| {
                        st.query_row(
                            params![
                                a.id,
                                a.platform,
                                a.region,
                                to_json(&a.capacity),
                                a.version,
                                a.fencing_token,
                                a.last_seen_ms,
                                a.replica_id,
                            ],
                            |r| r.get::<_, i64>(0),
                        )
                    })
                    .map_err(db)
            })
            .await
    }

    async fn release_agent(&self, id: &str, epoch: i64, now: Millis) -> Result<bool, StoreError> {
        self.changed(RELEASE_AGENT, (now, id.to_string(), epoch))
            .await
    }

    async fn get_agent(&self, id: &str) -> Result<Option<AgentRecord>, StoreError> {
        self.reads.get_agent(id).await
    }

    async fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        self.reads.list_agents().await
    }

    async fn put_template(&self, t: &Template) -> Result<(), StoreError> {
        let (name, spec) = (t.name.clone(), to_json(t));
        self.writer
            .run(move |c| {
                c.prepare_cached(PUT_TEMPLATE)
                    .and_then(|mut st| st.execute(params![name, spec, now_ms()]))
                    .map_err(db)?;
                Ok(())
            })
            .await
    }

    async fn get_template(&self, name: &str) -> Result<Option<Template>, StoreError> {
        let name = name.to_string();
        self.writer
            .run(move |c| {
                c.prepare_cached(GET_TEMPLATE)
                    .and_then(|mut st| {
                        st.query_row([name], |r| Ok(TemplateRow { spec: r.get(0)? }))
                            .optional()
                    })
                    .map_err(db)?
                    .map(Template::try_from)
                    .transpose()
            })
            .await
    }

    async fn list_templates(&self) -> Result<Vec<Template>, StoreError> {
        self.reads.list_templates().await
    }

    async fn delete_template(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.writer
            .run(move |c| {
                let n = c
                    .prepare_cached(DELETE_TEMPLATE)
                    .and_then(|mut st| st.execute([name]))
                    .map_err(db)?;
                Ok(n > 0)
            })
            .await
    }

    async fn insert_revocation(&self, r: &Revocation) -> Result<(), StoreError> {
        let r = r.clone();
        self.writer
            .run(move |c| {
                c.prepare_cached(INSERT_REVOCATION)
                    .and_then(|mut st| {
                        st.execute(params![
                            r.target.kind(),
                            r.target.value(),
                            r.reason,
                            r.revoked_by,
                            r.revoked_ms,
                        ])
                    })
                    .map_err(db)?;
                Ok(())
            })
            .await
    }

    async fn delete_revocation(
        &self,
        target: &RevokedTarget,
    ) -> Result<Option<Revocation>, StoreError> {
        let (kind, value) = (target.kind(), target.value().to_string());
        self.writer
            .run(move |c| {
                c.prepare_cached(DELETE_REVOCATION)
                    .and_then(|mut st| {
                        st.query_row(params![kind, value], |r| {
                            Ok(RevocationRow {
                                kind: r.get(0)?,
                                value: r.get(1)?,
                                reason: r.get(2)?,
                                revoked_by: r.get(3)?,
                                revoked_ms: r.get(4)?,
                            })
                        })
                        .optional()
                    })
                    .map_err(db)?
                    .map(Revocation::try_from)
                    .transpose()
            })
            .await
    }

    async fn list_revocations(&self) -> Result<Vec<Revocation>, StoreError> {
        self.reads.list_revocations().await
    }

    async fn find_revocation(
        &self,
        agent: &str,
        serial: &str,
    ) -> Result<Option<Revocation>, StoreError> {
        self.reads.find_revocation(agent, serial).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The schema as the migrations leave it.
    fn schema() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        for sql in [
            include_str!("../migrations/sqlite/0001_init.sql"),
            include_str!("../migrations/sqlite/0002_external_id.sql"),
            include_str!("../migrations/sqlite/0003_revocations.sql"),
            include_str!("../migrations/sqlite/0004_activity.sql"),
            include_str!("../migrations/sqlite/0005_retention.sql"),
            include_str!("../migrations/sqlite/0006_retry.sql"),
            include_str!("../migrations/sqlite/0007_requests.sql"),
            include_str!("../migrations/sqlite/0008_active_indexes.sql"),
            include_str!("../migrations/sqlite/0009_trace_context.sql"),
            include_str!("../migrations/sqlite/0010_replicas.sql"),
        ] {
            c.execute_batch(sql).unwrap();
        }
        c
    }

    fn plan(c: &Connection, sql: &str) -> String {
        let mut st = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let zeros = std::iter::repeat_n(0i64, st.parameter_count());
        let rows = st
            .query_map(rusqlite::params_from_iter(zeros), |r| r.get::<_, String>(3))
            .unwrap();
        rows.map(Result::unwrap).collect::<Vec<_>>().join("; ")
    }

    /// Retention walks its partial index in order: no sort of every
    /// finished command per batch (the plan SQLite picks without the hint).
    #[test]
    fn pruning_walks_the_finished_index() {
        let c = schema();
        let p = plan(&c, PRUNE_COMMANDS_SQLITE);
        assert!(p.contains("USING INDEX commands_finished"), "{p}");
        assert!(!p.contains("TEMP B-TREE"), "{p}");
        // Since the deadline index holds only unfinished commands, SQLite
        // finds the same plan unaided; the hint keeps it that way should a
        // future index on `state` tempt it again.
        assert_eq!(plan(&c, PRUNE_COMMANDS), p);
    }

    /// The hot paths over unfinished commands walk the partial indexes: a
    /// query that forgot the active-states term would scan every finished
    /// command instead (SQLite does not infer `state IN (...)` from
    /// `state = 'pending'`).
    #[test]
    fn active_queries_use_the_partial_indexes() {
        let c = schema();
        let overdue =
            format!("SELECT seq FROM commands WHERE {ACTIVE} AND deadline_ms < $1 ORDER BY seq");
        for sql in [
            &*CLAIM,
            REQUEUE,
            DUE_RETRIES,
            IN_FLIGHT_PER_AGENT,
            TALLY_STATES,
            &overdue,
        ] {
            let p = plan(&c, sql);
            assert!(!p.contains("SCAN commands"), "{sql}\n=> {p}");
            assert!(
                p.contains("commands_dispatch") || p.contains("commands_deadline"),
                "{sql}\n=> {p}"
            );
        }
    }
}
