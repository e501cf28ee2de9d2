//! Several brokers as one cluster: node ids 1..=n, every one a controller
//! voter unless told otherwise, timeouts short enough for a test.
//! Dropping it kills them all.

use std::collections::BTreeSet;
use std::time::Duration;

use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{CreateTopicsRequest, MetadataRequest, ProduceRequest};
use kafka_protocol::protocol::{Decodable, HeaderVersion, Request};

use super::poll_until;
use super::raw::{batch, connect, produce_req, read_reply, send, topic_name, typed_request, Reply};

use super::{free_port, Broker};

/// The brokers of one cluster; dropping it kills them all.
pub struct Cluster {
    pub brokers: Vec<Broker>,
}

impl Cluster {
    /// Starts `n` brokers, node ids 1..=n, all voters, with election
    /// timeouts short enough for a test, and waits until each is ready.
    pub fn start(n: usize) -> Cluster {
        Cluster::start_with(n, &[])
    }

    /// [`Cluster::start`] with `extra` settings on every broker.
    pub fn start_with(n: usize, extra: &[(&str, &str)]) -> Cluster {
        Cluster::start_voters(n, n, extra)
    }

    /// `n` brokers of which the first `voters` are controller voters and
    /// the rest brokers only (`process.roles=broker`, Raft learners).
    pub fn start_voters(n: usize, voters: usize, extra: &[(&str, &str)]) -> Cluster {
        let mut ports = BTreeSet::new();
        while ports.len() < 2 * n {
            ports.insert(free_port());
        }
        let ports: Vec<u16> = ports.into_iter().collect();
        let voter_list: Vec<String> = (0..voters)
            .map(|i| format!("{}@127.0.0.1:{}", i + 1, ports[n + i]))
            .collect();
        let mut brokers: Vec<Broker> = (0..n)
            .map(|i| {
                let settings = [
                    ("node.id", (i + 1).to_string()),
                    (
                        "listeners",
                        format!(
                            "PLAINTEXT://127.0.0.1:{},CONTROLLER://127.0.0.1:{}",
                            ports[i],
                            ports[n + i]
                        ),
                    ),
                    ("controller.quorum.voters", voter_list.join(",")),
                    ("controller.quorum.election.timeout.ms", "300".to_string()),
                    ("controller.quorum.fetch.timeout.ms", "600".to_string()),
                    (
                        "process.roles",
                        if i < voters {
                            "broker,controller"
                        } else {
                            "broker"
                        }
                        .to_string(),
                    ),
                ];
                let settings: Vec<(String, String)> = settings
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .chain(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())))
                    .collect();
                Broker::spawn_with(ports[i], &settings)
            })
            .collect();
        for broker in &mut brokers {
            broker.wait_ready();
        }
        Cluster { brokers }
    }

    pub fn broker(&self, node: i32) -> &Broker {
        &self.brokers[node as usize - 1]
    }
}

impl Cluster {
    /// `host:port,…` of every broker.
    pub fn bootstrap(&self) -> String {
        self.brokers
            .iter()
            .map(|b| b.addr())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Bound on every wait for the cluster to reach a state.
pub const SETTLE: Duration = Duration::from_secs(30);

/// Sends `req` to `addr` on a fresh connection and decodes the answer.
pub fn ask<R: Request>(addr: &str, version: i16, req: &R) -> R::Response {
    let mut s = connect(addr);
    send(&mut s, &typed_request(version, 1, req).0).expect("request sent");
    let Reply::Frame(body) = read_reply(&mut s) else {
        panic!("{addr}: no answer to api key {}", R::KEY)
    };
    let mut buf = bytes::Bytes::from(body);
    let _header = kafka_protocol::messages::ResponseHeader::decode(
        &mut buf,
        R::Response::header_version(version),
    )
    .expect("response header");
    R::Response::decode(&mut buf, version).expect("response body")
}

/// CreateTopics' error code for `name`.
pub fn try_create(broker: &Broker, name: &str, partitions: i32, replication: i16) -> i16 {
    ask(
        &broker.addr(),
        5,
        &CreateTopicsRequest::default()
            .with_topics(vec![CreatableTopic::default()
                .with_name(topic_name(name))
                .with_num_partitions(partitions)
                .with_replication_factor(replication)])
            .with_timeout_ms(10_000),
    )
    .topics[0]
        .error_code
}

/// Metadata (v9) of `topic` from `broker`.
pub fn metadata_of(broker: &Broker, topic: &str) -> kafka_protocol::messages::MetadataResponse {
    let req = MetadataRequest::default().with_topics(Some(vec![
        MetadataRequestTopic::default().with_name(Some(topic_name(topic)))
    ]));
    ask(&broker.addr(), 9, &req)
}

/// Partition `p` of `topic` as `broker` describes it: (leader, ISR).
pub fn leader_and_isr(broker: &Broker, topic: &str, p: i32) -> (i32, Vec<i32>) {
    let resp = metadata_of(broker, topic);
    let part = resp.topics[0]
        .partitions
        .iter()
        .find(|x| x.partition_index == p)
        .expect("the partition is described");
    let mut isr: Vec<i32> = part.isr_nodes.iter().map(|b| b.0).collect();
    isr.sort_unstable();
    (part.leader_id.0, isr)
}

/// Produces one record with `acks` straight to `broker`; the partition's
/// error code.
pub fn produce_raw(broker: &Broker, topic: &str, p: i32, acks: i16) -> i16 {
    produce_request(
        broker,
        produce_req(topic, p, batch(&["raw"])).with_acks(acks),
    )
}

/// Sends a Produce v7 of one partition to `broker`; its error code.
pub fn produce_request(broker: &Broker, req: ProduceRequest) -> i16 {
    let mut s = connect(&broker.addr());
    send(&mut s, &typed_request(7, 3, &req).0).unwrap();
    let Reply::Frame(body) = read_reply(&mut s) else {
        panic!("no produce answer from {}", broker.addr())
    };
    let mut buf = bytes::Bytes::from(body);
    let _ = kafka_protocol::messages::ResponseHeader::decode(&mut buf, 0).unwrap();
    kafka_protocol::messages::ProduceResponse::decode(&mut buf, 7)
        .unwrap()
        .responses[0]
        .partition_responses[0]
        .error_code
}

/// Produces one record with acks=all straight to `broker`, which leads
/// `p`, until it is committed. NOT_LEADER_OR_FOLLOWER (nothing appended)
/// is tried again: with the tests' short sessions a leader on a loaded
/// machine can miss a heartbeat, be fenced and be unfenced a moment later.
/// So is UNKNOWN_TOPIC_OR_PARTITION: a leader named by another broker's
/// metadata may not have applied a new topic yet. Any other error fails
/// the test.
pub fn produce_committed(broker: &Broker, topic: &str, p: i32) {
    poll_until(SETTLE, "a record committed", || {
        match produce_raw(broker, topic, p, -1) {
            0 => Some(()),
            3 | 6 => None,
            code => panic!(
                "producing to {topic}-{p} on {}: error {code}",
                broker.addr()
            ),
        }
    });
}

pub fn signal(broker: &Broker, sig: i32) {
    let pid = broker.pid().expect("running") as libc::pid_t;
    // SAFETY: kill(2) on our own child, which has not been reaped.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
}

/// Waits until `broker`'s process is stopped (state T).
pub fn wait_stopped(broker: &Broker) {
    let pid = broker.pid().expect("running");
    poll_until(SETTLE, "the broker to stop", || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let state = stat.rsplit_once(") ")?.1.chars().next()?;
        (state == 'T').then_some(())
    });
}

/// Sets topic config `key` to `value` (IncrementalAlterConfigs v0, SET).
pub fn set_topic_config(broker: &Broker, topic: &str, key: &str, value: &str) {
    use kafka_protocol::messages::incremental_alter_configs_request::{
        AlterConfigsResource, AlterableConfig,
    };
    use kafka_protocol::messages::IncrementalAlterConfigsRequest;
    use kafka_protocol::protocol::StrBytes;
    let req = IncrementalAlterConfigsRequest::default().with_resources(vec![
        AlterConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(StrBytes::from_string(topic.to_string()))
            .with_configs(vec![AlterableConfig::default()
                .with_name(StrBytes::from_string(key.to_string()))
                .with_config_operation(0)
                .with_value(Some(StrBytes::from_string(value.to_string())))]),
    ]);
    let resp = ask(&broker.addr(), 0, &req);
    assert_eq!(resp.responses[0].error_code, 0, "setting {key}={value}");
}

/// The start of the unclean-election cases: three brokers with short
/// sessions, `topic` with one partition on two of them, a first record
/// committed by both, then the follower paused until it leaves the ISR,
/// so that the leader alone is in sync. Returns the cluster and the
/// (leader, paused follower, broker holding no replica).
pub fn leader_alone_in_sync(topic: &str) -> (Cluster, i32, i32, i32) {
    let cluster = Cluster::start_with(
        3,
        &[
            ("broker.heartbeat.interval.ms", "100"),
            ("broker.session.timeout.ms", "1000"),
            ("replica.lag.time.max.ms", "1000"),
            ("auto.leader.rebalance.enable", "false"),
        ],
    );
    assert_eq!(try_create(cluster.broker(1), topic, 1, 2), 0);
    let (leader, isr) = poll_until(SETTLE, "both replicas in sync", || {
        let (leader, isr) = leader_and_isr(cluster.broker(1), topic, 0);
        (leader > 0 && isr.len() == 2).then_some((leader, isr))
    });
    let follower = *isr.iter().find(|r| **r != leader).unwrap();
    let third = (1..=3).find(|n| !isr.contains(n)).unwrap();
    poll_until(SETTLE, "a first committed record", || {
        (produce_raw(cluster.broker(leader), topic, 0, -1) == 0).then_some(())
    });
    signal(cluster.broker(follower), libc::SIGSTOP);
    wait_stopped(cluster.broker(follower));
    poll_until(SETTLE, "the paused follower to leave the ISR", || {
        (leader_and_isr(cluster.broker(leader), topic, 0).1 == [leader]).then_some(())
    });
    (cluster, leader, follower, third)
}
