//! InitProducerId for idempotent producers: a new producer id at epoch 0,
//! or (v3+, KIP-360) the same id with its epoch bumped. Transactions are
//! not implemented: a transactional id gets INVALID_REQUEST.

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use kafka_protocol::ResponseError;
use tracing::{error, warn};

use super::{respond, Reply};
use crate::codec::{decode_body, Request};
use crate::Broker;

pub async fn handle(broker: &Broker, request: &Request) -> Reply {
    let body: InitProducerIdRequest = decode_body(request)?;
    let mut response = InitProducerIdResponse::default();
    response.producer_id = ProducerId(-1);
    response.producer_epoch = -1;
    if body
        .transactional_id
        .as_ref()
        .is_some_and(|t| !t.0.is_empty())
    {
        warn!("InitProducerId with a transactional id: transactions are not supported yet");
        response.error_code = ResponseError::InvalidRequest.code();
        return respond(request, &response);
    }
    let bump =
        body.producer_id.0 >= 0 && body.producer_epoch >= 0 && body.producer_epoch < i16::MAX;
    if bump {
        response.producer_id = body.producer_id;
        response.producer_epoch = body.producer_epoch + 1;
        return respond(request, &response);
    }
    match broker.producer_ids.allocate().await {
        Ok(id) => {
            response.producer_id = ProducerId(id);
            response.producer_epoch = 0;
        }
        Err(e) => {
            error!(error = %e, "reserving producer ids failed");
            response.error_code = ResponseError::CoordinatorNotAvailable.code();
        }
    }
    respond(request, &response)
}
