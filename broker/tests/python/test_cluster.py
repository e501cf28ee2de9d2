"""A three-broker cluster under an idempotent confluent-kafka producer
(acks=all, the client's defaults otherwise): the partition's leader is
killed half-way; every acknowledged message is read back afterwards, once
and in order, by confluent-kafka and by kafka-python."""

import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kafka import KafkaConsumer
from kafka import TopicPartition as KTopicPartition


def wait_for(what, predicate, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def leader_of(admin, topic, partition):
    md = admin.list_topics(topic, timeout=10)
    t = md.topics.get(topic)
    if t is None or t.error is not None or partition not in t.partitions:
        return None
    p = t.partitions[partition]
    return p.leader if p.leader > 0 and len(p.isrs) > 0 else None


def test_killing_the_leader_loses_and_duplicates_nothing_acknowledged(cluster):
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    topic = "idempotent"
    futures = admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=3,
                                            config={"min.insync.replicas": "2"})])
    futures[topic].result(timeout=30)
    leader = wait_for("a leader", lambda: leader_of(admin, topic, 0))

    acked = []
    failed = []

    def report(err, msg):
        if err is None:
            acked.append((msg.offset(), msg.value().decode()))
        else:
            failed.append(err)

    producer = Producer({"bootstrap.servers": cluster.bootstrap,
                         "enable.idempotence": True,
                         "linger.ms": 5,
                         "message.timeout.ms": 60000})
    total = 2000
    for i in range(total):
        producer.produce(topic, value=f"v{i:05d}".encode(), partition=0, on_delivery=report)
        if i == total // 2:
            # Mid-stream: batches are in flight to the leader as it dies.
            cluster.brokers[leader - 1].kill()
        producer.poll(0)
    assert producer.flush(60) == 0, "messages still in flight"
    assert not failed, f"delivery failures: {failed[:5]}"
    assert len(acked) == total
    new_leader = wait_for("another leader", lambda: (l := leader_of(admin, topic, 0)) and l != leader and l)
    assert new_leader != leader

    # Every acknowledged message, once, in the order produced, at the
    # offsets its acknowledgement named.
    expected = sorted(acked)
    assert [v for _, v in expected] == [f"v{i:05d}" for i in range(total)]

    consumer = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": "check",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, 0, 0)])
    seen = []
    deadline = time.monotonic() + 60
    while len(seen) < total and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            seen.append((msg.offset(), msg.value().decode()))
    consumer.close()
    assert seen == expected

    k = KafkaConsumer(bootstrap_servers=cluster.bootstrap.split(","),
                      enable_auto_commit=False, auto_offset_reset="earliest")
    k.assign([KTopicPartition(topic, 0)])
    k.seek_to_beginning()
    values = []
    deadline = time.monotonic() + 60
    while len(values) < total and time.monotonic() < deadline:
        for records in k.poll(timeout_ms=500).values():
            values += [m.value.decode() for m in records]
    k.close()
    assert values == [v for _, v in expected]


def test_a_groups_committed_offsets_survive_its_coordinator_dying(cluster):
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    topic = "handover"
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=3)])[topic].result(timeout=30)
    wait_for("a leader", lambda: leader_of(admin, topic, 0))
    producer = Producer({"bootstrap.servers": cluster.bootstrap})
    for i in range(100):
        producer.produce(topic, value=f"m{i:03d}".encode(), partition=0)
    assert producer.flush(30) == 0

    def consumer():
        c = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": "g",
                      "auto.offset.reset": "earliest", "enable.auto.commit": False,
                      "session.timeout.ms": 6000})
        c.subscribe([topic])
        return c

    first = consumer()
    got = []
    deadline = time.monotonic() + 60
    while len(got) < 40 and time.monotonic() < deadline:
        msg = first.poll(0.5)
        if msg is not None and msg.error() is None:
            got.append(msg)
    assert len(got) >= 40
    # Answered once on every in-sync replica of the group's offsets
    # partition.
    first.commit(message=got[39], asynchronous=False)
    first.close()

    group = admin.describe_consumer_groups(["g"])["g"].result(timeout=30)
    coordinator = group.coordinator.id
    cluster.brokers[coordinator - 1].kill()

    # Another broker now leads the group's offsets partition and knows the
    # commit: a new member resumes right after it, not from the start.
    second = consumer()
    resumed = None
    deadline = time.monotonic() + 60
    while resumed is None and time.monotonic() < deadline:
        msg = second.poll(0.5)
        if msg is not None and msg.error() is None:
            resumed = msg
    second.close()
    assert resumed is not None, "nothing consumed after the coordinator died"
    assert resumed.value().decode() == "m040", resumed.value()


def test_a_rolling_restart_with_sigterm_loses_nothing_acknowledged(cluster):
    """Each broker in turn gets SIGTERM (a controlled shutdown: its
    leaderships move first), exits 0, starts again and catches up into
    every ISR, while an idempotent acks=all producer keeps sending to three
    partitions. The producer sees no delivery error (retriable ones are
    retried inside the client), and every acknowledged message is read back
    once, in order per partition."""
    import threading

    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    topic = "rolling"
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=3,
                                  config={"min.insync.replicas": "2"})])[topic].result(timeout=30)

    def all_in_sync():
        md = admin.list_topics(topic, timeout=10)
        t = md.topics.get(topic)
        return (t is not None and t.error is None and len(t.partitions) == 3
                and all(p.leader > 0 and len(p.isrs) == 3 for p in t.partitions.values()))

    wait_for("every partition in sync", all_in_sync)
    acked = {p: [] for p in range(3)}
    failed = []

    def report(err, msg):
        if err is None:
            acked[msg.partition()].append((msg.offset(), msg.value().decode()))
        else:
            failed.append(err)

    producer = Producer({"bootstrap.servers": cluster.bootstrap,
                         "enable.idempotence": True, "linger.ms": 5,
                         "message.timeout.ms": 120000})
    stop = threading.Event()

    def produce():
        i = 0
        while not stop.is_set():
            p = i % 3
            producer.produce(topic, value=f"p{p}-{i // 3:06d}".encode(), partition=p,
                             on_delivery=report)
            producer.poll(0)
            i += 1
            time.sleep(0.001)
        return i

    sent = []
    thread = threading.Thread(target=lambda: sent.append(produce()))
    thread.start()
    try:
        for b in cluster.brokers:
            time.sleep(0.3)
            b.stop()  # SIGTERM; asserts exit status 0
            b.start()
            wait_for("the restarted broker back in every ISR", all_in_sync, timeout=60)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert producer.flush(120) == 0, "messages still in flight"
    assert not failed, f"delivery failures: {failed[:5]}"
    total = sum(len(v) for v in acked.values())
    assert total == sent[0] and total > 300, (total, sent)

    consumer = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": "check-rolling",
                         "enable.auto.commit": False})
    for p in range(3):
        expected = sorted(acked[p])
        assert [v for _, v in expected] == [f"p{p}-{i:06d}" for i in range(len(expected))]
        consumer.assign([TopicPartition(topic, p, 0)])
        seen = []
        deadline = time.monotonic() + 60
        while len(seen) < len(expected) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                seen.append((msg.offset(), msg.value().decode()))
        assert seen == expected, f"partition {p}"
    consumer.close()
