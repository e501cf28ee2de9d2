//! ElectLeaders (KIP-460): a preferred-leader or unclean election on named
//! partitions, or on every partition when none is named, decided from the
//! image (`controller::election::elect`) and proposed to the active
//! controller; each partition is answered once its election is committed.
//! With every partition asked, only those that needed an election are
//! listed, as Kafka does.

use kafka_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use kafka_protocol::messages::{ElectLeadersRequest, ElectLeadersResponse, TopicName};
use kafka_protocol::ResponseError;
use tracing::{info, warn};

use super::{respond, str_bytes, Reply};
use crate::codec::{decode_body, Request};
use crate::controller::election::{self, Kind, Refusal};
use crate::controller::{MetadataRecord, ProposeError};
use crate::Broker;

pub async fn handle(broker: &Broker, request: &Request) -> Reply {
    let body: ElectLeadersRequest = decode_body(request)?;
    let mut response = ElectLeadersResponse::default();
    // v0 knows only preferred elections.
    let kind = match (request.version, body.election_type) {
        (0, _) | (_, 0) => Some(Kind::Preferred),
        (_, 1) => Some(Kind::Unclean),
        _ => None,
    };
    let Some(kind) = kind else {
        warn!(
            election_type = body.election_type,
            "ElectLeaders: unknown election type"
        );
        response.error_code = ResponseError::InvalidRequest.code();
        return respond(request, &response);
    };
    let image = broker.topics.image();
    let all = body.topic_partitions.is_none();
    let wanted: Vec<(String, Vec<i32>)> = match body.topic_partitions {
        Some(topics) => topics
            .into_iter()
            .map(|t| (t.topic.0.as_str().to_string(), t.partitions))
            .collect(),
        None => image
            .topics
            .iter()
            .map(|(name, t)| (name.clone(), (0..t.partitions.len() as i32).collect()))
            .collect(),
    };
    for (topic, partitions) in wanted {
        let mut result = ReplicaElectionResult::default();
        result.topic = TopicName(str_bytes(&topic));
        for partition in partitions {
            let (code, message) = match election::elect(&image, &topic, partition, kind) {
                Ok(record) => propose(broker, record).await,
                Err(Refusal::NotNeeded) if all => continue,
                Err(refusal) => refused(refusal),
            };
            let mut p = PartitionResult::default();
            p.partition_id = partition;
            p.error_code = code;
            p.error_message = message.map(|m| str_bytes(&m));
            result.partition_result.push(p);
        }
        if !(all && result.partition_result.is_empty()) {
            response.replica_election_results.push(result);
        }
    }
    respond(request, &response)
}

fn refused(refusal: Refusal) -> (i16, Option<String>) {
    let (error, why) = match refusal {
        Refusal::NotNeeded => (
            ResponseError::ElectionNotNeeded,
            "the partition already has the leader asked for",
        ),
        Refusal::PreferredNotAvailable => (
            ResponseError::PreferredLeaderNotAvailable,
            "the preferred replica is not live and in the ISR",
        ),
        Refusal::NoneEligible => (
            ResponseError::EligibleLeadersNotAvailable,
            "no live replica may lead",
        ),
        Refusal::Unknown => (
            ResponseError::UnknownTopicOrPartition,
            "no such topic partition",
        ),
    };
    (error.code(), Some(why.to_string()))
}

async fn propose(broker: &Broker, record: MetadataRecord) -> (i16, Option<String>) {
    let what = match &record {
        MetadataRecord::ElectLeader {
            topic,
            partition,
            leader,
            unclean,
            ..
        } => format!("{topic}-{partition} to broker {leader} (unclean: {unclean})"),
        _ => String::new(),
    };
    match broker.controller.propose(record).await {
        Ok(_) => {
            info!(election = %what, "ElectLeaders: elected");
            (0, None)
        }
        // Decided on an image the partition has moved past meanwhile.
        Err(ProposeError::Rejected(e)) => {
            (ResponseError::ElectionNotNeeded.code(), Some(e.to_string()))
        }
        Err(e) => (ResponseError::RequestTimedOut.code(), Some(e.to_string())),
    }
}
