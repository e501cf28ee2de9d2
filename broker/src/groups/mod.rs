//! Consumer groups (the classic protocol): [`state`] is the pure state
//! machine of one group, [`coordinator`] parks and answers requests for all
//! groups, [`offsets_topic`] persists committed offsets in
//! `__consumer_offsets` and replays them at start.

pub mod coordinator;
pub mod handover;
pub mod offsets_topic;
pub mod state;
