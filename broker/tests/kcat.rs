//! End-to-end tests with a real Kafka client: kcat (librdkafka) against the
//! `sluice` binary. Each test starts its own broker on a free port with a
//! private data directory.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{consume, kcat_on, numbered, poll_until, produce, values, Broker, Msg};

fn metadata_json(broker: &Broker, extra: &[&str]) -> serde_json::Value {
    let addr = broker.addr();
    let mut args = vec!["-L", "-b", &addr, "-J"];
    args.extend_from_slice(extra);
    let out = kcat_on(broker, &args, None);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        broker.fail(&format!(
            "kcat -L -J printed something that is not JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        ))
    })
}

fn topic_entry<'a>(md: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    md["topics"]
        .as_array()
        .expect("topics array")
        .iter()
        .find(|t| t["topic"] == name)
        .unwrap_or_else(|| panic!("topic {name} missing from metadata: {md:#}"))
}

fn offsets(msgs: &[Msg]) -> Vec<i64> {
    msgs.iter().map(|m| m.offset).collect()
}

#[test]
fn kcat_lists_the_broker_and_auto_created_topic_metadata() {
    let broker = Broker::start();
    produce(&broker, "auto-created", &[], b"hello\n");

    let md = metadata_json(&broker, &[]);
    let brokers = md["brokers"].as_array().expect("brokers array");
    assert_eq!(brokers.len(), 1, "expected exactly one broker: {md:#}");
    assert_eq!(brokers[0]["id"], 1, "broker id must be node.id=1: {md:#}");
    assert_eq!(
        brokers[0]["name"],
        broker.addr().as_str(),
        "advertised host:port must be the listener: {md:#}"
    );
    // librdkafka sends admin requests (CreateTopics, ...) to the controller,
    // so a single node must name itself.
    assert_eq!(md["controllerid"], 1, "controller must be node 1: {md:#}");

    let topic = topic_entry(&md, "auto-created");
    assert!(
        topic.get("error").is_none(),
        "topic has an error: {topic:#}"
    );
    let parts = topic["partitions"].as_array().expect("partitions array");
    assert_eq!(parts.len(), 1, "num.partitions defaults to 1: {topic:#}");
    let p = &parts[0];
    assert_eq!(p["partition"], 0);
    assert!(p.get("error").is_none(), "partition has an error: {p:#}");
    assert_eq!(p["leader"], 1, "leader must be node 1: {p:#}");
    assert_eq!(p["replicas"], serde_json::json!([{"id": 1}]), "{p:#}");
    assert_eq!(p["isrs"], serde_json::json!([{"id": 1}]), "{p:#}");

    // No other (non-internal) topic was invented.
    let names: Vec<&str> = md["topics"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["topic"].as_str())
        .filter(|n| !n.starts_with("__"))
        .collect();
    assert_eq!(names, vec!["auto-created"], "{md:#}");

    // Metadata for that one topic only.
    let md = metadata_json(&broker, &["-t", "auto-created"]);
    assert_eq!(md["topics"].as_array().unwrap().len(), 1, "{md:#}");
    assert_eq!(
        topic_entry(&md, "auto-created")["partitions"][0]["leader"],
        1
    );

    // And the message is there.
    let msgs = consume(&broker, "auto-created", &[]);
    assert_eq!(values(&msgs), vec!["hello"]);
}

#[test]
fn messages_with_keys_and_headers_round_trip() {
    let broker = Broker::start();
    let input = "k1:v1\nk2:v2\nk3:v3\nplain-no-key\nk4:v4:with:colons\nk5:värde ünïcode ✓\nk6:\n";
    produce(
        &broker,
        "t",
        &["-K:", "-H", "h1=v1", "-H", "h2=second header"],
        input.as_bytes(),
    );

    let msgs = consume(&broker, "t", &[]);
    let expected: Vec<(Option<&str>, &str)> = vec![
        (Some("k1"), "v1"),
        (Some("k2"), "v2"),
        (Some("k3"), "v3"),
        (None, "plain-no-key"),
        (Some("k4"), "v4:with:colons"),
        (Some("k5"), "värde ünïcode ✓"),
        (Some("k6"), ""),
    ];
    assert_eq!(msgs.len(), expected.len(), "{msgs:#?}");
    for (i, (m, (k, v))) in msgs.iter().zip(&expected).enumerate() {
        assert_eq!(m.topic, "t");
        assert_eq!(m.partition, 0, "message {i}: {m:?}");
        assert_eq!(
            m.offset, i as i64,
            "offsets must be 0..n in order: {msgs:#?}"
        );
        assert_eq!(m.key.as_deref(), *k, "key of message {i}: {m:?}");
        assert_eq!(m.value.as_deref(), Some(*v), "value of message {i}: {m:?}");
        assert_eq!(
            m.headers,
            vec![
                ("h1".to_string(), Some("v1".to_string())),
                ("h2".to_string(), Some("second header".to_string())),
            ],
            "headers of message {i}: {m:?}"
        );
    }
}

#[test]
fn every_compression_codec_round_trips() {
    let broker = Broker::start();
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("codec-{codec}");
        // Compressible values of growing size, the largest ~37 KB.
        let expected: Vec<(String, String)> = (0..50)
            .map(|i| {
                (
                    format!("key-{i}"),
                    format!("value-{i}-{}", "abcdefgh".repeat(i * 90)),
                )
            })
            .collect();
        let mut input = String::new();
        for (k, v) in &expected {
            input.push_str(&format!("{k}:{v}\n"));
        }
        produce(&broker, &topic, &["-z", codec, "-K:"], input.as_bytes());

        let msgs = consume(&broker, &topic, &[]);
        assert_eq!(msgs.len(), expected.len(), "codec {codec}: message count");
        for (i, (m, (k, v))) in msgs.iter().zip(&expected).enumerate() {
            assert_eq!(m.offset, i as i64, "codec {codec}: offset of message {i}");
            assert_eq!(m.key.as_ref(), Some(k), "codec {codec}: key of message {i}");
            assert!(
                m.value.as_ref() == Some(v),
                "codec {codec}: value of message {i} differs (got {} bytes, expected {})",
                m.value.as_ref().map_or(0, |s| s.len()),
                v.len()
            );
        }

        // Starting in the middle of a (compressed) batch: the broker returns
        // the whole batch and the client skips what precedes offset 25.
        let tail = consume(&broker, &topic, &["-o", "25"]);
        assert_eq!(
            offsets(&tail),
            (25..50).collect::<Vec<i64>>(),
            "codec {codec}: consuming from offset 25"
        );
        assert_eq!(tail[0].key.as_deref(), Some("key-25"));
    }
}

#[test]
fn acks_all_and_acks_zero_both_store_messages() {
    let broker = Broker::start();

    // acks=all and acks=1: kcat exits 0 only once every message is
    // acknowledged, so the messages must be readable right away.
    for acks in ["all", "1"] {
        let topic = format!("acks-{acks}");
        let (input, vals) = numbered(&format!("{acks}-"), 20);
        let acks_arg = format!("acks={acks}");
        produce(&broker, &topic, &["-X", &acks_arg], &input);
        let msgs = consume(&broker, &topic, &[]);
        assert_eq!(values(&msgs), vals, "acks={acks}");
        assert_eq!(offsets(&msgs), (0..20).collect::<Vec<i64>>(), "acks={acks}");
    }

    // acks=0: no response, so poll until everything shows up.
    let (input, vals) = numbered("zero-", 20);
    produce(&broker, "acks-zero", &["-X", "acks=0"], &input);
    let msgs = poll_until(Duration::from_secs(30), "acks=0 messages to appear", || {
        let msgs = consume(&broker, "acks-zero", &[]);
        (msgs.len() >= vals.len()).then_some(msgs)
    });
    assert_eq!(values(&msgs), vals, "acks=0");
    assert_eq!(offsets(&msgs), (0..20).collect::<Vec<i64>>(), "acks=0");

    // A second acks=0 producer after the first: the broker must not have
    // answered acks=0 requests (the client would see stray responses), and
    // the connection keeps working.
    let (input, more) = numbered("zero-again-", 5);
    produce(&broker, "acks-zero", &["-X", "acks=0"], &input);
    let msgs = poll_until(Duration::from_secs(30), "second acks=0 batch", || {
        let msgs = consume(&broker, "acks-zero", &[]);
        (msgs.len() >= 25).then_some(msgs)
    });
    let mut all = vals.clone();
    all.extend(more);
    assert_eq!(values(&msgs), all);
}

#[test]
fn messages_survive_a_clean_restart_and_a_kill() {
    let mut broker = Broker::start();
    let (input, before_stop) = numbered("before-stop-", 30);
    produce(&broker, "durable", &[], &input);
    assert_eq!(values(&consume(&broker, "durable", &[])), before_stop);

    broker.stop();
    broker.start_again();
    let msgs = consume(&broker, "durable", &[]);
    assert_eq!(values(&msgs), before_stop, "after SIGTERM and restart");
    assert_eq!(offsets(&msgs), (0..30).collect::<Vec<i64>>());

    let (input, before_kill) = numbered("before-kill-", 30);
    produce(&broker, "durable", &["-X", "acks=all"], &input);
    broker.kill9();
    broker.start_again();

    let mut acknowledged = before_stop.clone();
    acknowledged.extend(before_kill.iter().cloned());
    let msgs = consume(&broker, "durable", &[]);
    let got = values(&msgs);
    let missing: Vec<&String> = acknowledged.iter().filter(|v| !got.contains(v)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged messages lost after SIGKILL: {missing:?}\ngot: {got:?}"
    );
    assert_eq!(got, acknowledged, "after SIGKILL and restart");
    assert_eq!(offsets(&msgs), (0..60).collect::<Vec<i64>>());

    // The recovered log continues at the right offset.
    let (input, after) = numbered("after-recovery-", 5);
    produce(&broker, "durable", &[], &input);
    let msgs = consume(&broker, "durable", &[]);
    acknowledged.extend(after);
    assert_eq!(values(&msgs), acknowledged);
    assert_eq!(offsets(&msgs), (0..65).collect::<Vec<i64>>());
    broker.stop();
}

#[test]
fn a_restart_recovers_a_log_spread_over_many_segments() {
    // 1 MiB is the smallest segment size Kafka 4 accepts; 160 values of
    // 20 KB make a few segments.
    let mut broker = Broker::start_with(&[("log.segment.bytes", "1048576")]);
    let big = "x".repeat(20_000);
    let make = |prefix: &str, n: usize| -> (Vec<u8>, Vec<String>) {
        let vals: Vec<String> = (0..n).map(|i| format!("{prefix}{i}-{big}")).collect();
        let mut input = vals.join("\n").into_bytes();
        input.push(b'\n');
        (input, vals)
    };
    // Several producer runs so there are several batches and many segments.
    let mut all = Vec::new();
    for round in 0..4 {
        let (input, vals) = make(&format!("r{round}-"), 40);
        produce(&broker, "segmented", &["-X", "linger.ms=0"], &input);
        all.extend(vals);
    }
    assert_eq!(values(&consume(&broker, "segmented", &[])), all);

    broker.kill9();
    broker.start_again();
    let msgs = consume(&broker, "segmented", &[]);
    assert_eq!(values(&msgs), all, "after SIGKILL and restart");
    assert_eq!(offsets(&msgs), (0..160).collect::<Vec<i64>>());
    // Reading from the middle finds the right segment.
    let mid = consume(&broker, "segmented", &["-o", "97"]);
    assert_eq!(offsets(&mid), (97..160).collect::<Vec<i64>>());
    assert_eq!(values(&mid), all[97..].to_vec());

    broker.stop();
    broker.start_again();
    assert_eq!(
        values(&consume(&broker, "segmented", &[])),
        all,
        "after SIGTERM"
    );
    broker.stop();
}

#[test]
fn a_consumer_of_many_partitions_reads_large_record_sets_sent_from_the_segment_files() {
    // A consumer of 8 partitions may be sent 8 MiB at once: each
    // partition's records of 256 KiB or more go out from the segment files
    // (sendfile), not from memory. Segments of 1 MiB make reads stop at
    // rolls; three rounds make several batches per partition.
    let mut broker =
        Broker::start_with(&[("num.partitions", "8"), ("log.segment.bytes", "1048576")]);
    let filler = "y".repeat(10_000);
    let mut per_partition = vec![Vec::new(); 8];
    for round in 0..3 {
        for (p, vals) in per_partition.iter_mut().enumerate() {
            let round_vals: Vec<String> = (0..40)
                .map(|i| format!("r{round}p{p}m{i}-{filler}"))
                .collect();
            let mut input = round_vals.join("\n").into_bytes();
            input.push(b'\n');
            produce(&broker, "wide", &["-p", &p.to_string()], &input);
            vals.extend(round_vals);
        }
    }
    let check = |msgs: &[Msg], from: usize| {
        let mut got = vec![Vec::new(); 8];
        for m in msgs {
            got[m.partition as usize].push((m.offset, m.value.clone().unwrap_or_default()));
        }
        for (p, vals) in per_partition.iter().enumerate() {
            let want: Vec<(i64, String)> = vals
                .iter()
                .enumerate()
                .skip(from)
                .map(|(i, v)| (i as i64, v.clone()))
                .collect();
            assert!(
                got[p] == want,
                "partition {p}: {} messages, {} wanted",
                got[p].len(),
                want.len()
            );
        }
    };
    check(&consume(&broker, "wide", &[]), 0);
    // From inside a batch: the batch goes whole, the client skips ahead.
    check(&consume(&broker, "wide", &["-o", "57"]), 57);
    // Out of the page cache, the ranges are read through the ring instead
    // (sendfile would block the shard on the disk).
    drop_page_cache(&broker.data_dir().join("wide-3"));
    drop_page_cache(&broker.data_dir().join("wide-4"));
    check(&consume(&broker, "wide", &[]), 0);
    broker.stop();
}

/// Writes back and drops from the page cache every segment file in `dir`.
fn drop_page_cache(dir: &std::path::Path) {
    use std::os::fd::AsRawFd;
    let mut dropped = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "log") {
            let file = std::fs::File::open(&path).unwrap();
            file.sync_data().unwrap();
            // SAFETY: posix_fadvise(2) on a descriptor this function owns.
            let done =
                unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            assert_eq!(done, 0, "{}", path.display());
            dropped += 1;
        }
    }
    assert!(dropped > 0, "no segment in {}", dir.display());
}

#[test]
fn a_topic_created_with_num_partitions_spreads_messages() {
    let broker = Broker::start_with(&[("num.partitions", "4")]);

    // Auto-create by producing to explicit partitions.
    let mut per_partition = Vec::new();
    for p in 0..4 {
        let (input, vals) = numbered(&format!("p{p}-m"), 5 + p);
        let part = p.to_string();
        produce(&broker, "spread", &["-p", &part], &input);
        per_partition.push(vals);
    }

    let md = metadata_json(&broker, &["-t", "spread"]);
    let topic = topic_entry(&md, "spread");
    let parts = topic["partitions"].as_array().expect("partitions");
    assert_eq!(parts.len(), 4, "num.partitions=4: {topic:#}");
    for (i, p) in parts.iter().enumerate() {
        assert_eq!(p["partition"], i, "{topic:#}");
        assert_eq!(p["leader"], 1, "{topic:#}");
        assert!(p.get("error").is_none(), "{topic:#}");
    }

    for (p, vals) in per_partition.iter().enumerate() {
        let part = p.to_string();
        let msgs = consume(&broker, "spread", &["-p", &part]);
        assert_eq!(&values(&msgs), vals, "partition {p}");
        assert!(msgs.iter().all(|m| m.partition == p as i32), "{msgs:?}");
        assert_eq!(offsets(&msgs), (0..vals.len() as i64).collect::<Vec<_>>());
    }

    // Keyed messages without -p: librdkafka's partitioner hashes the keys
    // over the four partitions.
    let mut input = String::new();
    for i in 0..200 {
        input.push_str(&format!("key-{i}:keyed-{i}\n"));
    }
    produce(&broker, "spread", &["-K:"], input.as_bytes());
    let all = consume(&broker, "spread", &[]);
    let keyed: Vec<&Msg> = all.iter().filter(|m| m.key.is_some()).collect();
    assert_eq!(keyed.len(), 200, "every keyed message once");
    let mut by_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for m in &all {
        by_partition.entry(m.partition).or_default().push(m.offset);
    }
    let used: Vec<i32> = keyed
        .iter()
        .map(|m| m.partition)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert!(used.len() > 1, "keys all went to {used:?}");
    for (p, offs) in &by_partition {
        let mut sorted = offs.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            (0..offs.len() as i64).collect::<Vec<_>>(),
            "partition {p} offsets must be contiguous from 0"
        );
    }
}

#[test]
fn reading_from_an_offset_and_from_the_end() {
    let broker = Broker::start();
    // Two producer runs: two batches (offsets 0-4 and 5-9).
    let (first, mut all) = numbered("m", 5);
    produce(&broker, "offsets", &[], &first);
    let (input, second) = numbered("n", 5);
    produce(&broker, "offsets", &[], &input);
    all.extend(second);

    let from2 = consume(&broker, "offsets", &["-o", "2"]);
    assert_eq!(offsets(&from2), (2..10).collect::<Vec<i64>>(), "-o 2");
    assert_eq!(values(&from2), all[2..].to_vec(), "-o 2");

    let from7 = consume(&broker, "offsets", &["-o", "7"]);
    assert_eq!(offsets(&from7), vec![7, 8, 9], "-o 7");

    let last = consume(&broker, "offsets", &["-o", "-1"]);
    assert_eq!(offsets(&last), vec![9], "-o -1: the last message");
    assert_eq!(values(&last), vec![all[9].clone()]);

    let last3 = consume(&broker, "offsets", &["-o", "-3"]);
    assert_eq!(offsets(&last3), vec![7, 8, 9], "-o -3");

    let end = consume(&broker, "offsets", &["-o", "end"]);
    assert!(end.is_empty(), "-o end -e: nothing, then exit: {end:?}");

    let at_hwm = consume(&broker, "offsets", &["-o", "10"]);
    assert!(at_hwm.is_empty(), "-o 10 (= high watermark): {at_hwm:?}");

    let first3 = consume(&broker, "offsets", &["-o", "beginning", "-c", "3"]);
    assert_eq!(offsets(&first3), vec![0, 1, 2], "-o beginning -c 3");
}

#[test]
fn a_kcat_consumer_group_reads_everything_once_and_resumes_from_its_commits() {
    let broker = Broker::start_with(&[("group.initial.rebalance.delay.ms", "100")]);
    let (input, expected) = common::numbered("g", 10);
    produce(&broker, "grouped", &[], &input);
    let addr = broker.addr();
    let first = common::kcat_on(
        &broker,
        &[
            "-b",
            &addr,
            "-G",
            "readers",
            "grouped",
            "-o",
            "beginning",
            "-e",
            "-J",
            "-X",
            "auto.commit.interval.ms=100",
        ],
        None,
    );
    let got: Vec<String> = common::parse_messages(&first.stdout)
        .into_iter()
        .filter_map(|m| m.value)
        .collect();
    assert_eq!(got, expected, "{}", common::describe(&first));
    // The group committed its position: a second run finds nothing new.
    produce(&broker, "grouped", &[], b"late\n");
    let second = common::kcat_on(
        &broker,
        &["-b", &addr, "-G", "readers", "grouped", "-e", "-J"],
        None,
    );
    let got: Vec<String> = common::parse_messages(&second.stdout)
        .into_iter()
        .filter_map(|m| m.value)
        .collect();
    assert_eq!(
        got,
        vec!["late".to_string()],
        "{}",
        common::describe(&second)
    );
}
