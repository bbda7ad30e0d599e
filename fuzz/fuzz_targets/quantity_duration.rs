//! The small parsers of outside text: CPU and memory quantities, the
//! listeners' durations ("500ms", "10s") and Session objects' durations
//! ("1h30m"). Nothing may panic; errors stay short; what parses stays in range.
#![no_main]

use libfuzzer_sys::fuzz_target;
use streamspace_control_plane::core::quantity::{cpu_millis, memory_bytes};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for r in [cpu_millis(text), memory_bytes(text)] {
        if let Err(e) = r {
            assert!(e.len() <= 512, "error of {} bytes", e.len());
        }
    }
    if let Err(e) = streamspace_control_plane::listen::parse_duration(text) {
        assert!(e.len() <= 512, "error of {} bytes", e.len());
    }
    if let Some(secs) = streamspace_control_plane::k8s::convert::duration_secs(text) {
        // A duration the schema allows is made of digits and h/m/s only.
        assert!(
            text.chars()
                .all(|c| c.is_ascii_digit() || "hms".contains(c)),
            "{text:?} parsed as {secs}s"
        );
    }
});
