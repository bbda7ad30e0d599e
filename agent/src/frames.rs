//! Frames the agent sends, kept within `Welcome.max_message_bytes`: the only
//! fields that can grow without bound are human-readable messages (a
//! failure's detail, a status message), so those are cut, at a character
//! boundary, with a marker, until the frame fits.

use prost::Message;
use streamspace::v1 as pb;
use streamspace::v1::agent_frame::Frame as Out;

/// Appended to a message that was cut.
const CUT: &str = " [cut to fit max_message_bytes]";

/// Cuts the frame's messages until its encoding is at most `max` bytes
/// (`0` = no limit). False when even without them it is too large (then
/// the frame is unchanged but for the messages).
pub fn fit(frame: &mut pb::AgentFrame, max: u32) -> bool {
    let max = max as usize;
    if max == 0 || frame.encoded_len() <= max {
        return true;
    }
    let excess = frame.encoded_len() - max;
    let message = match &mut frame.frame {
        Some(Out::Result(pb::CommandResult {
            outcome: Some(pb::command_result::Outcome::Failed(f)),
            ..
        })) => &mut f.message,
        Some(Out::Status(s)) => &mut s.message,
        _ => return false,
    };
    // The length prefix shrinks with the string, so cutting `excess` plus
    // the marker is always enough when the message is long enough.
    let keep = message.len().saturating_sub(excess + CUT.len());
    let mut cut = keep;
    while cut > 0 && !message.is_char_boundary(cut) {
        cut -= 1;
    }
    if message.len() <= CUT.len() || cut == 0 {
        message.clear();
    } else {
        message.truncate(cut);
        message.push_str(CUT);
    }
    frame.encoded_len() <= max
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn failed(msg: &str) -> pb::AgentFrame {
        pb::AgentFrame {
            frame: Some(Out::Result(pb::CommandResult {
                command_id: "0f8c9a2e-6a0c-4c1e-9a57-1b2f3c4d5e6f".into(),
                outcome: Some(pb::command_result::Outcome::Failed(pb::CommandFailed {
                    reason: pb::FailureReason::Image as i32,
                    message: msg.into(),
                    retryable: false,
                })),
            })),
        }
    }

    #[test]
    fn a_long_failure_is_cut_with_a_marker() {
        let mut f = failed(&"x".repeat(10_000));
        assert!(fit(&mut f, 1024));
        assert!(f.encoded_len() <= 1024);
        let Some(Out::Result(r)) = &f.frame else {
            unreachable!()
        };
        let Some(pb::command_result::Outcome::Failed(e)) = &r.outcome else {
            unreachable!()
        };
        assert!(e.message.ends_with(CUT), "{}", e.message);
        assert!(e.message.len() > 900, "cut no more than needed");
    }

    #[test]
    fn a_frame_that_fits_is_untouched() {
        let mut f = failed("short");
        let before = f.clone();
        assert!(fit(&mut f, 1024));
        assert_eq!(f, before);
        assert!(fit(&mut f, 0), "0 means no limit");
    }

    proptest! {
        /// Any message, any limit at least a frame's fixed part: the frame
        /// fits afterwards and the message stays valid UTF-8 (a `String`).
        #[test]
        fn every_status_fits(msg in "\\PC{0,3000}", max in 200u32..4000) {
            let mut f = pb::AgentFrame {
                frame: Some(Out::Status(pb::SessionStatus {
                    session_id: "s-1".into(),
                    phase: pb::SessionPhase::Failed as i32,
                    message: msg,
                    ..Default::default()
                })),
            };
            prop_assert!(fit(&mut f, max));
            prop_assert!(f.encoded_len() <= max as usize);
        }
    }
}
