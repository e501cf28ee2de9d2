//! Producer ids for idempotent producers (InitProducerId), unique across
//! restarts and, with more brokers, across the cluster.
//!
//! Ids are reserved from the controller in blocks: an
//! `AllocateProducerIds` record in the metadata log moves the cluster's
//! next free id past the block before any id of it is handed out, so a
//! crash can skip ids but never hand one out twice.

use std::sync::{Arc, Mutex};

use crate::controller::{Applied, Controller, MetadataRecord, ProposeError};

/// Ids reserved per metadata record.
pub const BLOCK: i64 = 1000;

pub struct ProducerIds {
    controller: Arc<Controller>,
    broker: i32,
    /// (next id to hand out, first id past the reserved block)
    block: Mutex<(i64, i64)>,
}

impl ProducerIds {
    pub fn new(controller: Arc<Controller>, broker: i32) -> ProducerIds {
        ProducerIds {
            controller,
            broker,
            block: Mutex::new((0, 0)),
        }
    }

    fn take(&self) -> Option<i64> {
        let mut block = self.block.lock().unwrap_or_else(|e| e.into_inner());
        let (next, end) = *block;
        (next < end).then(|| {
            block.0 = next + 1;
            next
        })
    }

    /// The next unused producer id; reserves a new block from the
    /// controller when this one is used up.
    pub async fn allocate(&self) -> Result<i64, ProposeError> {
        if let Some(id) = self.take() {
            return Ok(id);
        }
        let committed = self
            .controller
            .propose(MetadataRecord::AllocateProducerIds {
                broker: self.broker,
                count: BLOCK,
            })
            .await?;
        let Applied::ProducerIds { first } = committed.applied else {
            return Err(ProposeError::Unavailable(format!(
                "the controller answered a producer-id reservation with {:?}",
                committed.applied
            )));
        };
        let mut block = self.block.lock().unwrap_or_else(|e| e.into_inner());
        // A racing request may have installed a block meanwhile; this one
        // then goes unused, which only skips ids.
        if block.0 >= block.1 {
            *block = (first, first + BLOCK);
        }
        let id = block.0;
        block.0 += 1;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_across_restarts_even_when_a_block_was_not_used_up() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = sluice_engine::shard::client_runtime().unwrap();
        let start = || Arc::new(Controller::start(dir.path(), 1, "127.0.0.1:1".into()).unwrap());
        let controller = start();
        let ids = ProducerIds::new(controller.clone(), 1);
        let first: Vec<i64> = (0..3)
            .map(|_| runtime.block_on(ids.allocate()).unwrap())
            .collect();
        assert_eq!(first, vec![0, 1, 2]);
        controller.stop();
        drop(ids);
        let controller = start();
        let ids = ProducerIds::new(controller.clone(), 1);
        assert_eq!(runtime.block_on(ids.allocate()).unwrap(), BLOCK);
        controller.stop();
    }
}
