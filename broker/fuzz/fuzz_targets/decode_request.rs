//! A request frame (without its length prefix) as a client could send it:
//! the header decoder, then the body decoder its API key and version name.
//! Any error is fine; a panic, an abort or a hang is a bug.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_broker::codec::{decode_request, decode_served_body};

fuzz_target!(|frame: &[u8]| {
    if let Ok(request) = decode_request(bytes::Bytes::copy_from_slice(frame)) {
        let _ = decode_served_body(&request);
    }
});
