//! Protocol version negotiation. An agent names the newest version it speaks
//! in `Hello.protocol_version` and may list every version it speaks in
//! `Hello.supported_protocol_versions`; the control plane answers with the
//! newest version both sides speak in `Welcome.protocol_version`, or refuses
//! the stream (FAILED_PRECONDITION) naming both sides' versions. An agent
//! that predates the list sends only `protocol_version` and keeps working as
//! long as the control plane still speaks it.

use crate::v1::ProtocolVersion;

/// The protocol version this build speaks by preference (the newest).
pub const PROTOCOL_VERSION: ProtocolVersion = ProtocolVersion::ProtocolVersion1;

/// Every protocol version this build speaks, oldest first.
pub const SUPPORTED_PROTOCOL_VERSIONS: &[ProtocolVersion] = &[ProtocolVersion::ProtocolVersion1];

/// The newest version in both `ours` and the agent's offer (`newest` plus
/// `also`); the error names both sides' versions. Unknown numbers (versions
/// newer than this build) and 0 (unspecified) are never picked.
pub fn negotiate_with(
    ours: &[ProtocolVersion],
    newest: i32,
    also: &[i32],
) -> Result<ProtocolVersion, String> {
    let mut offered: Vec<i32> = also.iter().copied().chain([newest]).collect();
    offered.sort_unstable();
    offered.dedup();
    let picked = offered
        .iter()
        .rev()
        .filter_map(|v| ProtocolVersion::try_from(*v).ok())
        .find(|v| *v != ProtocolVersion::Unspecified && ours.contains(v));
    picked.ok_or_else(|| {
        let ours: Vec<String> = ours
            .iter()
            .map(|v| format!("{} ({})", *v as i32, v.as_str_name()))
            .collect();
        // At most 8 of the agent's numbers: the list comes from the wire.
        let mut theirs: Vec<String> = offered.iter().take(8).map(i32::to_string).collect();
        if offered.len() > 8 {
            theirs.push(format!("... {} in all", offered.len()));
        }
        format!(
            "hello.protocol_version: no version in common; this control plane speaks {}, the agent offers [{}]",
            ours.join(", "),
            theirs.join(", ")
        )
    })
}

/// [`negotiate_with`] this build's versions.
pub fn negotiate(newest: i32, also: &[i32]) -> Result<ProtocolVersion, String> {
    negotiate_with(SUPPORTED_PROTOCOL_VERSIONS, newest, also)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_agent_that_predates_the_list_is_accepted() {
        assert_eq!(negotiate(1, &[]), Ok(ProtocolVersion::ProtocolVersion1));
    }

    #[test]
    fn a_future_agent_that_also_speaks_ours_gets_ours() {
        assert_eq!(negotiate(7, &[1, 7]), Ok(ProtocolVersion::ProtocolVersion1));
        assert_eq!(negotiate(7, &[1]), Ok(ProtocolVersion::ProtocolVersion1));
    }

    #[test]
    fn a_future_only_agent_is_refused_naming_both_sides() {
        let e = negotiate(7, &[6]).unwrap_err();
        assert!(
            e.contains("this control plane speaks 1 (PROTOCOL_VERSION_1)"),
            "{e}"
        );
        assert!(e.contains("the agent offers [6, 7]"), "{e}");
        let e = negotiate(0, &[]).unwrap_err();
        assert!(e.contains("the agent offers [0]"), "{e}");
    }

    proptest! {
        /// Whatever an agent offers: the pick is one both sides speak and
        /// the newest such; a refusal means there is none; the message stays
        /// bounded.
        #[test]
        fn the_pick_is_the_newest_common_version(
            newest in any::<i32>(),
            also in proptest::collection::vec(prop_oneof![0..4i32, any::<i32>()], 0..50),
        ) {
            let ours = [ProtocolVersion::ProtocolVersion1];
            let offered: Vec<i32> = also.iter().copied().chain([newest]).collect();
            let common: Vec<i32> = offered
                .iter()
                .copied()
                .filter(|v| *v != 0 && ours.iter().any(|o| *o as i32 == *v))
                .collect();
            match negotiate_with(&ours, newest, &also) {
                Ok(v) => {
                    prop_assert_eq!(Some(v as i32), common.iter().copied().max());
                }
                Err(e) => {
                    prop_assert!(common.is_empty());
                    prop_assert!(e.len() < 400, "{}", e);
                }
            }
        }
    }
}
