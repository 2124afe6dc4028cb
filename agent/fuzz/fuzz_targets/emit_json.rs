//! The agent's HTTP emit body parser (`POST /v1/events`) on hostile bytes: it must answer, never panic.
#![no_main]

use hookrelay_agent::ingest::http::parse_for_fuzzing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let accepted = parse_for_fuzzing(data);
    // Whatever the parser accepts is a JSON document.
    if accepted {
        assert!(std::str::from_utf8(data).is_ok(), "accepted a body that is not UTF-8");
    }
});
