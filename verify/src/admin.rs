//! The few admin calls the scenario runner makes, spoken raw with
//! kafka-protocol over a blocking socket: where each partition's leader and
//! ISR are, which broker is the active controller, creating a topic. Works
//! against any Kafka-compatible cluster.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, MetadataRequest, MetadataResponse, RequestHeader, ResponseHeader,
    TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};

const TIMEOUT: Duration = Duration::from_secs(5);

/// One partition as Metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionView {
    pub partition: i32,
    pub leader: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
}

/// What Metadata says of the cluster and one topic.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    pub controller: i32,
    pub partitions: Vec<PartitionView>,
}

fn ask<R: Request + Encodable>(addr: &str, version: i16, req: &R) -> Result<R::Response, String>
where
    R::Response: Decodable,
{
    let mut s = TcpStream::connect(addr).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(1)
        .with_client_id(Some(StrBytes::from_static_str("sluice-verify")));
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&[0; 4]);
    header
        .encode(&mut buf, R::header_version(version))
        .map_err(|e| e.to_string())?;
    req.encode(&mut buf, version).map_err(|e| e.to_string())?;
    let len = (buf.len() - 4) as u32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    s.write_all(&buf).map_err(|e| format!("{addr}: {e}"))?;
    let mut prefix = [0u8; 4];
    s.read_exact(&mut prefix)
        .map_err(|e| format!("{addr}: {e}"))?;
    let len = u32::from_be_bytes(prefix) as usize;
    if len > 64 << 20 {
        return Err(format!("{addr}: a {len} byte answer"));
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)
        .map_err(|e| format!("{addr}: {e}"))?;
    let mut body = Bytes::from(body);
    let api = ApiKey::try_from(R::KEY).map_err(|_| "unknown API".to_string())?;
    ResponseHeader::decode(&mut body, api.response_header_version(version))
        .map_err(|e| e.to_string())?;
    R::Response::decode(&mut body, version).map_err(|e| e.to_string())
}

/// The first of `bootstrap`'s brokers that answers `f`.
fn first_answer<T>(bootstrap: &str, f: impl Fn(&str) -> Result<T, String>) -> Result<T, String> {
    let mut last = String::from("no bootstrap server");
    for addr in bootstrap
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
    {
        match f(addr) {
            Ok(v) => return Ok(v),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Metadata (v9) of `topic`: the controller, live brokers, partitions.
pub fn view(bootstrap: &str, topic: &str) -> Result<ClusterView, String> {
    first_answer(bootstrap, |addr| {
        let req =
            MetadataRequest::default().with_topics(Some(vec![MetadataRequestTopic::default()
                .with_name(Some(TopicName(StrBytes::from_string(topic.to_string()))))]));
        let resp: MetadataResponse = ask(addr, 9, &req)?;
        let mut view = ClusterView {
            controller: resp.controller_id.0,
            partitions: Vec::new(),
        };
        if let Some(t) = resp.topics.first() {
            for p in &t.partitions {
                view.partitions.push(PartitionView {
                    partition: p.partition_index,
                    leader: p.leader_id.0,
                    replicas: p.replica_nodes.iter().map(|b| b.0).collect(),
                    isr: p.isr_nodes.iter().map(|b| b.0).collect(),
                });
            }
            view.partitions.sort_by_key(|p| p.partition);
        }
        Ok(view)
    })
}

/// Creates `topic`, with each partition's replicas as `assignment` says
/// when it is not empty (then `partitions` and `replication_factor` are
/// taken from it); one that exists already is fine.
pub fn create_topic(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    replication_factor: i16,
    configs: &[(String, String)],
    assignment: &[Vec<i32>],
) -> Result<(), String> {
    use kafka_protocol::messages::create_topics_request::CreatableReplicaAssignment;
    use kafka_protocol::messages::BrokerId;
    let (partitions, replication_factor) = if assignment.is_empty() {
        (partitions, replication_factor)
    } else {
        (-1, -1)
    };
    first_answer(bootstrap, |addr| {
        let t = CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_num_partitions(partitions)
            .with_replication_factor(replication_factor)
            .with_assignments(
                assignment
                    .iter()
                    .zip(0..)
                    .map(|(replicas, index)| {
                        CreatableReplicaAssignment::default()
                            .with_partition_index(index)
                            .with_broker_ids(replicas.iter().copied().map(BrokerId).collect())
                    })
                    .collect(),
            )
            .with_configs(
                configs
                    .iter()
                    .map(|(k, v)| {
                        CreatableTopicConfig::default()
                            .with_name(StrBytes::from_string(k.clone()))
                            .with_value(Some(StrBytes::from_string(v.clone())))
                    })
                    .collect(),
            );
        let req = CreateTopicsRequest::default()
            .with_topics(vec![t])
            .with_timeout_ms(30_000);
        let resp = ask(addr, 5, &req)?;
        match resp.topics.first().map(|t| t.error_code) {
            // 36: TOPIC_ALREADY_EXISTS.
            Some(0) | Some(36) => Ok(()),
            Some(code) => Err(format!("creating {topic}: error {code}")),
            None => Err(format!("creating {topic}: no answer")),
        }
    })
}

/// Sets topic configs (IncrementalAlterConfigs, SET).
pub fn set_topic_configs(
    bootstrap: &str,
    topic: &str,
    configs: &[(String, String)],
) -> Result<(), String> {
    use kafka_protocol::messages::incremental_alter_configs_request::{
        AlterConfigsResource, AlterableConfig,
    };
    use kafka_protocol::messages::IncrementalAlterConfigsRequest;
    first_answer(bootstrap, |addr| {
        let resource = AlterConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(StrBytes::from_string(topic.to_string()))
            .with_configs(
                configs
                    .iter()
                    .map(|(k, v)| {
                        AlterableConfig::default()
                            .with_name(StrBytes::from_string(k.clone()))
                            .with_config_operation(0)
                            .with_value(Some(StrBytes::from_string(v.clone())))
                    })
                    .collect(),
            );
        let req = IncrementalAlterConfigsRequest::default().with_resources(vec![resource]);
        let resp = ask(addr, 0, &req)?;
        match resp.responses.first().map(|r| r.error_code) {
            Some(0) => Ok(()),
            Some(code) => Err(format!("setting configs of {topic}: error {code}")),
            None => Err(format!("setting configs of {topic}: no answer")),
        }
    })
}
