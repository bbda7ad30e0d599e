//! An agent's frame as the control plane reads it: protobuf decoding, then
//! the conversions and checks each kind of frame goes through before it
//! reaches the core. Nothing may panic; every refusal names a field and
//! stays short.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use streamspace::v1 as pb;
use streamspace::v1::agent_frame::Frame;
use streamspace_control_plane::core::validate;
use streamspace_control_plane::grpc::convert;

fn bounded(e: &impl std::fmt::Display) {
    let text = e.to_string();
    assert!(
        text.len() <= 512,
        "refusal of {} bytes: {text:.200}",
        text.len()
    );
    assert!(text.contains(':'), "refusal names no field: {text}");
}

fn check<T, E: std::fmt::Display>(r: Result<T, E>) {
    if let Err(e) = r {
        bounded(&e);
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = pb::AgentFrame::decode(data) else {
        return;
    };
    match frame.frame {
        Some(Frame::Hello(h)) => {
            check(validate::short_text("hello.platform", &h.platform));
            check(validate::short_text("hello.region", &h.region));
            check(validate::short_text(
                "hello.agent_version",
                &h.agent_version,
            ));
            let _ = convert::capacity_from(&h.capacity);
            for (i, s) in h.inventory.iter().enumerate().take(64) {
                check(convert::observed_from(&format!("hello.inventory[{i}]"), s));
            }
        }
        Some(Frame::Heartbeat(h)) => {
            let _ = convert::capacity_from(&h.in_use);
        }
        Some(Frame::Ack(a)) => {
            check(validate::short_text("ack.command_id", &a.command_id));
        }
        Some(Frame::Result(r)) => check(convert::outcome_from(&r)),
        Some(Frame::Status(s)) => check(convert::observed_from("status", &s)),
        None => {}
    }
});
