//! A Session object as the controller reads it from the API server: JSON
//! into the CRD's Rust type, then the conversion to a create request and the
//! checks that need no store. Nothing may panic; every refusal names a field.
#![no_main]

use libfuzzer_sys::fuzz_target;
use streamspace_control_plane::core::validate;
use streamspace_control_plane::k8s::convert;
use streamspace_control_plane::k8s::crd::Session;

fuzz_target!(|data: &[u8]| {
    let Ok(obj) = serde_json::from_slice::<Session>(data) else {
        return;
    };
    let new = convert::new_session(&obj);
    if let Err(e) = validate::new_session("admin", &new) {
        let text = e.to_string();
        assert!(text.len() <= 512, "refusal of {} bytes", text.len());
        assert!(text.contains(':'), "refusal names no field: {text}");
    }
    let _ = convert::resources(&obj.spec.resources);
});
