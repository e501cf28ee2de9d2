//! FindCoordinator: a group's coordinator is the broker leading its
//! `__consumer_offsets` partition (key type 0); COORDINATOR_NOT_AVAILABLE
//! while that partition has no leader or the topic does not exist yet.
//! Transaction coordinators (key type 1) do not exist: the answer is
//! TRANSACTIONAL_ID_AUTHORIZATION_FAILED with a message saying so.
//!
//! # Why that code
//!
//! A transactional producer starts with FindCoordinator for its
//! `transactional.id`. Both client families retry a retriable code
//! (COORDINATOR_NOT_AVAILABLE, NOT_COORDINATOR) until their own timeout:
//! 60 s of `max.block.ms` in the Java client's `initTransactions()`, the
//! caller's timeout in librdkafka's `init_transactions()`, then a vague
//! timeout error. librdkafka (`rdkafka_txnmgr.c`, FindCoordinator handler)
//! gives up at once only on TRANSACTIONAL_ID_AUTHORIZATION_FAILED (53) and
//! CLUSTER_AUTHORIZATION_FAILED (31) and retries every other code, including
//! INVALID_REQUEST and UNSUPPORTED_VERSION; the Java client's
//! `TransactionManager` fails on 53 and on any non-retriable code. 53 is
//! also what a Kafka broker answers a principal that may not use
//! transactional ids, and what Redpanda answers transactional produces when
//! its transactions are disabled: "this broker will not run a transaction
//! for you". Both clients then fail `init_transactions` with a fatal error
//! that carries the error message below (librdkafka prints it; the Java
//! client names the code).

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::ResponseError;
use tracing::warn;

use super::{respond, str_bytes, Reply};
use crate::codec::{decode_body, Request};
use crate::Broker;

const KEY_TYPE_GROUP: i8 = 0;

/// Why a transactional client is refused (error message and log line).
pub(crate) const NO_TRANSACTIONS: &str = "transactions are not supported by this broker \
     (Sluice): use an idempotent producer (enable.idempotence=true) without transactional.id";

pub async fn handle(broker: &Broker, request: &Request) -> Reply {
    let body: FindCoordinatorRequest = decode_body(request)?;
    let error = if body.key_type == KEY_TYPE_GROUP {
        0
    } else {
        let key = if request.version >= 4 {
            body.coordinator_keys
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(",")
        } else {
            body.key.as_str().to_string()
        };
        warn!(key_type = body.key_type, key = %key, "FindCoordinator refused: {NO_TRANSACTIONS}");
        ResponseError::TransactionalIdAuthorizationFailed.code()
    };
    let message = (error != 0).then(|| str_bytes(NO_TRANSACTIONS));
    let mut response = FindCoordinatorResponse::default();
    if request.version >= 4 {
        response.coordinators = body
            .coordinator_keys
            .iter()
            .map(|key| {
                let mut c = Coordinator::default();
                c.key = key.clone();
                c.error_code = error;
                c.error_message = message.clone();
                c.node_id = BrokerId(-1);
                if error == 0 {
                    match coordinator(broker, key.as_str()) {
                        Some((node, host, port)) => {
                            (c.node_id, c.host, c.port) = (BrokerId(node), host, port)
                        }
                        None => c.error_code = ResponseError::CoordinatorNotAvailable.code(),
                    }
                }
                c
            })
            .collect();
    } else {
        response.error_code = error;
        response.error_message = message;
        response.node_id = BrokerId(-1);
        if error == 0 {
            match coordinator(broker, body.key.as_str()) {
                Some((node, host, port)) => {
                    (response.node_id, response.host, response.port) = (BrokerId(node), host, port)
                }
                None => response.error_code = ResponseError::CoordinatorNotAvailable.code(),
            }
        }
    }
    respond(request, &response)
}

/// The broker that coordinates `group`, with its advertised address: the
/// leader of the group's `__consumer_offsets` partition.
fn coordinator(
    broker: &Broker,
    group: &str,
) -> Option<(i32, kafka_protocol::protocol::StrBytes, i32)> {
    let node = broker.coordinator_of(group)?;
    let image = broker.topics.image();
    let registration = image.brokers.get(&node)?;
    Some((
        node,
        str_bytes(&registration.host),
        i32::from(registration.port),
    ))
}
