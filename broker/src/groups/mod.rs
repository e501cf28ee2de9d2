//! Consumer groups (the classic protocol). Only the pure state machine
//! exists so far; the coordinator that parks requests, persists committed
//! offsets in `__consumer_offsets` and serves the group APIs comes next.

pub mod state;
