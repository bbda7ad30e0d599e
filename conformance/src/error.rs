//! The kit's one error type. A case ends in [`Error::Rule`] when the agent
//! broke a rule of the protocol; every other variant means the kit itself
//! could not run the case (no port, no temp dir, a broken golden file...).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The agent under test broke `rule`; `message` says what was expected
    /// and what was seen.
    #[error("rule {rule}: {message}")]
    Rule { rule: &'static str, message: String },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("test certificates: {0}")]
    Pki(#[from] rcgen::Error),
    #[error("TLS listener: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Bad flags or environment of the kit or of the bad agent.
    #[error("{0}")]
    Usage(String),
}

impl Error {
    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            what,
            path: path.into(),
            source,
        }
    }
}

/// A broken rule.
pub fn broke(rule: &'static str, message: impl Into<String>) -> Error {
    Error::Rule {
        rule,
        message: message.into(),
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
