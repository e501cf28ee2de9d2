//! Three brokers, each a controller voter, as real processes: the quorum
//! forms on first start over the CONTROLLER listeners and names one cluster
//! id; every broker serves the same metadata and reports the Raft leader as
//! the controller; a change made on a broker that does not lead is
//! forwarded to the one that does; killing the active controller elects
//! another, loses no committed metadata, and the killed broker catches up
//! when it returns. A log directory of another cluster is refused.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::{
    CreateTopicsRequest, DescribeClusterRequest, DescribeClusterResponse, FetchRequest,
    MetadataRequest, OffsetForLeaderEpochRequest,
};
use kafka_protocol::protocol::Decodable;

use common::cluster::{
    ask, leader_alone_in_sync, leader_and_isr, metadata_of, produce_committed, produce_raw,
    produce_request, set_topic_config, signal, try_create, wait_stopped, Cluster, SETTLE,
};
use common::raw::{
    batch, connect, produce_req, read_reply, send, topic_name, typed_request, Reply,
};
use common::{consume, poll_until, produce, values, Broker};

fn describe(broker: &Broker) -> DescribeClusterResponse {
    ask(&broker.addr(), 0, &DescribeClusterRequest::default())
}

fn create_topic(broker: &Broker, name: &str) {
    let code = try_create(broker, name, 2, 1);
    assert_eq!(code, 0, "creating {name} on {}", broker.addr());
}

/// The topics `broker` serves that are named in `names`.
fn topics_seen(broker: &Broker, names: &[&str]) -> BTreeSet<String> {
    let req = MetadataRequest::default().with_topics(Some(
        names
            .iter()
            .map(|n| MetadataRequestTopic::default().with_name(Some(topic_name(n))))
            .collect(),
    ));
    ask(&broker.addr(), 9, &req)
        .topics
        .into_iter()
        .filter(|t| t.error_code == 0)
        .filter_map(|t| t.name.map(|n| n.0.to_string()))
        .collect()
}

/// Waits until every broker in `brokers` agrees on an active controller
/// other than `not`, and returns it.
fn agreed_controller(brokers: &[&Broker], not: Option<i32>) -> i32 {
    poll_until(SETTLE, "the brokers to agree on a controller", || {
        let seen: BTreeSet<i32> = brokers
            .iter()
            .map(|b| describe(b).controller_id.0)
            .collect();
        let only = *seen.iter().next()?;
        (seen.len() == 1 && only > 0 && Some(only) != not).then_some(only)
    })
}

#[test]
fn three_voters_form_one_cluster_that_every_broker_describes_alike() {
    let cluster = Cluster::start(3);
    let all: Vec<&Broker> = cluster.brokers.iter().collect();
    let controller = agreed_controller(&all, None);
    let first = describe(cluster.broker(1));
    assert!(!first.cluster_id.is_empty(), "no cluster id");
    for broker in &all {
        let described = poll_until(SETTLE, "every broker to be registered", || {
            let d = describe(broker);
            (d.brokers.len() == 3).then_some(d)
        });
        assert_eq!(described.cluster_id, first.cluster_id, "{}", broker.addr());
        let ids: Vec<i32> = described.brokers.iter().map(|b| b.broker_id.0).collect();
        assert_eq!(ids, [1, 2, 3]);
        let props = std::fs::read_to_string(broker.data_dir().join("meta.properties"))
            .expect("meta.properties written");
        assert!(
            props.contains(&format!("cluster.id={}", first.cluster_id.as_str())),
            "{props}"
        );
    }
    // A change proposed on a broker that does not lead reaches every one.
    let follower = (1..=3).find(|n| *n != controller).unwrap();
    create_topic(cluster.broker(follower), "made-on-a-follower");
    for broker in &all {
        poll_until(SETTLE, "every broker to serve the topic", || {
            (topics_seen(broker, &["made-on-a-follower"]).len() == 1).then_some(())
        });
    }
}

#[test]
fn killing_the_active_controller_elects_another_and_loses_no_metadata() {
    let mut cluster = Cluster::start(3);
    let controller = {
        let all: Vec<&Broker> = cluster.brokers.iter().collect();
        agreed_controller(&all, None)
    };
    create_topic(cluster.broker(controller), "before");
    cluster.brokers[controller as usize - 1].kill9();

    let survivors: Vec<i32> = (1..=3).filter(|n| *n != controller).collect();
    let next = {
        let left: Vec<&Broker> = survivors.iter().map(|n| cluster.broker(*n)).collect();
        agreed_controller(&left, Some(controller))
    };
    assert!(survivors.contains(&next));
    for n in &survivors {
        assert_eq!(
            topics_seen(cluster.broker(*n), &["before"]).len(),
            1,
            "node {n} lost a committed topic"
        );
    }
    let other = survivors.iter().find(|n| **n != next).copied().unwrap();
    create_topic(cluster.broker(other), "after");

    let killed = &mut cluster.brokers[controller as usize - 1];
    killed.spawn_again();
    killed.wait_ready();
    poll_until(SETTLE, "the restarted broker to catch up", || {
        (topics_seen(cluster.broker(controller), &["before", "after"]).len() == 2).then_some(())
    });
}

/// openraft 0.9 has no check-quorum: an active controller cut off from the
/// other voters goes on believing it leads. What is proposed on it must be
/// answered with an error once it has heard from no quorum for its lease,
/// not wait for as long as the cut lasts; and once the others are back
/// the quorum takes changes again.
#[test]
fn an_active_controller_cut_off_from_the_quorum_answers_proposals_with_an_error() {
    let cluster = Cluster::start(3);
    let controller = {
        let all: Vec<&Broker> = cluster.brokers.iter().collect();
        agreed_controller(&all, None)
    };
    let others: Vec<i32> = (1..=3).filter(|n| *n != controller).collect();
    for n in &others {
        signal(cluster.broker(*n), libc::SIGSTOP);
        wait_stopped(cluster.broker(*n));
    }
    // Before the fix this request had no answer at all while the others
    // were stopped (the test's reads give up after ten seconds).
    let code = try_create(cluster.broker(controller), "while-cut-off", 1, 1);
    assert_eq!(
        code,
        41,
        "CreateTopics on a cut-off controller: NOT_CONTROLLER expected\n{}",
        cluster.broker(controller).stderr()
    );
    for n in &others {
        signal(cluster.broker(*n), libc::SIGCONT);
    }
    // The record given up on may still have been committed since (the
    // controller kept it in its log): a retry then finds the topic.
    poll_until(SETTLE, "the quorum to take changes again", || {
        matches!(
            try_create(cluster.broker(others[0]), "while-cut-off", 1, 1),
            0 | 36
        )
        .then_some(())
    });
    // The old controller may still be learning who leads now: a client
    // retries NOT_CONTROLLER (41), and so does this one. A retry after a
    // creation that was applied finds the topic (36).
    poll_until(SETTLE, "the old controller to take a creation", || {
        matches!(
            try_create(cluster.broker(controller), "after-the-cut", 2, 1),
            0 | 36
        )
        .then_some(())
    });
    for broker in &cluster.brokers {
        poll_until(SETTLE, "every broker to serve both topics", || {
            (topics_seen(broker, &["while-cut-off", "after-the-cut"]).len() == 2).then_some(())
        });
    }
}

#[test]
fn a_broker_that_is_not_a_voter_follows_the_metadata_log_and_takes_replicas() {
    // Three voters and a broker alone (process.roles=broker): a learner.
    let mut cluster = Cluster::start_voters(4, 3, &[]);
    let voters: Vec<&Broker> = cluster.brokers[..3].iter().collect();
    let controller = agreed_controller(&voters, None);
    for broker in &cluster.brokers {
        poll_until(SETTLE, "every broker to be registered", || {
            let d = describe(broker);
            let ids: Vec<i32> = d.brokers.iter().map(|b| b.broker_id.0).collect();
            (ids == [1, 2, 3, 4] && d.controller_id == controller).then_some(())
        });
    }
    // A topic made through the learner (forwarded to the active
    // controller), with a replica on every broker and leaders spread over
    // all four.
    assert_eq!(try_create(cluster.broker(4), "everywhere", 4, 4), 0);
    let leaders: BTreeSet<i32> = poll_until(SETTLE, "every partition to have a leader", || {
        let leaders: BTreeSet<i32> = (0..4)
            .map(|p| leader_and_isr(cluster.broker(4), "everywhere", p).0)
            .collect();
        leaders.iter().all(|l| *l > 0).then_some(leaders)
    });
    assert_eq!(leaders, BTreeSet::from([1, 2, 3, 4]));
    assert!(
        cluster
            .broker(4)
            .stderr()
            .contains("following the metadata log as a learner"),
        "broker 4 did not join as a learner"
    );
    let input: String = (0..50).map(|i| format!("l{i}\n")).collect();
    produce(
        cluster.broker(4),
        "everywhere",
        &["-X", "acks=all"],
        input.as_bytes(),
    );
    assert_eq!(
        values(&consume(cluster.broker(4), "everywhere", &["-c", "50"])).len(),
        50
    );

    // The learner follows a new active controller, and catches up after
    // its own restart.
    cluster.brokers[controller as usize - 1].kill9();
    let survivors: Vec<&Broker> = (1..=3)
        .filter(|n| *n != controller)
        .map(|n| cluster.broker(n))
        .collect();
    agreed_controller(&survivors, Some(controller));
    create_topic(cluster.broker(4), "after-the-controller");
    let learner = &mut cluster.brokers[3];
    learner.stop();
    create_topic(cluster.broker(survivors_first(controller)), "while-away");
    let learner = &mut cluster.brokers[3];
    learner.spawn_again();
    learner.wait_ready();
    poll_until(SETTLE, "the learner to catch up", || {
        let names = ["everywhere", "after-the-controller", "while-away"];
        (topics_seen(cluster.broker(4), &names).len() == 3).then_some(())
    });
}

#[test]
fn default_replication_factor_sets_the_replicas_of_created_and_auto_created_topics() {
    let cluster = Cluster::start_with(3, &[("default.replication.factor", "3")]);
    let replicas = |topic: &str| -> Vec<usize> {
        poll_until(SETTLE, "every partition to have a leader", || {
            let resp = metadata_of(cluster.broker(1), topic);
            let parts = &resp.topics.first()?.partitions;
            (!parts.is_empty() && parts.iter().all(|p| p.leader_id.0 > 0))
                .then(|| parts.iter().map(|p| p.replica_nodes.len()).collect())
        })
    };
    // CreateTopics with -1 takes the broker's default.
    assert_eq!(try_create(cluster.broker(1), "by-default", 2, -1), 0);
    assert_eq!(replicas("by-default"), [3, 3]);
    // As kcat -L shows it: per partition a leader, three replicas, three
    // in sync, the leaders spread.
    let leaders = poll_until(SETTLE, "kcat -L to show both partitions in sync", || {
        let out = common::kcat(
            &["-L", "-J", "-b", &cluster.bootstrap(), "-t", "by-default"],
            None,
        );
        let md: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let parts = md["topics"][0]["partitions"].as_array()?.clone();
        let ids = |list: &serde_json::Value| -> Option<BTreeSet<i64>> {
            list.as_array()?.iter().map(|r| r["id"].as_i64()).collect()
        };
        let all = BTreeSet::from([1, 2, 3]);
        (parts.len() == 2
            && parts.iter().all(|p| {
                ids(&p["replicas"]).as_ref() == Some(&all) && ids(&p["isrs"]).as_ref() == Some(&all)
            }))
        .then(|| {
            parts
                .iter()
                .map(|p| p["leader"].as_i64())
                .collect::<BTreeSet<_>>()
        })
    });
    assert_eq!(
        leaders.len(),
        2,
        "both partitions led by one broker: {leaders:?}"
    );
    // A producer's first send to an unknown topic creates it, also with
    // three replicas, and acks=all waits for all of them.
    produce(
        cluster.broker(2),
        "made-on-use",
        &["-X", "acks=all"],
        b"first\n",
    );
    assert_eq!(replicas("made-on-use"), [3]);
    assert_eq!(
        values(&consume(cluster.broker(3), "made-on-use", &["-c", "1"])),
        ["first"]
    );
}

/// A voter other than `dead`.
fn survivors_first(dead: i32) -> i32 {
    (1..=3).find(|n| *n != dead).unwrap()
}

#[test]
fn a_log_directory_of_another_cluster_is_refused() {
    let mut broker = Broker::start();
    let props_path = broker.data_dir().join("meta.properties");
    let props = std::fs::read_to_string(&props_path).expect("meta.properties written");
    assert!(props.contains("node.id=1"), "{props}");
    broker.stop();
    let foreign: String = props
        .lines()
        .map(|line| {
            if line.starts_with("cluster.id=") {
                "cluster.id=some-other-cluster".to_string()
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&props_path, foreign).unwrap();
    broker.spawn_again();
    let status = broker.wait_for_exit(SETTLE);
    assert!(
        !status.success(),
        "started on another cluster's log directory"
    );
    assert!(
        broker
            .stderr()
            .contains("belongs to cluster some-other-cluster"),
        "no reason given"
    );
}

#[test]
fn partitions_and_groups_spread_over_the_brokers_and_clients_follow_their_leaders() {
    let cluster = Cluster::start(3);
    assert_eq!(try_create(cluster.broker(1), "spread", 6, 1), 0);
    // RF above the brokers: INVALID_REPLICATION_FACTOR (38).
    assert_eq!(try_create(cluster.broker(1), "too-many", 1, 4), 38);

    let metadata = poll_until(SETTLE, "broker 2 to serve the topic", || {
        let resp = metadata_of(cluster.broker(2), "spread");
        (resp.topics[0].error_code == 0).then_some(resp)
    });
    let leaders: Vec<i32> = {
        let mut parts = metadata.topics[0].partitions.clone();
        parts.sort_by_key(|p| p.partition_index);
        parts.iter().map(|p| p.leader_id.0).collect()
    };
    for node in 1..=3 {
        assert_eq!(
            leaders.iter().filter(|l| **l == node).count(),
            2,
            "two leaders each: {leaders:?}"
        );
    }

    // A real client bootstrapped from one broker writes every partition
    // through its leader; another, bootstrapped elsewhere, reads them back.
    for p in 0..6 {
        let value = format!("m{p}\n");
        produce(
            cluster.broker(1),
            "spread",
            &["-p", &p.to_string()],
            value.as_bytes(),
        );
    }
    for p in 0..6 {
        let got = consume(
            cluster.broker(3),
            "spread",
            &["-p", &p.to_string(), "-c", "1"],
        );
        assert_eq!(values(&got), [format!("m{p}")]);
    }

    // A broker that does not lead a partition refuses its produce.
    let (p, leader) = (0, leaders[0]);
    let other = (1..=3).find(|n| *n != leader).unwrap();
    let mut s = connect(&cluster.broker(other).addr());
    send(
        &mut s,
        &typed_request(7, 9, &produce_req("spread", p, batch(&["x"]))).0,
    )
    .unwrap();
    let Reply::Frame(body) = read_reply(&mut s) else {
        panic!("no produce answer")
    };
    let mut buf = bytes::Bytes::from(body);
    let _ = kafka_protocol::messages::ResponseHeader::decode(&mut buf, 0).unwrap();
    let resp = kafka_protocol::messages::ProduceResponse::decode(&mut buf, 7).unwrap();
    assert_eq!(
        resp.responses[0].partition_responses[0].error_code, 6,
        "NOT_LEADER_OR_FOLLOWER from a broker that does not lead"
    );

    // Every broker names the same coordinator for a group, groups spread
    // over the brokers, and a group request to another broker is refused
    // with NOT_COORDINATOR (16).
    use kafka_protocol::messages::{FindCoordinatorRequest, GroupId, HeartbeatRequest};
    use kafka_protocol::protocol::StrBytes;
    let mut coordinators = BTreeSet::new();
    for g in 0..30 {
        let group = format!("group-{g}");
        let answers: BTreeSet<i32> = (1..=3)
            .map(|n| {
                let req = FindCoordinatorRequest::default()
                    .with_key(StrBytes::from_string(group.clone()));
                let resp = ask(&cluster.broker(n).addr(), 2, &req);
                assert_eq!(resp.error_code, 0, "{group} from {n}");
                resp.node_id.0
            })
            .collect();
        assert_eq!(answers.len(), 1, "{group}: {answers:?}");
        let coordinator = *answers.iter().next().unwrap();
        coordinators.insert(coordinator);
        let elsewhere = (1..=3).find(|n| *n != coordinator).unwrap();
        let hb = HeartbeatRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group.clone())))
            .with_member_id(StrBytes::from_static_str("m"))
            .with_generation_id(1);
        let resp = ask(&cluster.broker(elsewhere).addr(), 1, &hb);
        assert_eq!(resp.error_code, 16, "{group} at {elsewhere}");
    }
    assert_eq!(
        coordinators.len(),
        3,
        "groups coordinated by {coordinators:?}"
    );
}

/// The bytes of every segment file of `tp` (`<topic>-<p>`) in `broker`'s
/// log directory, in file-name order.
fn segments(broker: &Broker, tp: &str) -> Vec<(String, Vec<u8>)> {
    let dir = broker.data_dir().join(tp);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|name| name.ends_with(".log"))
                .map(|name| {
                    let bytes = std::fs::read(dir.join(&name)).unwrap_or_default();
                    (name, bytes)
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

#[test]
fn three_replicas_hold_the_same_bytes_and_acks_all_answers_once_they_do() {
    let cluster = Cluster::start(3);
    assert_eq!(try_create(cluster.broker(1), "replicated", 2, 3), 0);
    let input: String = (0..200).map(|i| format!("r{i}\n")).collect();
    // kcat's producer asks acks=all (librdkafka's default): each message is
    // acknowledged only once every in-sync replica has it.
    for p in 0..2 {
        produce(
            cluster.broker(2),
            "replicated",
            &["-p", &p.to_string(), "-X", "acks=all"],
            input.as_bytes(),
        );
    }
    for p in 0..2 {
        let got = consume(
            cluster.broker(3),
            "replicated",
            &["-p", &p.to_string(), "-c", "200"],
        );
        assert_eq!(values(&got).len(), 200, "partition {p}");
        // Every replica holds the leader's batches byte for byte.
        let tp = format!("replicated-{p}");
        let leader = segments(cluster.broker(1), &tp);
        assert!(
            !leader.is_empty() && leader[0].1.len() > 200,
            "{tp} on broker 1"
        );
        for n in 2..=3 {
            poll_until(SETTLE, "the replicas to match", || {
                (segments(cluster.broker(n), &tp) == leader).then_some(())
            });
        }
    }
}

#[test]
fn followers_wait_for_replica_fetch_min_bytes_before_the_leader_answers_them() {
    // Followers ask for at least 512 KiB and let their leader hold a fetch
    // for up to a minute.
    let cluster = Cluster::start_with(
        3,
        &[
            ("replica.fetch.min.bytes", "524288"),
            ("replica.fetch.wait.max.ms", "60000"),
            ("replica.lag.time.max.ms", "120000"),
        ],
    );
    assert_eq!(try_create(cluster.broker(1), "gathered", 1, 3), 0);
    // The leader, once all three replicas are in sync. Where a loaded
    // machine makes a broker miss a heartbeat, it may change.
    let leader = || {
        poll_until(SETTLE, "a leader and three in sync", || {
            let (leader, isr) = leader_and_isr(cluster.broker(1), "gathered", 0);
            (leader > 0 && isr.len() == 3).then_some(leader)
        })
    };
    let produce_all = |text: &str, timeout_ms| {
        let req = produce_req("gathered", 0, batch(&[text]))
            .with_acks(-1)
            .with_timeout_ms(timeout_ms);
        produce_request(cluster.broker(leader()), req)
    };
    // A small record is less than the followers wait for: they do not get
    // it, so acks=all times out (REQUEST_TIMED_OUT, 7). The first fetches
    // of a partition just created do not wait, and a leader may move, so
    // a record may still be committed (0) or refused (6); and the leader
    // named by broker 1's metadata may not have applied the topic yet
    // (UNKNOWN_TOPIC_OR_PARTITION, 3, retriable as in Kafka): try again.
    let mut answers = Vec::new();
    poll_until(
        SETTLE,
        "an acks=all produce held by the followers' minimum",
        || {
            let code = produce_all("small", 1500);
            answers.push(code);
            assert!([0, 3, 6, 7].contains(&code), "answers {answers:?}");
            (code == 7).then_some(())
        },
    );
    // 600 KB more pass the followers' minimum: their held fetches are
    // answered at once, long before their minute, and acks=all succeeds.
    let big = "x".repeat(600_000);
    poll_until(SETTLE, "600 KB committed", || {
        match produce_all(&big, 20_000) {
            0 => Some(()),
            3 | 6 => None,
            code => panic!("producing 600 KB: error {code}"),
        }
    });
}

#[test]
fn a_paused_follower_leaves_the_isr_and_rejoins_and_acks_all_needs_min_insync_replicas() {
    use kafka_protocol::protocol::StrBytes;
    let mut cluster = Cluster::start_with(
        3,
        &[
            ("replica.lag.time.max.ms", "1000"),
            ("min.insync.replicas", "2"),
        ],
    );
    assert_eq!(try_create(cluster.broker(1), "isr", 1, 3), 0);
    let (leader, isr) = poll_until(SETTLE, "the partition to have a leader", || {
        let (leader, isr) = leader_and_isr(cluster.broker(1), "isr", 0);
        (leader > 0).then_some((leader, isr))
    });
    assert_eq!(isr, [1, 2, 3]);
    let followers: Vec<i32> = (1..=3).filter(|n| *n != leader).collect();
    // The leader may learn of the topic a moment after broker 1 (retriable
    // UNKNOWN_TOPIC_OR_PARTITION meanwhile, as a client would retry).
    poll_until(SETTLE, "an acks=all produce through the leader", || {
        (produce_raw(cluster.broker(leader), "isr", 0, -1) == 0).then_some(())
    });

    // A follower that stops fetching leaves the ISR after
    // replica.lag.time.max.ms; acks=all goes on with the two left.
    signal(cluster.broker(followers[0]), libc::SIGSTOP);
    poll_until(SETTLE, "the paused follower to leave the ISR", || {
        let (_, isr) = leader_and_isr(cluster.broker(leader), "isr", 0);
        (!isr.contains(&followers[0])).then_some(())
    });
    assert_eq!(produce_raw(cluster.broker(leader), "isr", 0, -1), 0);
    signal(cluster.broker(followers[0]), libc::SIGCONT);
    poll_until(SETTLE, "the follower to rejoin the ISR", || {
        let (_, isr) = leader_and_isr(cluster.broker(leader), "isr", 0);
        (isr == [1, 2, 3]).then_some(())
    });

    // A topic that wants all three in sync (min.insync.replicas=3): with a
    // follower gone, acks=all is refused with NOT_ENOUGH_REPLICAS (19)
    // before anything is appended, and acks=1 still works. (Killing two of
    // three brokers would take the controller quorum with them, and with
    // it any ISR change: acks=all would time out, as in Kafka's combined
    // mode.)
    let strict = CreatableTopic::default()
        .with_name(topic_name("strict"))
        .with_num_partitions(1)
        .with_replication_factor(3)
        .with_configs(vec![CreatableTopicConfig::default()
            .with_name(StrBytes::from_static_str("min.insync.replicas"))
            .with_value(Some(StrBytes::from_static_str("3")))]);
    let created = ask(
        &cluster.broker(1).addr(),
        5,
        &CreateTopicsRequest::default()
            .with_topics(vec![strict])
            .with_timeout_ms(10_000),
    );
    assert_eq!(created.topics[0].error_code, 0);
    let strict_leader = poll_until(SETTLE, "the strict topic to have a leader", || {
        let (leader, _) = leader_and_isr(cluster.broker(1), "strict", 0);
        (leader > 0).then_some(leader)
    });
    poll_until(SETTLE, "an acks=all produce with all three in sync", || {
        (produce_raw(cluster.broker(strict_leader), "strict", 0, -1) == 0).then_some(())
    });
    let gone = (1..=3).find(|n| *n != strict_leader).unwrap();
    // Appended while all three were in sync, then the ISR shrank under it
    // before it was committed: NOT_ENOUGH_REPLICAS_AFTER_APPEND (20).
    signal(cluster.broker(gone), libc::SIGSTOP);
    assert_eq!(
        produce_raw(cluster.broker(strict_leader), "strict", 0, -1),
        20
    );
    signal(cluster.broker(gone), libc::SIGCONT);
    poll_until(SETTLE, "the follower to rejoin the strict ISR", || {
        let (_, isr) = leader_and_isr(cluster.broker(strict_leader), "strict", 0);
        (isr.len() == 3).then_some(())
    });
    cluster.brokers[gone as usize - 1].kill9();
    poll_until(SETTLE, "the dead follower to leave the ISR", || {
        let (_, isr) = leader_and_isr(cluster.broker(strict_leader), "strict", 0);
        (!isr.contains(&gone)).then_some(())
    });
    assert_eq!(
        produce_raw(cluster.broker(strict_leader), "strict", 0, -1),
        19
    );
    assert_eq!(
        produce_raw(cluster.broker(strict_leader), "strict", 0, 1),
        0
    );
}

#[test]
fn a_dead_leader_is_fenced_another_in_sync_replica_leads_and_nothing_acknowledged_is_lost() {
    let mut cluster = Cluster::start_with(
        3,
        &[
            ("broker.heartbeat.interval.ms", "100"),
            ("broker.session.timeout.ms", "1000"),
            ("replica.lag.time.max.ms", "1000"),
            ("min.insync.replicas", "2"),
        ],
    );
    assert_eq!(try_create(cluster.broker(1), "moves", 1, 3), 0);
    let leader = poll_until(SETTLE, "a leader", || {
        let (leader, isr) = leader_and_isr(cluster.broker(1), "moves", 0);
        (leader > 0 && isr.len() == 3).then_some(leader)
    });
    let survivor = (1..=3).find(|n| *n != leader).unwrap();
    let first: String = (0..100).map(|i| format!("a{i}\n")).collect();
    produce(
        cluster.broker(survivor),
        "moves",
        &["-X", "acks=all"],
        first.as_bytes(),
    );

    cluster.brokers[leader as usize - 1].kill9();
    let next = poll_until(SETTLE, "another replica to lead", || {
        let (now, isr) = leader_and_isr(cluster.broker(survivor), "moves", 0);
        (now > 0 && now != leader && !isr.contains(&leader)).then_some(now)
    });
    assert_ne!(next, leader);
    // Metadata lists the dead broker's replica as offline, and the broker
    // itself no longer.
    {
        let resp = metadata_of(cluster.broker(next), "moves");
        let offline: Vec<i32> = resp.topics[0].partitions[0]
            .offline_replicas
            .iter()
            .map(|b| b.0)
            .collect();
        assert_eq!(offline, [leader]);
        assert!(resp.brokers.iter().all(|b| b.node_id.0 != leader));
    }
    // A consumer still naming the old leader epoch is fenced (KIP-320); one
    // naming a future epoch is told this broker does not know it yet.
    let epoch = metadata_of(cluster.broker(next), "moves").topics[0].partitions[0].leader_epoch;
    assert!(epoch > 0, "the move bumped the leader epoch");
    for (named, code) in [(epoch - 1, 74), (epoch + 1, 75), (epoch, 0), (-1, 0)] {
        let fetch = FetchRequest::default()
            .with_replica_id(kafka_protocol::messages::BrokerId(-1))
            .with_max_wait_ms(0)
            .with_max_bytes(1 << 20)
            .with_topics(vec![FetchTopic::default()
                .with_topic(topic_name("moves"))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(0)
                    .with_current_leader_epoch(named)
                    .with_fetch_offset(0)
                    .with_partition_max_bytes(1 << 20)])]);
        let resp = ask(&cluster.broker(next).addr(), 12, &fetch);
        assert_eq!(
            resp.responses[0].partitions[0].error_code, code,
            "fetch naming epoch {named} (current {epoch})"
        );
        // A consumer validating its position after the leader change
        // (KIP-320) is fenced alike.
        let validate = OffsetForLeaderEpochRequest::default()
            .with_replica_id(kafka_protocol::messages::BrokerId(-1))
            .with_topics(vec![OffsetForLeaderTopic::default()
                .with_topic(topic_name("moves"))
                .with_partitions(vec![OffsetForLeaderPartition::default()
                    .with_partition(0)
                    .with_current_leader_epoch(named)
                    .with_leader_epoch(0)])]);
        let resp = ask(&cluster.broker(next).addr(), 4, &validate);
        assert_eq!(
            resp.topics[0].partitions[0].error_code, code,
            "OffsetForLeaderEpoch naming epoch {named} (current {epoch})"
        );
    }
    // Clients find the new leader and go on.
    let second: String = (0..100).map(|i| format!("b{i}\n")).collect();
    produce(
        cluster.broker(survivor),
        "moves",
        &["-X", "acks=all"],
        second.as_bytes(),
    );
    let got = consume(cluster.broker(survivor), "moves", &["-c", "200"]);
    let expected: Vec<String> = first
        .lines()
        .chain(second.lines())
        .map(String::from)
        .collect();
    assert_eq!(
        values(&got),
        expected,
        "every acknowledged message, in order, once"
    );

    // The old leader returns as a follower, catches up and rejoins the ISR.
    let old = &mut cluster.brokers[leader as usize - 1];
    old.spawn_again();
    old.wait_ready();
    poll_until(SETTLE, "the old leader to rejoin the ISR", || {
        let (_, isr) = leader_and_isr(cluster.broker(next), "moves", 0);
        (isr.len() == 3).then_some(())
    });
}

#[test]
fn an_acks_1_message_is_invisible_to_consumers_until_the_followers_have_it() {
    // The followers stay in the ISR for the whole pause (lag 30 s).
    let cluster = Cluster::start(3);
    assert_eq!(try_create(cluster.broker(1), "visible", 1, 3), 0);
    let leader = poll_until(SETTLE, "a leader", || {
        let (leader, isr) = leader_and_isr(cluster.broker(1), "visible", 0);
        (leader > 0 && isr.len() == 3).then_some(leader)
    });
    poll_until(SETTLE, "a first committed message", || {
        (produce_raw(cluster.broker(leader), "visible", 0, -1) == 0).then_some(())
    });
    let followers: Vec<i32> = (1..=3).filter(|n| *n != leader).collect();
    // A consumer's fetch of the partition from offset 1.
    let fetch_from_1 = |max_wait_ms, min_bytes| {
        FetchRequest::default()
            .with_replica_id(kafka_protocol::messages::BrokerId(-1))
            .with_max_wait_ms(max_wait_ms)
            .with_min_bytes(min_bytes)
            .with_max_bytes(1 << 20)
            .with_topics(vec![FetchTopic::default()
                .with_topic(topic_name("visible"))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(1)
                    .with_partition_max_bytes(1 << 20)])])
    };
    let consumer_fetch = || {
        let resp = ask(&cluster.broker(leader).addr(), 12, &fetch_from_1(0, 1));
        let p = &resp.responses[0].partitions[0];
        (p.high_watermark, p.records.as_ref().map_or(0, |r| r.len()))
    };
    for f in &followers {
        signal(cluster.broker(*f), libc::SIGSTOP);
        // Stopped for certain (state T) before anything is produced.
        let pid = cluster.broker(*f).pid().unwrap();
        poll_until(SETTLE, "the follower to stop", || {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let state = stat.rsplit_once(") ")?.1.chars().next()?;
            (state == 'T').then_some(())
        });
    }
    // Acknowledged by the leader alone: not committed, so not served.
    assert_eq!(produce_raw(cluster.broker(leader), "visible", 0, 1), 0);
    assert_eq!(
        consumer_fetch(),
        (1, 0),
        "an uncommitted message was served"
    );
    // A consumer fetch held for a minute, for at least 10 bytes (less than
    // the message): the message was appended before it and is committed
    // after it, and the committing alone must answer it.
    let held = fetch_from_1(60_000, 10);
    let mut s = connect(&cluster.broker(leader).addr());
    send(&mut s, &typed_request(12, 7, &held).0).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(
        matches!(read_reply(&mut s), Reply::Silent),
        "a held fetch was answered before its message was committed"
    );
    s.set_read_timeout(Some(common::raw::IO_TIMEOUT)).unwrap();
    for f in &followers {
        signal(cluster.broker(*f), libc::SIGCONT);
    }
    poll_until(SETTLE, "the message to be committed and served", || {
        let (hw, bytes) = consumer_fetch();
        (hw == 2 && bytes > 0).then_some(())
    });
    let Reply::Frame(body) = read_reply(&mut s) else {
        panic!("the held fetch was not answered once its message was committed")
    };
    let mut buf = bytes::Bytes::from(body);
    let _ = kafka_protocol::messages::ResponseHeader::decode(&mut buf, 1).unwrap();
    let resp = kafka_protocol::messages::FetchResponse::decode(&mut buf, 12).unwrap();
    let p = &resp.responses[0].partitions[0];
    assert_eq!(p.high_watermark, 2);
    assert!(p.records.as_ref().is_some_and(|r| !r.is_empty()));
}

#[test]
fn an_old_leader_truncates_what_its_successor_never_had_exactly_where_the_logs_diverge() {
    // Followers stay in the ISR while paused (lag 30 s); a dead broker is
    // fenced after one second.
    let mut cluster = Cluster::start_with(
        3,
        &[
            ("broker.heartbeat.interval.ms", "100"),
            ("broker.session.timeout.ms", "1000"),
            ("min.insync.replicas", "2"),
        ],
    );
    assert_eq!(try_create(cluster.broker(1), "diverge", 1, 3), 0);
    let leader = poll_until(SETTLE, "a leader", || {
        let (leader, isr) = leader_and_isr(cluster.broker(1), "diverge", 0);
        (leader > 0 && isr.len() == 3).then_some(leader)
    });
    poll_until(SETTLE, "a first committed message", || {
        (produce_raw(cluster.broker(leader), "diverge", 0, -1) == 0).then_some(())
    });
    let followers: Vec<i32> = (1..=3).filter(|n| *n != leader).collect();
    for f in &followers {
        signal(cluster.broker(*f), libc::SIGSTOP);
        wait_stopped(cluster.broker(*f));
    }
    // Three messages only the leader has (acks=1), then it dies.
    for _ in 0..3 {
        assert_eq!(produce_raw(cluster.broker(leader), "diverge", 0, 1), 0);
    }
    let before = segments(cluster.broker(leader), "diverge-0");
    cluster.brokers[leader as usize - 1].kill9();
    for f in &followers {
        signal(cluster.broker(*f), libc::SIGCONT);
    }
    let next = poll_until(SETTLE, "a follower to lead", || {
        let (now, isr) = leader_and_isr(cluster.broker(followers[0]), "diverge", 0);
        (followers.contains(&now) && !isr.contains(&leader)).then_some(now)
    });
    // The new leader's epoch begins where the old one's uncommitted
    // messages were.
    poll_until(SETTLE, "a message committed under the new leader", || {
        (produce_raw(cluster.broker(next), "diverge", 0, -1) == 0).then_some(())
    });

    let old = &mut cluster.brokers[leader as usize - 1];
    old.spawn_again();
    old.wait_ready();
    poll_until(SETTLE, "the old leader to rejoin the ISR", || {
        let (_, isr) = leader_and_isr(cluster.broker(next), "diverge", 0);
        (isr.len() == 3).then_some(())
    });
    // It kept what was committed, dropped the three messages never
    // committed, and holds the new leader's bytes from there.
    let leaders = segments(cluster.broker(next), "diverge-0");
    poll_until(SETTLE, "the old leader's log to match", || {
        (segments(cluster.broker(leader), "diverge-0") == leaders).then_some(())
    });
    assert_ne!(before, leaders, "the old leader's log had different bytes");
    // Found by leader epoch (not by the out-of-range fallback).
    let log = cluster.broker(leader).stderr();
    assert!(
        log.contains("the log diverged from the leader's: truncated"),
        "no divergence truncation in:\n{log}"
    );
}

/// A follower's fetch counts toward the high watermark only if its log
/// agrees with the leader's: one answered with a diverging epoch holds, past
/// the divergence, records of another epoch that the leader does not have.
/// Counting its fetch offset would commit the leader's records there on the
/// word of a replica that holds different ones (Kafka updates a follower's
/// state only when no divergence was found).
#[test]
fn a_diverged_followers_fetch_does_not_move_the_high_watermark() {
    // Sessions longer than the test: the paused follower stays in the ISR.
    let mut cluster = Cluster::start_with(
        3,
        &[
            ("broker.session.timeout.ms", "60000"),
            ("auto.leader.rebalance.enable", "false"),
        ],
    );
    assert_eq!(
        create_assigned(cluster.broker(1), "hwdiverge", &[&[1, 2, 3]]),
        0
    );
    poll_until(SETTLE, "broker 1 leading with all in sync", || {
        let (leader, isr) = leader_and_isr(cluster.broker(1), "hwdiverge", 0);
        (leader == 1 && isr.len() == 3).then_some(())
    });
    let epoch_of = |cluster: &Cluster, from: i32| {
        metadata_of(cluster.broker(from), "hwdiverge").topics[0].partitions[0].leader_epoch
    };
    let first_epoch = epoch_of(&cluster, 1);
    // Offset 0, under the first leader's epoch.
    produce_committed(cluster.broker(1), "hwdiverge", 0);
    // Broker 1 hands its leadership over and leaves.
    cluster.brokers[0].stop();
    let next = poll_until(SETTLE, "another leader", || {
        let (leader, isr) = leader_and_isr(cluster.broker(2), "hwdiverge", 0);
        (leader > 1 && !isr.contains(&1) && isr.len() == 2).then_some(leader)
    });
    let other = if next == 2 { 3 } else { 2 };
    let next_epoch = epoch_of(&cluster, next);
    assert!(next_epoch > first_epoch);
    // Offset 1, committed under the new epoch: the high watermark is 2.
    produce_committed(cluster.broker(next), "hwdiverge", 0);
    // Offsets 2 to 4 on the leader alone, the follower paused.
    signal(cluster.broker(other), libc::SIGSTOP);
    wait_stopped(cluster.broker(other));
    for _ in 0..3 {
        assert_eq!(produce_raw(cluster.broker(next), "hwdiverge", 0, 1), 0);
    }
    let fetch = |replica: i32, offset: i64, last_epoch: i32| {
        let req = FetchRequest::default()
            .with_replica_id(kafka_protocol::messages::BrokerId(replica))
            .with_max_wait_ms(0)
            .with_min_bytes(1)
            .with_max_bytes(1 << 20)
            .with_topics(vec![FetchTopic::default()
                .with_topic(topic_name("hwdiverge"))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(offset)
                    .with_last_fetched_epoch(last_epoch)
                    .with_partition_max_bytes(1 << 20)])]);
        let resp = ask(&cluster.broker(next).addr(), 12, &req);
        resp.responses[0].partitions[0].clone()
    };
    // In the follower's name, a fetch from offset 5 whose last batch is of
    // the first epoch: a log that kept three batches of that epoch which
    // the leader never had. The leader's first epoch ends at offset 1.
    let diverged = fetch(other, 5, first_epoch);
    assert_eq!(diverged.error_code, 0);
    assert_eq!(
        (
            diverged.diverging_epoch.epoch,
            diverged.diverging_epoch.end_offset
        ),
        (first_epoch, 1),
        "the leader did not find the divergence"
    );
    assert_eq!(
        diverged.high_watermark, 2,
        "a diverged follower's fetch offset moved the high watermark"
    );
    // A consumer sees the same.
    assert_eq!(fetch(-1, 0, -1).high_watermark, 2);
    // The real follower, resumed, fetches what it lacks under the new
    // epoch, and that commits the three records.
    signal(cluster.broker(other), libc::SIGCONT);
    poll_until(
        SETTLE,
        "the resumed follower to commit offsets 2 to 4",
        || (fetch(-1, 0, -1).high_watermark == 5).then_some(()),
    );
}

#[test]
fn a_follower_whose_log_ends_below_its_leaders_log_start_starts_again_there() {
    use kafka_protocol::messages::delete_records_request::{
        DeleteRecordsPartition, DeleteRecordsTopic,
    };
    use kafka_protocol::messages::DeleteRecordsRequest;
    let cluster = Cluster::start_with(3, &[("replica.lag.time.max.ms", "1000")]);
    assert_eq!(try_create(cluster.broker(1), "behind", 1, 3), 0);
    let leader = poll_until(SETTLE, "a leader", || {
        let (leader, isr) = leader_and_isr(cluster.broker(1), "behind", 0);
        (leader > 0 && isr.len() == 3).then_some(leader)
    });
    poll_until(SETTLE, "a first committed message", || {
        (produce_raw(cluster.broker(leader), "behind", 0, -1) == 0).then_some(())
    });
    let paused = (1..=3).find(|n| *n != leader).unwrap();
    signal(cluster.broker(paused), libc::SIGSTOP);
    wait_stopped(cluster.broker(paused));
    poll_until(SETTLE, "the paused follower to leave the ISR", || {
        let (_, isr) = leader_and_isr(cluster.broker(leader), "behind", 0);
        (!isr.contains(&paused)).then_some(())
    });
    for _ in 0..5 {
        assert_eq!(produce_raw(cluster.broker(leader), "behind", 0, -1), 0);
    }
    let hw = latest_offset(cluster.broker(leader), "behind");
    assert!(hw >= 6, "high watermark {hw}");
    // The leader's log now starts past everything the paused one has.
    let deleted = ask(
        &cluster.broker(leader).addr(),
        2,
        &DeleteRecordsRequest::default()
            .with_timeout_ms(5_000)
            .with_topics(vec![DeleteRecordsTopic::default()
                .with_name(topic_name("behind"))
                .with_partitions(vec![DeleteRecordsPartition::default()
                    .with_partition_index(0)
                    .with_offset(hw)])]),
    );
    let p = &deleted.topics[0].partitions[0];
    assert_eq!((p.error_code, p.low_watermark), (0, hw));
    signal(cluster.broker(paused), libc::SIGCONT);
    poll_until(SETTLE, "the follower to rejoin the ISR", || {
        let (_, isr) = leader_and_isr(cluster.broker(leader), "behind", 0);
        isr.contains(&paused).then_some(())
    });
    // Its log starts at the leader's log start now.
    let files: Vec<String> = segments(cluster.broker(paused), "behind-0")
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(files, [format!("{hw:020}.log")]);
}

/// The latest offset (ListOffsets −1: the high watermark) of partition 0.
fn latest_offset(broker: &Broker, topic: &str) -> i64 {
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    use kafka_protocol::messages::ListOffsetsRequest;
    let req = ListOffsetsRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(topic_name(topic))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(0)
                .with_timestamp(-1)])]);
    let resp = ask(&broker.addr(), 5, &req);
    resp.topics[0].partitions[0].offset
}

#[test]
fn sigterm_hands_leaderships_over_before_the_broker_exits_and_it_rejoins_after() {
    // Sessions far longer than the test: any leadership that moves, moves
    // by the controlled shutdown.
    let mut cluster = Cluster::start_with(3, &[("broker.session.timeout.ms", "60000")]);
    assert_eq!(try_create(cluster.broker(1), "handover", 3, 3), 0);
    let all_in_sync = |cluster: &Cluster, from: i32| {
        (0..3).all(|p| {
            let (leader, isr) = leader_and_isr(cluster.broker(from), "handover", p);
            leader > 0 && isr.len() == 3
        })
    };
    poll_until(SETTLE, "every partition in sync", || {
        all_in_sync(&cluster, 1).then_some(())
    });
    let stopping = leader_and_isr(cluster.broker(1), "handover", 0).0;
    let other = (1..=3).find(|n| *n != stopping).unwrap();
    let input: String = (0..300).map(|i| format!("h{i}\n")).collect();
    produce(
        cluster.broker(other),
        "handover",
        &["-X", "acks=all"],
        input.as_bytes(),
    );

    cluster.brokers[stopping as usize - 1].stop();
    poll_until(
        Duration::from_secs(10),
        "every leadership and ISR membership of the stopped broker to move",
        || {
            (0..3)
                .all(|p| {
                    let (leader, isr) = leader_and_isr(cluster.broker(other), "handover", p);
                    leader > 0 && leader != stopping && !isr.contains(&stopping)
                })
                .then_some(())
        },
    );
    assert!(cluster
        .broker(stopping)
        .stderr()
        .contains("controlled shutdown: leaderships moved"));
    // A new leader learns the high watermark from its followers' next
    // fetches; until then consumers may see less of what was committed, as
    // in Kafka. Every acknowledged message must be readable soon after.
    poll_until(SETTLE, "every acknowledged message readable", || {
        let got = consume(cluster.broker(other), "handover", &["-c", "300"]);
        (values(&got).len() == 300).then_some(())
    });

    let back = &mut cluster.brokers[stopping as usize - 1];
    back.spawn_again();
    back.wait_ready();
    poll_until(SETTLE, "the restarted broker to rejoin every ISR", || {
        all_in_sync(&cluster, other).then_some(())
    });
}

/// Brokers stopped one after another: each hands its leaderships to those
/// still running, and the last, with no one left to take them (and no
/// controller quorum either), stops without asking.
#[test]
fn the_last_broker_standing_stops_without_a_controlled_shutdown() {
    let mut cluster = Cluster::start_with(3, &[("broker.session.timeout.ms", "60000")]);
    assert_eq!(try_create(cluster.broker(1), "last-standing", 3, 3), 0);
    poll_until(SETTLE, "every partition in sync", || {
        (0..3)
            .all(|p| {
                let (leader, isr) = leader_and_isr(cluster.broker(1), "last-standing", p);
                leader > 0 && isr.len() == 3
            })
            .then_some(())
    });
    for node in [3, 2] {
        cluster.brokers[node - 1].stop();
        assert!(
            cluster
                .broker(node as i32)
                .stderr()
                .contains("controlled shutdown: leaderships moved"),
            "broker {node} did not hand its leaderships over"
        );
    }
    cluster.brokers[0].stop();
    let log = cluster.broker(1).stderr();
    assert!(
        log.contains("no other live broker to take leaderships over"),
        "the last broker asked for a controlled shutdown:\n{log}"
    );
    assert!(!log.contains("controlled shutdown gave up"), "{log}");
}

#[test]
fn an_offline_partition_waits_for_its_isr_until_unclean_election_is_allowed() {
    // The follower falls out of the ISR; the leader alone commits more,
    // then dies: no in-sync replica is left.
    let (mut cluster, leader, follower, third) = leader_alone_in_sync("unclean");
    for _ in 0..3 {
        produce_committed(cluster.broker(leader), "unclean", 0);
    }
    cluster.brokers[leader as usize - 1].kill9();
    signal(cluster.broker(follower), libc::SIGCONT);
    // Offline while unclean election is off: no leader even once the
    // out-of-sync replica is back (live, registered, unfenced).
    poll_until(
        SETTLE,
        "the partition offline and its follower live",
        || {
            let d = describe(cluster.broker(third));
            let live = d.brokers.iter().any(|b| b.broker_id.0 == follower);
            let dead = d.brokers.iter().all(|b| b.broker_id.0 != leader);
            let (now, _) = leader_and_isr(cluster.broker(third), "unclean", 0);
            (live && dead && now == -1).then_some(())
        },
    );
    // Metadata says LEADER_NOT_AVAILABLE; a produce anywhere is told
    // NOT_LEADER_OR_FOLLOWER, as Kafka does.
    let md = metadata_of(cluster.broker(third), "unclean");
    assert_eq!(
        md.topics[0].partitions[0].error_code, 5,
        "{:?}",
        md.topics[0].partitions[0]
    );
    assert_eq!(produce_raw(cluster.broker(follower), "unclean", 0, -1), 6);

    // Allowed on the topic: the out-of-sync replica leads within seconds.
    set_topic_config(
        cluster.broker(third),
        "unclean",
        "unclean.leader.election.enable",
        "true",
    );
    poll_until(SETTLE, "the out-of-sync replica to lead", || {
        let (now, isr) = leader_and_isr(cluster.broker(third), "unclean", 0);
        (now == follower && isr == [follower]).then_some(())
    });
    assert!(
        cluster
            .brokers
            .iter()
            .any(|b| b.stderr().contains("unclean leader election")),
        "no broker logged the unclean election"
    );
    poll_until(SETTLE, "a message committed under the new leader", || {
        (produce_raw(cluster.broker(follower), "unclean", 0, -1) == 0).then_some(())
    });
    // The old leader returns, drops what the new leader never had, and
    // holds its bytes.
    let old = &mut cluster.brokers[leader as usize - 1];
    old.spawn_again();
    old.wait_ready();
    poll_until(SETTLE, "the old leader to rejoin the ISR", || {
        let (_, isr) = leader_and_isr(cluster.broker(follower), "unclean", 0);
        (isr.len() == 2).then_some(())
    });
    let leaders = segments(cluster.broker(follower), "unclean-0");
    poll_until(SETTLE, "the old leader's log to match", || {
        (segments(cluster.broker(leader), "unclean-0") == leaders).then_some(())
    });

    // ElectLeaders (auto rebalance is off here): the preferred replica
    // leads again; asking twice, or an unclean election of a partition
    // that has a leader, is not needed (84); an unknown partition is 3.
    let preferred =
        metadata_of(cluster.broker(third), "unclean").topics[0].partitions[0].replica_nodes[0].0;
    let elect = |kind: i8, partition: i32| {
        use kafka_protocol::messages::elect_leaders_request::TopicPartitions;
        use kafka_protocol::messages::ElectLeadersRequest;
        let req = ElectLeadersRequest::default()
            .with_election_type(kind)
            .with_timeout_ms(10_000)
            .with_topic_partitions(Some(vec![TopicPartitions::default()
                .with_topic(topic_name("unclean"))
                .with_partitions(vec![partition])]));
        let resp = ask(&cluster.broker(third).addr(), 2, &req);
        resp.replica_election_results[0].partition_result[0].error_code
    };
    let first = elect(0, 0);
    assert!(
        first == 0 || (first == 84 && preferred == follower),
        "preferred election: {first}"
    );
    poll_until(SETTLE, "the preferred replica to lead", || {
        (leader_and_isr(cluster.broker(third), "unclean", 0).0 == preferred).then_some(())
    });
    assert_eq!(elect(0, 0), 84);
    assert_eq!(elect(1, 0), 84);
    assert_eq!(elect(0, 7), 3);
}

#[test]
fn the_rebalancer_gives_leadership_back_to_the_preferred_replica() {
    let mut cluster = Cluster::start_with(
        3,
        &[
            ("broker.heartbeat.interval.ms", "100"),
            ("broker.session.timeout.ms", "1000"),
            ("leader.imbalance.check.interval.seconds", "1"),
        ],
    );
    assert_eq!(try_create(cluster.broker(1), "prefers", 1, 3), 0);
    let preferred = poll_until(SETTLE, "the preferred replica to lead", || {
        let md = metadata_of(cluster.broker(1), "prefers");
        let p = md.topics.first()?.partitions.first()?;
        let preferred = p.replica_nodes.first()?.0;
        (p.leader_id.0 == preferred && p.isr_nodes.len() == 3).then_some(preferred)
    });
    let other = (1..=3).find(|n| *n != preferred).unwrap();
    cluster.brokers[preferred as usize - 1].kill9();
    poll_until(SETTLE, "another replica to lead", || {
        let (leader, _) = leader_and_isr(cluster.broker(other), "prefers", 0);
        (leader > 0 && leader != preferred).then_some(())
    });
    let back = &mut cluster.brokers[preferred as usize - 1];
    back.spawn_again();
    back.wait_ready();
    poll_until(SETTLE, "the preferred replica to lead again", || {
        let (leader, isr) = leader_and_isr(cluster.broker(other), "prefers", 0);
        (leader == preferred && isr.len() == 3).then_some(())
    });
}

/// Creates `name` with the replicas of each partition as given.
fn create_assigned(broker: &Broker, name: &str, assignment: &[&[i32]]) -> i16 {
    use kafka_protocol::messages::create_topics_request::CreatableReplicaAssignment;
    use kafka_protocol::messages::BrokerId;
    let topic = CreatableTopic::default()
        .with_name(topic_name(name))
        .with_num_partitions(-1)
        .with_replication_factor(-1)
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
        );
    let resp = ask(
        &broker.addr(),
        5,
        &CreateTopicsRequest::default()
            .with_topics(vec![topic])
            .with_timeout_ms(10_000),
    );
    resp.topics[0].error_code
}

#[test]
fn when_every_replica_dies_an_eligible_leader_replica_leads_before_the_last_in_sync_one_returns() {
    // Voters 1–3 keep the controller quorum; the partition lives on the
    // brokers-only 4, 5, 6, which all die.
    let mut cluster = Cluster::start_voters(
        6,
        3,
        &[
            ("broker.heartbeat.interval.ms", "100"),
            ("broker.session.timeout.ms", "1000"),
            ("min.insync.replicas", "2"),
            ("replica.high.watermark.checkpoint.interval.ms", "50"),
        ],
    );
    assert_eq!(
        create_assigned(cluster.broker(1), "standing", &[&[4, 5, 6]]),
        0
    );
    // Bad assignments are refused with INVALID_REPLICA_ASSIGNMENT (39).
    assert_eq!(create_assigned(cluster.broker(1), "twice", &[&[4, 4]]), 39);
    assert_eq!(create_assigned(cluster.broker(1), "nobody", &[&[4, 9]]), 39);
    poll_until(SETTLE, "all three in sync", || {
        let (leader, isr) = leader_and_isr(cluster.broker(1), "standing", 0);
        (leader == 4 && isr == [4, 5, 6]).then_some(())
    });
    let input: String = (0..200).map(|i| format!("s{i}\n")).collect();
    produce(
        cluster.broker(1),
        "standing",
        &["-X", "acks=all"],
        input.as_bytes(),
    );
    let fenced = |cluster: &Cluster, id: i32| {
        describe(cluster.broker(1))
            .brokers
            .iter()
            .all(|b| b.broker_id.0 != id)
    };
    // Killed one after another, each fenced before the next dies: 4 (the
    // ISR keeps two), 5 (the ISR drops below two: 5 stays eligible), 6.
    for id in [4, 5, 6] {
        cluster.brokers[id as usize - 1].kill9();
        poll_until(SETTLE, "the killed broker to be fenced", || {
            fenced(&cluster, id).then_some(())
        });
    }
    let (leader, isr) = leader_and_isr(cluster.broker(1), "standing", 0);
    assert_eq!((leader, isr), (-1, vec![6]));
    let elr = |cluster: &Cluster| {
        use kafka_protocol::messages::describe_topic_partitions_request::TopicRequest;
        use kafka_protocol::messages::DescribeTopicPartitionsRequest;
        let req = DescribeTopicPartitionsRequest::default()
            .with_topics(vec![
                TopicRequest::default().with_name(topic_name("standing"))
            ])
            .with_response_partition_limit(10);
        let resp = ask(&cluster.broker(1).addr(), 0, &req);
        let p = &resp.topics[0].partitions[0];
        let mut elr: Vec<i32> = p
            .eligible_leader_replicas
            .iter()
            .flatten()
            .map(|b| b.0)
            .collect();
        elr.sort_unstable();
        elr
    };
    assert_eq!(elr(&cluster), [5]);

    // Back in another order: 4 first, which may not lead (it left while
    // the ISR was still large enough); then 5, eligible, which leads with
    // everything acknowledged while 6, the last in-sync replica, is down.
    for id in [4, 5] {
        let b = &mut cluster.brokers[id as usize - 1];
        b.spawn_again();
        b.wait_ready();
    }
    poll_until(SETTLE, "the eligible replica to lead", || {
        (leader_and_isr(cluster.broker(1), "standing", 0).0 == 5).then_some(())
    });
    // Its high watermark moves once the ISR is back to two (4 caught up
    // from it), so consumers see everything acknowledged.
    poll_until(SETTLE, "4 to catch up into the ISR", || {
        let (leader, isr) = leader_and_isr(cluster.broker(1), "standing", 0);
        (leader == 5 && isr.len() == 2).then_some(())
    });
    let got = consume(cluster.broker(1), "standing", &["-c", "200"]);
    assert_eq!(
        values(&got),
        input.lines().map(String::from).collect::<Vec<_>>(),
        "every acknowledged message, once, in order"
    );
    let last = &mut cluster.brokers[5];
    last.spawn_again();
    last.wait_ready();
    poll_until(SETTLE, "every replica back in sync", || {
        let (_, isr) = leader_and_isr(cluster.broker(1), "standing", 0);
        (isr.len() == 3).then_some(())
    });
    assert!(elr(&cluster).is_empty());
}

/// A tmpfs of its own at a directory (mounting needs root); lazily
/// unmounted on drop.
struct SmallDisk {
    dir: std::path::PathBuf,
    bytes: u64,
}

impl SmallDisk {
    fn mount(dir: &std::path::Path, bytes: u64) -> Option<SmallDisk> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return None;
        }
        // Filling must never reach the machine's real disk: check that
        // the directory is the small file system just mounted.
        let size = fs_bytes(dir).0;
        assert!(
            size <= bytes,
            "{} is not the {bytes}-byte tmpfs just mounted there (it holds {size} bytes)",
            dir.display()
        );
        Some(SmallDisk {
            dir: dir.to_path_buf(),
            bytes,
        })
    }

    /// Writes a filler file until the file system has no byte left; never
    /// more than the file system's size.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.dir.join("filler")).unwrap();
        let mut written = 0u64;
        for chunk in [1 << 20, 4096, 1] {
            let buf = vec![0u8; chunk];
            while written <= self.bytes {
                match f.write_all(&buf) {
                    Ok(()) => written += chunk as u64,
                    Err(e) => {
                        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "filling: {e}");
                        break;
                    }
                }
            }
        }
        assert!(
            written <= self.bytes,
            "wrote {written} bytes and the disk is not full"
        );
    }

    fn free(&self) {
        std::fs::remove_file(self.dir.join("filler")).unwrap();
    }
}

/// A file system's (size, available) bytes.
fn fs_bytes(dir: &std::path::Path) -> (u64, u64) {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
    // SAFETY: statvfs(3) fills the zeroed struct it is given from a valid
    // NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut st) }, 0);
    let frsize = st.f_frsize as u64;
    (st.f_blocks as u64 * frsize, st.f_bavail as u64 * frsize)
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
    }
}

#[test]
fn a_full_log_directory_moves_the_brokers_leaderships_and_it_returns_once_there_is_room() {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: a small tmpfs for the log directory needs root");
        return;
    }
    // The metadata logs apart (relative: each broker's own directory), so
    // that the full disk is the data disk only.
    let mut cluster = Cluster::start_with(
        3,
        &[
            ("broker.heartbeat.interval.ms", "200"),
            ("broker.session.timeout.ms", "1500"),
            ("replica.lag.time.max.ms", "1000"),
            ("metadata.log.dir", "metadata"),
        ],
    );
    // Broker 3's log directory moves to a 32 MiB disk of its own.
    let full = &mut cluster.brokers[2];
    full.stop();
    let data = full.data_dir();
    let old = data.with_extension("old");
    std::fs::rename(&data, &old).unwrap();
    let Some(disk) = SmallDisk::mount(&data, 32 << 20) else {
        panic!("mounting a tmpfs failed although running as root");
    };
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(old.join("."))
        .arg(&data)
        .status()
        .unwrap();
    assert!(copied.success());
    full.spawn_again();
    full.wait_ready();

    assert_eq!(create_assigned(cluster.broker(1), "disk", &[&[3, 1, 2]]), 0);
    poll_until(
        SETTLE,
        "broker 3 to lead with every replica in sync",
        || (leader_and_isr(cluster.broker(1), "disk", 0) == (3, vec![1, 2, 3])).then_some(()),
    );
    let (first, mut expected) = common::numbered("d", 200);
    produce(cluster.broker(1), "disk", &["-X", "acks=all"], &first);

    disk.fill();
    // Appends fill what is left of the segment's last page, then fail
    // (KAFKA_STORAGE_ERROR, retriable) until the controller has heard and
    // moved the leadership (NOT_LEADER_OR_FOLLOWER). With acks=all, so
    // that the followers hold every record broker 3 does: once it follows,
    // it has nothing to fetch, append or truncate.
    let code = (0..10_000)
        .map(|_| produce_raw(cluster.broker(3), "disk", 0, -1))
        .find(|code| *code != 0);
    assert!(
        matches!(code, Some(56 | 6)),
        "produce to a full disk answered {code:?}"
    );
    let moved = common::poll_for(Duration::from_secs(15), || {
        let (leader, isr) = leader_and_isr(cluster.broker(1), "disk", 0);
        (leader > 0 && leader != 3 && isr == [1, 2]).then_some(())
    });
    if moved.is_none() {
        // The full broker's own log first (on failure every broker's log is
        // printed, and the output may be cut), and where each broker's
        // directory stands.
        let (leader, isr) = leader_and_isr(cluster.broker(1), "disk", 0);
        let room: Vec<String> = (1..=3)
            .map(|id| {
                let (size, free) = fs_bytes(&cluster.broker(id).data_dir());
                format!("broker {id}: {free} of {size} bytes free")
            })
            .collect();
        cluster.broker(3).fail(&format!(
            "timed out after 15s waiting for the leadership and ISR membership of the \
             broker with the full disk to move: leader {leader}, ISR {isr:?}; {room:?}"
        ));
    }
    assert!(cluster
        .broker(3)
        .stderr()
        .contains("the log directory failed; telling the controller"));
    // Room again, and nothing new for broker 3 to append: it comes back
    // because its disk has room (an append that succeeds is not needed).
    disk.free();
    poll_until(
        SETTLE,
        "the broker to rejoin the ISR once there is room",
        || (leader_and_isr(cluster.broker(1), "disk", 0).1 == [1, 2, 3]).then_some(()),
    );
    let (second, more) = common::numbered("e", 200);
    produce(cluster.broker(1), "disk", &["-X", "acks=all"], &second);
    expected.extend(more);
    // Everything acknowledged, in order (with the probes that fitted).
    let got = consume(cluster.broker(1), "disk", &[]);
    let got: Vec<String> = values(&got).into_iter().filter(|v| v != "raw").collect();
    assert_eq!(got, expected, "every acknowledged message, in order");
}
