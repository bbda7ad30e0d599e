//! Health and server reflection for one listener. Each listener describes
//! only what it serves: the agent listener AgentService, the API listener
//! the session, template and agent-admin services (plus health and
//! reflection on both), so neither port advertises the other's surface.
//!
//! The protocol crate embeds one descriptor set for every StreamSpace proto;
//! a listener registers only the files that define its services and the
//! files those import.

use std::collections::{BTreeSet, HashMap};

use prost::Message;
use prost_types::{FileDescriptorProto, FileDescriptorSet};
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;
use tonic_reflection::server::{v1, v1alpha};

/// Why a listener's reflection could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ReflectionError {
    #[error("the embedded descriptor set does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("service {0}: not defined in the embedded descriptor set")]
    UnknownService(String),
    #[error("reflection: {0}")]
    Build(#[from] tonic_reflection::server::Error),
}

/// The files of `set` that define `services` (fully qualified names), with
/// every file they import that `set` holds, in the set's order.
pub fn files_for(
    set: &FileDescriptorSet,
    services: &[&str],
) -> Result<FileDescriptorSet, ReflectionError> {
    let by_name: HashMap<&str, &FileDescriptorProto> =
        set.file.iter().map(|f| (f.name(), f)).collect();
    let mut keep = BTreeSet::new();
    let mut todo = Vec::new();
    for svc in services {
        let file = set
            .file
            .iter()
            .find(|f| {
                f.service
                    .iter()
                    .any(|s| format!("{}.{}", f.package(), s.name()) == *svc)
            })
            .ok_or_else(|| ReflectionError::UnknownService(svc.to_string()))?;
        todo.push(file.name());
    }
    while let Some(name) = todo.pop() {
        if keep.insert(name.to_string())
            && let Some(f) = by_name.get(name)
        {
            todo.extend(f.dependency.iter().map(String::as_str));
        }
    }
    Ok(FileDescriptorSet {
        file: set
            .file
            .iter()
            .filter(|f| keep.contains(f.name()))
            .cloned()
            .collect(),
    })
}

/// The services one listener serves, as the tonic servers to add.
pub struct Served<H, V1, V1a> {
    pub reporter: HealthReporter,
    pub health: HealthServer<H>,
    pub v1: v1::ServerReflectionServer<V1>,
    pub v1alpha: v1alpha::ServerReflectionServer<V1a>,
}

/// Health, and reflection over `services` (of the streamspace protocol)
/// plus health and reflection themselves. Both reflection versions are
/// served (grpcurl 1.8 asks v1alpha, newer clients v1).
pub fn health_and_reflection(
    services: &[&str],
) -> Result<
    Served<impl Health, impl v1::ServerReflection, impl v1alpha::ServerReflection>,
    ReflectionError,
> {
    let all = FileDescriptorSet::decode(streamspace::FILE_DESCRIPTOR_SET)?;
    let ours = files_for(&all, services)?;
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_file_descriptor_set(ours.clone())
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
    };
    let (reporter, health) = tonic_health::server::health_reporter();
    Ok(Served {
        reporter,
        health,
        v1: builder().build_v1()?,
        v1alpha: builder().build_v1alpha()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_listener_keeps_only_its_files_and_their_imports() {
        let all = FileDescriptorSet::decode(streamspace::FILE_DESCRIPTOR_SET).unwrap();
        let names = |s: &FileDescriptorSet| {
            s.file
                .iter()
                .map(|f| f.name().to_string())
                .collect::<Vec<_>>()
        };
        let agent = names(&files_for(&all, &["streamspace.v1.AgentService"]).unwrap());
        assert!(
            agent.contains(&"streamspace/v1/agent.proto".to_string()),
            "{agent:?}"
        );
        assert!(
            agent.contains(&"streamspace/v1/common.proto".to_string()),
            "{agent:?}"
        );
        assert!(
            !agent
                .iter()
                .any(|f| f.ends_with("session.proto") || f.ends_with("admin.proto")),
            "{agent:?}"
        );
        let api = names(
            &files_for(
                &all,
                &[
                    "streamspace.v1.SessionService",
                    "streamspace.v1.AgentAdminService",
                ],
            )
            .unwrap(),
        );
        assert!(!api.iter().any(|f| f.ends_with("agent.proto")), "{api:?}");
        let e = files_for(&all, &["streamspace.v1.Nope"]).unwrap_err();
        assert!(e.to_string().contains("streamspace.v1.Nope"), "{e}");
    }
}
