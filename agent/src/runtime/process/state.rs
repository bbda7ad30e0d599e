//! The process runtime's files under its data directory: per session a state
//! record (`sessions/<id>.json`, so a restarted agent re-adopts what runs
//! instead of starting it twice) and a log, and the homes (`homes/<user>`,
//! kept across sessions) and scratch directories (`scratch/<id>`, removed at
//! stop). Every path is built from a validated name by [`child_path`], and a
//! directory is only ever removed when it is strictly inside `homes/` or
//! `scratch/`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use streamspace::v1 as pb;

use crate::runtime::RuntimeError;
use crate::runtime::names::{RemoveError, child_path, remove_tree_under};

/// What survives an agent restart, per session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcState {
    pub session: String,
    pub user: String,
    /// 0 while the record is only an intent: written before the spawn, so an
    /// agent killed between spawning and recording the pid can still find its
    /// process (by `spawn_tag`) instead of starting a second one.
    pub pid: i32,
    /// A unique value put in the process's environment as `STREAMSPACE_SPAWN`.
    #[serde(default)]
    pub spawn_tag: String,
    /// Kernel start time of `pid` (/proc/<pid>/stat field 22): tells our
    /// process from a later one that reused the pid.
    pub start_time: u64,
    pub port: u16,
    pub hibernated: bool,
    pub home: PathBuf,
    pub persistent_home: bool,
    /// What the session requests (millicores, bytes), reported as use in
    /// heartbeats; 0 in records written before requests were kept.
    #[serde(default)]
    pub cpu_millis: u64,
    #[serde(default)]
    pub memory_bytes: u64,
}

impl ProcState {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    pub fn workload(&self) -> String {
        format!("pid {}", self.pid)
    }
}

pub fn io_err(what: &str, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::new(pb::FailureReason::Platform, format!("{what}: {e}"), true)
}

/// The data directory's layout.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub const DIRS: [&str; 4] = ["sessions", "logs", "homes", "scratch"];

    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    pub fn create(&self) -> Result<(), RuntimeError> {
        for sub in Self::DIRS {
            let d = self.root.join(sub);
            std::fs::create_dir_all(&d)
                .map_err(|e| io_err(&format!("creating {}", d.display()), e))?;
        }
        Ok(())
    }

    pub fn sessions(&self) -> PathBuf {
        self.root.join("sessions")
    }

    fn homes(&self) -> PathBuf {
        self.root.join("homes")
    }

    fn scratch(&self) -> PathBuf {
        self.root.join("scratch")
    }

    pub fn state_path(&self, session: &str) -> Result<PathBuf, RuntimeError> {
        Ok(child_path(
            &self.sessions(),
            "session_id",
            &format!("{session}.json"),
        )?)
    }

    pub fn log_path(&self, session: &str) -> Result<PathBuf, RuntimeError> {
        Ok(child_path(
            &self.root.join("logs"),
            "session_id",
            &format!("{session}.log"),
        )?)
    }

    /// A session's home: the user's (kept) or the session's scratch directory.
    pub fn home(
        &self,
        session: &str,
        user: &str,
        persistent: bool,
    ) -> Result<PathBuf, RuntimeError> {
        Ok(if persistent {
            child_path(&self.homes(), "user", user)?
        } else {
            child_path(&self.scratch(), "session_id", session)?
        })
    }

    /// Removes a home directory, but only one strictly inside `homes/` or
    /// `scratch/` (a state record written by an older agent may hold any path).
    pub fn remove_home(&self, home: &Path) -> Result<(), RemoveError> {
        let root = if home.starts_with(self.homes()) {
            self.homes()
        } else {
            self.scratch()
        };
        remove_tree_under(&root, home)
    }

    pub fn save(&self, st: &ProcState) -> Result<(), RuntimeError> {
        let path = self.state_path(&st.session)?;
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(st).expect("state serializes");
        std::fs::write(&tmp, text).map_err(|e| io_err("writing session state", e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io_err("writing session state", e))
    }

    /// Removes a session's state record (missing is fine).
    pub fn forget(&self, session: &str) {
        if let Ok(p) = self.state_path(session) {
            let _ = std::fs::remove_file(p);
        }
    }
}
