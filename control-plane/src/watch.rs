//! Polls a group of files and hands their content to a callback when it has
//! changed and settled. Used for material that must change without a restart
//! (certificates mounted from Kubernetes Secrets, which are swapped through a
//! symlink, or rewritten in place by a renewal tool).
//!
//! A change is applied only once two reads in a row agree, so a file caught
//! half-written is not applied. The callback decides whether the content is
//! usable; when it refuses, the material in force stays and the refusal is
//! logged once (until the files change again). A file that cannot be read is
//! logged once while the condition lasts and changes nothing.

use std::path::PathBuf;
use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::{error, info, warn};

/// Stops watching when dropped.
pub struct FileWatch(JoinHandle<()>);

impl Drop for FileWatch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads every file of `paths`, in order; the error names the file.
pub fn read_all(paths: &[PathBuf]) -> Result<Vec<Vec<u8>>, String> {
    paths
        .iter()
        .map(|p| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display())))
        .collect()
}

/// Watches `paths` every `every`, starting from `applied` (their content in
/// force). `apply` gets the new content of all of them at once and returns a
/// summary to log, or why the content cannot be used (naming the file). Must
/// be called inside a Tokio runtime. `what` names the material in logs.
pub fn spawn<F>(
    what: &'static str,
    paths: Vec<PathBuf>,
    every: Duration,
    applied: Vec<Vec<u8>>,
    apply: F,
) -> FileWatch
where
    F: FnMut(&[Vec<u8>]) -> Result<String, String> + Send + 'static,
{
    FileWatch(tokio::spawn(run(what, paths, every, applied, apply)))
}

async fn run<F>(
    what: &'static str,
    paths: Vec<PathBuf>,
    every: Duration,
    mut applied: Vec<Vec<u8>>,
    mut apply: F,
) where
    F: FnMut(&[Vec<u8>]) -> Result<String, String>,
{
    let files = paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    // A changed content seen once; applied when the next read agrees.
    let mut candidate: Option<Vec<Vec<u8>>> = None;
    let mut unreadable = false;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let paths = paths.clone();
        let now = match tokio::task::spawn_blocking(move || read_all(&paths)).await {
            Ok(Ok(now)) => {
                unreadable = false;
                now
            }
            Ok(Err(e)) => {
                if !unreadable {
                    warn!(%what, error = %e, "unreadable; keeping the material in force");
                }
                unreadable = true;
                continue;
            }
            Err(_) => continue,
        };
        if now == applied {
            candidate = None;
            continue;
        }
        if candidate.as_ref() != Some(&now) {
            candidate = Some(now);
            continue;
        }
        candidate = None;
        match apply(&now) {
            Ok(summary) => info!(%what, %files, %summary, "reloaded"),
            Err(e) => error!(
                %what,
                error = %e,
                "changed but not usable; keeping the material in force"
            ),
        }
        applied = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A change is applied once, after two reads agree; a refused change is
    /// not retried until the files change again.
    #[tokio::test]
    async fn applies_settled_changes_once() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "1").unwrap();
        std::fs::write(&b, "x").unwrap();
        let seen: Arc<Mutex<Vec<Vec<Vec<u8>>>>> = Default::default();
        let s = seen.clone();
        let paths = vec![a.clone(), b.clone()];
        let initial = read_all(&paths).unwrap();
        let _w = spawn(
            "test",
            paths,
            Duration::from_millis(10),
            initial,
            move |c| {
                s.lock().unwrap().push(c.to_vec());
                if c[0] == b"bad" {
                    Err("a: bad".into())
                } else {
                    Ok("ok".into())
                }
            },
        );
        let count = || seen.lock().unwrap().len();
        // Waits for `n` offers, then ten more ticks to see no extra one.
        let offers = |n: usize| async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while count() < n && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            count()
        };
        assert_eq!(offers(0).await, 0, "nothing changed");
        std::fs::write(&a, "2").unwrap();
        assert_eq!(offers(1).await, 1);
        std::fs::write(&a, "bad").unwrap();
        assert_eq!(offers(2).await, 2, "refused content is offered once");
        std::fs::write(&b, "y").unwrap();
        assert_eq!(offers(3).await, 3);
        assert_eq!(
            seen.lock().unwrap()[2],
            vec![b"bad".to_vec(), b"y".to_vec()]
        );
    }
}
