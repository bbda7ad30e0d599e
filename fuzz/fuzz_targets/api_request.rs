//! A CreateSessionRequest as the API reads it: protobuf decoding, the
//! conversions of the gRPC adapter, then every check that needs no store.
//! Nothing may panic; every refusal names a field and stays short.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use streamspace::v1 as pb;
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

fuzz_target!(|data: &[u8]| {
    let Ok(r) = pb::CreateSessionRequest::decode(data) else {
        return;
    };
    let new = match convert::new_session_from(r) {
        Ok(n) => n,
        Err(e) => return bounded(&e),
    };
    match validate::new_session("alice", &new) {
        Ok(user) => {
            // What passed is what the names rules allow everywhere else.
            assert!(streamspace::names::is_user_name(&user), "{user:?}");
            assert!(
                streamspace::names::is_dns_label(&new.name, 63),
                "{:?}",
                new.name
            );
        }
        Err(e) => bounded(&e),
    }
});
