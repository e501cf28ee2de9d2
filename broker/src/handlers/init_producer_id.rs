//! InitProducerId for idempotent producers: a new producer id at epoch 0,
//! or (v3+, KIP-360) the same id with its epoch bumped. Transactions are
//! not implemented: a transactional id gets TRANSACTIONAL_ID_AUTHORIZATION_FAILED
//! at once (see [`super::find_coordinator::NO_TRANSACTIONS`] for why that code).

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use kafka_protocol::ResponseError;
use tracing::{error, warn};

use super::find_coordinator::NO_TRANSACTIONS;
use super::{respond, Reply};
use crate::codec::{decode_body, Request};
use crate::Broker;

pub async fn handle(broker: &Broker, request: &Request) -> Reply {
    let body: InitProducerIdRequest = decode_body(request)?;
    let mut response = InitProducerIdResponse::default();
    response.producer_id = ProducerId(-1);
    response.producer_epoch = -1;
    if let Some(id) = body.transactional_id.as_ref().filter(|t| !t.0.is_empty()) {
        // The response has no message field: the log line is the only
        // place that says why.
        warn!(transactional_id = %id.0.as_str(), "InitProducerId refused: {NO_TRANSACTIONS}");
        response.error_code = ResponseError::TransactionalIdAuthorizationFailed.code();
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
