//! A PostgreSQL server of a test's own (scripts/postgres.sh in a private
//! directory, on a free port), for tests that stop and restart the database
//! under load without disturbing the run's shared server.

use std::path::PathBuf;
use std::process::Command;

pub struct PrivatePostgres {
    dir: PathBuf,
    port: u16,
    pub url: String,
}

impl PrivatePostgres {
    /// Starts a fresh cluster; panics (naming the script's error) if it
    /// cannot, so a missing PostgreSQL fails the test.
    pub fn start() -> Self {
        // Under /tmp itself: the server runs as an unprivileged user that
        // must reach the directory (a tempdir is private to root).
        let dir = PathBuf::from(format!(
            "/tmp/streamspace-pg-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ));
        let port = crate::procs::free_addr().port();
        let pg = Self {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            dir,
            port,
        };
        pg.run("start");
        pg
    }

    /// Stops the server, keeping its data.
    pub fn halt(&self) {
        self.run("halt");
    }

    /// Starts it again after [`Self::halt`].
    pub fn resume(&self) {
        self.run("start");
    }

    fn run(&self, what: &str) {
        let script = crate::repo_path("scripts/postgres.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg(what)
            .env("STREAMSPACE_PG_DIR", &self.dir)
            .env("STREAMSPACE_PG_PORT", self.port.to_string())
            .output()
            .expect("run scripts/postgres.sh");
        assert!(
            out.status.success(),
            "scripts/postgres.sh {what} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let script = crate::repo_path("scripts/postgres.sh");
        let _ = Command::new("bash")
            .arg(&script)
            .arg("stop")
            .env("STREAMSPACE_PG_DIR", &self.dir)
            .env("STREAMSPACE_PG_PORT", self.port.to_string())
            .output();
    }
}
