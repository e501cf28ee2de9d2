"""The broker driven by two client libraries nobody here wrote:
confluent-kafka (librdkafka) and kafka-python (a pure-Python protocol
implementation)."""

import time

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic as KpNewTopic

# kafka-python 3 turns idempotence on by default (as the Java client does);
# most producers below keep that default, some ask for plain acks.
PLAIN = {"enable_idempotence": False}


def consume_all(bootstrap, topic, partition, expected, timeout_s=30):
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             enable_auto_commit=False, consumer_timeout_ms=2000)
    tp = TopicPartition(topic, partition)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    records = []
    deadline = time.monotonic() + timeout_s
    while len(records) < expected and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(batch)
    consumer.close()
    return records


def test_confluent_admin_creates_topics_and_rejects_bad_ones(broker):
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    futures = admin.create_topics([NewTopic("orders", num_partitions=3, replication_factor=1,
                                            config={"retention.ms": "3600000"})])
    futures["orders"].result(timeout=30)
    metadata = admin.list_topics(timeout=30)
    assert len(metadata.topics["orders"].partitions) == 3
    again = admin.create_topics([NewTopic("orders", num_partitions=1, replication_factor=1)])
    try:
        again["orders"].result(timeout=30)
        raise AssertionError("creating an existing topic succeeded")
    except Exception as e:
        assert "TOPIC_ALREADY_EXISTS" in str(e) or "already exists" in str(e)
    bad = admin.create_topics([NewTopic("bad", num_partitions=1, replication_factor=1,
                                        config={"segment.bytes": "1"})])
    try:
        bad["bad"].result(timeout=30)
        raise AssertionError("an invalid config was accepted")
    except Exception as e:
        assert "INVALID_CONFIG" in str(e) or "nvalid" in str(e)


def test_confluent_producer_with_acks_all_is_read_back_by_kafka_python(broker):
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all",
                         "linger.ms": 5, "compression.type": "lz4"})
    delivered = []
    for i in range(500):
        producer.produce("events", key=f"k{i}", value=f"v{i}",
                         on_delivery=lambda err, msg: delivered.append((err, msg.offset())))
    assert producer.flush(30) == 0
    assert all(err is None for err, _ in delivered)
    assert sorted(o for _, o in delivered) == list(range(500))
    records = consume_all(broker.bootstrap, "events", 0, 500)
    assert [(r.key, r.value) for r in records] == [
        (f"k{i}".encode(), f"v{i}".encode()) for i in range(500)]
    assert [r.offset for r in records] == list(range(500))


def test_kafka_python_produces_consumes_and_administers(broker):
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    admin.create_topics([KpNewTopic("kp", num_partitions=2, replication_factor=1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all",
                             compression_type="gzip")
    for i in range(100):
        producer.send("kp", key=b"key", value=f"m{i}".encode(), partition=i % 2)
    producer.flush(timeout=30)
    producer.close()
    even = consume_all(broker.bootstrap, "kp", 0, 50)
    odd = consume_all(broker.bootstrap, "kp", 1, 50)
    assert [r.value for r in even] == [f"m{i}".encode() for i in range(0, 100, 2)]
    assert [r.value for r in odd] == [f"m{i}".encode() for i in range(1, 100, 2)]


def test_acknowledged_messages_survive_kill_and_restart(broker):
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    for i in range(50):
        producer.send("durable", value=f"d{i}".encode()).get(timeout=30)
    producer.close()
    broker.kill()
    broker.start()
    records = consume_all(broker.bootstrap, "durable", 0, 50)
    assert [r.value for r in records] == [f"d{i}".encode() for i in range(50)]


def test_offsets_for_times_and_end_offsets(broker):
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks=1, **PLAIN)
    for i in range(10):
        producer.send("times", value=b"x", timestamp_ms=1_000_000 + i * 1000).get(timeout=30)
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None)
    tp = TopicPartition("times", 0)
    assert consumer.end_offsets([tp])[tp] == 10
    assert consumer.beginning_offsets([tp])[tp] == 0
    found = consumer.offsets_for_times({tp: 1_004_500})[tp]
    assert found.offset == 5
    assert consumer.offsets_for_times({tp: 9_999_999})[tp] is None
    consumer.close()


def test_confluent_admin_deletes_topics_and_adds_partitions(broker):
    from confluent_kafka.admin import NewPartitions
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic("grow", num_partitions=1, replication_factor=1),
                         NewTopic("gone", num_partitions=2, replication_factor=1)])["grow"].result(timeout=30)
    admin.create_partitions([NewPartitions("grow", 4)])["grow"].result(timeout=30)
    assert len(admin.list_topics(timeout=30).topics["grow"].partitions) == 4
    shrink = admin.create_partitions([NewPartitions("grow", 2)])["grow"]
    try:
        shrink.result(timeout=30)
        raise AssertionError("shrinking a topic succeeded")
    except Exception as e:
        assert "INVALID_PARTITIONS" in str(e) or "not more" in str(e)
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    producer.produce("gone", value=b"x", partition=1)
    assert producer.flush(30) == 0
    admin.delete_topics(["gone"])["gone"].result(timeout=30)
    assert "gone" not in admin.list_topics(timeout=30).topics
    missing = admin.delete_topics(["never-existed"])["never-existed"]
    try:
        missing.result(timeout=30)
        raise AssertionError("deleting an unknown topic succeeded")
    except Exception as e:
        assert "UNKNOWN_TOPIC" in str(e)


def test_idempotent_confluent_producer_writes_each_message_once(broker):
    producer = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True,
                         "linger.ms": 2, "max.in.flight.requests.per.connection": 5})
    delivered = []
    for i in range(2000):
        producer.produce("idem", key=str(i % 7), value=f"i{i}",
                         on_delivery=lambda err, msg: delivered.append(err))
        if i % 500 == 0:
            producer.poll(0)
    assert producer.flush(30) == 0
    assert delivered.count(None) == 2000
    records = consume_all(broker.bootstrap, "idem", 0, 2000)
    assert [r.value for r in records] == [f"i{i}".encode() for i in range(2000)]


def test_plain_kafka_python_producer_still_works(broker):
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks=1, **PLAIN)
    producer.send("plain", value=b"p").get(timeout=30)
    producer.close()
    assert [r.value for r in consume_all(broker.bootstrap, "plain", 0, 1)] == [b"p"]


def test_topic_configs_are_described_altered_validated_and_kept_across_restart(broker):
    from confluent_kafka.admin import (AlterConfigOpType, ConfigEntry, ConfigResource,
                                       ConfigSource, ResourceType)
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic("cfg", num_partitions=2, replication_factor=1,
                                  config={"retention.ms": "3600000"})])["cfg"].result(timeout=30)
    resource = ConfigResource(ResourceType.TOPIC, "cfg")

    def describe():
        return admin.describe_configs([resource])[resource].result(timeout=30)

    configs = describe()
    assert configs["retention.ms"].value == "3600000"
    assert configs["retention.ms"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert configs["segment.bytes"].source == ConfigSource.DEFAULT_CONFIG.value

    alter = ConfigResource(ResourceType.TOPIC, "cfg", incremental_configs=[
        ConfigEntry("flush.messages", "1", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("retention.ms", None, incremental_operation=AlterConfigOpType.DELETE)])
    admin.incremental_alter_configs([alter])[alter].result(timeout=30)
    configs = describe()
    assert configs["flush.messages"].value == "1"
    assert configs["retention.ms"].source == ConfigSource.DEFAULT_CONFIG.value

    bad = ConfigResource(ResourceType.TOPIC, "cfg", incremental_configs=[
        ConfigEntry("segment.bytes", "3", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("retention.ms", "5", incremental_operation=AlterConfigOpType.SET)])
    try:
        admin.incremental_alter_configs([bad])[bad].result(timeout=30)
        raise AssertionError("an invalid config was accepted")
    except Exception as e:
        assert "INVALID_CONFIG" in str(e) or "segment.bytes" in str(e)
    assert describe()["retention.ms"].source == ConfigSource.DEFAULT_CONFIG.value

    broker.stop()
    broker.start()
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    configs = describe()
    assert configs["flush.messages"].value == "1"
    assert configs["flush.messages"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value


def test_delete_records_moves_the_low_watermark(broker):
    from confluent_kafka import TopicPartition as CkTopicPartition
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(10):
        producer.produce("trim", value=f"t{i}".encode())
        producer.flush(30)  # one batch per message, so the cut is exact
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    futures = admin.delete_records([CkTopicPartition("trim", 0, 4)])
    result = list(futures.values())[0].result(timeout=30)
    assert result.low_watermark == 4
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None)
    tp = TopicPartition("trim", 0)
    assert consumer.beginning_offsets([tp])[tp] == 4
    consumer.close()
    records = consume_all(broker.bootstrap, "trim", 0, 6)
    assert [r.value for r in records] == [f"t{i}".encode() for i in range(4, 10)]


def _group_broker():
    from conftest import Broker
    return Broker(extra=["group.initial.rebalance.delay.ms=100"])


def test_a_consumer_group_of_three_rebalances_and_consumes_every_message_exactly_once():
    import threading
    from confluent_kafka import Consumer
    broker = _group_broker()
    try:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        admin.create_topics([NewTopic("work", num_partitions=6, replication_factor=1)])["work"].result(timeout=30)
        producer = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True})
        total = 3000
        for i in range(total):
            producer.produce("work", key=str(i), value=str(i))
        assert producer.flush(30) == 0

        seen = []
        errors = []
        lock = threading.Lock()
        stop = {}

        def member(name):
            try:
                run_member(name)
            except Exception as e:  # a dead thread must fail the test, not hang it
                errors.append(f"{name}: {e!r}")

        def run_member(name):
            consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "workers",
                                 "enable.auto.commit": False, "auto.offset.reset": "earliest",
                                 "session.timeout.ms": 6000, "heartbeat.interval.ms": 500,
                                 "client.id": name})
            # With a revoke callback, librdkafka lets the application take its
            # partitions back inside poll() before rejoining, so every commit
            # below lands before the group hands partitions out again (a
            # commit then would get REBALANCE_IN_PROGRESS, as from Kafka).
            consumer.subscribe(["work"], on_revoke=lambda c, partitions: None)
            while not stop.get(name):
                msg = consumer.poll(0.2)
                if msg is None or msg.error():
                    continue
                with lock:
                    seen.append(int(msg.value()))
                # Commit after processing, before the next poll can rebalance.
                consumer.commit(message=msg, asynchronous=False)
            consumer.close()

        threads = {n: threading.Thread(target=member, args=(n,)) for n in ("a", "b", "c")}
        threads["a"].start()
        deadline = time.monotonic() + 60
        while len(seen) < 500 and time.monotonic() < deadline:
            time.sleep(0.05)
        threads["b"].start()
        threads["c"].start()
        while len(seen) < 1500 and time.monotonic() < deadline:
            time.sleep(0.05)
        stop["a"] = True
        threads["a"].join(timeout=30)
        while len(seen) < total and time.monotonic() < deadline:
            time.sleep(0.05)
        stop["b"] = stop["c"] = True
        for t in threads.values():
            t.join(timeout=30)
        assert not errors, errors
        assert sorted(seen) == list(range(total)), f"{len(seen)} processed, {len(set(seen))} distinct"
    finally:
        broker.close()


def test_committed_offsets_survive_a_restart():
    from confluent_kafka import Consumer
    broker = _group_broker()
    try:
        producer = Producer({"bootstrap.servers": broker.bootstrap})
        for i in range(20):
            producer.produce("resume", value=str(i))
        assert producer.flush(30) == 0

        def consumer():
            c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "resumers",
                          "enable.auto.commit": False, "auto.offset.reset": "earliest"})
            c.subscribe(["resume"])
            return c

        c = consumer()
        got = []
        deadline = time.monotonic() + 30
        while len(got) < 10 and time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is not None and not msg.error():
                got.append(int(msg.value()))
                c.commit(message=msg, asynchronous=False)
        c.close()
        broker.stop()
        broker.start()
        c = consumer()
        rest = []
        deadline = time.monotonic() + 30
        while len(rest) < 10 and time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is not None and not msg.error():
                rest.append(int(msg.value()))
        c.close()
        assert got == list(range(10))
        assert rest == list(range(10, 20))
    finally:
        broker.close()


def test_kafka_python_group_consumer_commits_and_a_successor_resumes():
    broker = _group_broker()
    try:
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
        for i in range(30):
            producer.send("kpg", value=f"m{i}".encode())
        producer.flush(timeout=30)
        producer.close()

        def read(expected):
            consumer = KafkaConsumer("kpg", bootstrap_servers=broker.bootstrap, group_id="kp-readers",
                                     auto_offset_reset="earliest", enable_auto_commit=False,
                                     session_timeout_ms=6000, heartbeat_interval_ms=500)
            got = []
            deadline = time.monotonic() + 30
            while len(got) < expected and time.monotonic() < deadline:
                for batch in consumer.poll(timeout_ms=500).values():
                    got.extend(r.value for r in batch)
            consumer.commit()
            consumer.close()
            return got

        assert read(30) == [f"m{i}".encode() for i in range(30)]
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
        for i in range(30, 35):
            producer.send("kpg", value=f"m{i}".encode())
        producer.flush(timeout=30)
        producer.close()
        # A successor in the same group starts from the committed position.
        assert read(5) == [f"m{i}".encode() for i in range(30, 35)]
    finally:
        broker.close()


def test_topic_metadata_survives_a_kill_with_ids_partitions_and_deletions(broker):
    import os
    from confluent_kafka import TopicCollection
    from confluent_kafka.admin import NewPartitions
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    created = admin.create_topics([NewTopic("kept", num_partitions=2, replication_factor=1),
                                   NewTopic("dropped", num_partitions=1, replication_factor=1)])
    for future in created.values():
        future.result(timeout=30)
    admin.create_partitions([NewPartitions("kept", 3)])["kept"].result(timeout=30)
    admin.delete_topics(["dropped"])["dropped"].result(timeout=30)

    def kept():
        described = admin.describe_topics(TopicCollection(["kept"]))["kept"].result(timeout=30)
        return str(described.topic_id), len(described.partitions)

    before = kept()
    assert before[1] == 3
    assert before[0] != "AAAAAAAAAAAAAAAAAAAAAA"  # a real id, not all zeroes
    broker.kill()
    broker.start()
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    assert kept() == before
    assert "dropped" not in admin.list_topics(timeout=30).topics
    assert not os.path.exists(os.path.join(broker.dir, "dropped-0"))


def test_described_sources_tell_topic_broker_and_default_settings_apart():
    from conftest import Broker
    from confluent_kafka.admin import ConfigResource, ConfigSource, ResourceType
    broker = Broker(extra=["log.retention.ms=7200000", "min.insync.replicas=2"])
    try:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        admin.create_topics([NewTopic("src", num_partitions=1, replication_factor=1,
                                      config={"segment.ms": "60000"})])["src"].result(timeout=30)
        topic = ConfigResource(ResourceType.TOPIC, "src")
        configs = admin.describe_configs([topic])[topic].result(timeout=30)
        assert configs["segment.ms"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
        assert configs["retention.ms"].value == "7200000"
        assert configs["retention.ms"].source == ConfigSource.STATIC_BROKER_CONFIG.value
        assert configs["min.insync.replicas"].value == "2"
        assert configs["min.insync.replicas"].source == ConfigSource.STATIC_BROKER_CONFIG.value
        assert configs["segment.bytes"].source == ConfigSource.DEFAULT_CONFIG.value
        node = ConfigResource(ResourceType.BROKER, "1")
        configs = admin.describe_configs([node])[node].result(timeout=30)
        assert configs["log.retention.ms"].source == ConfigSource.STATIC_BROKER_CONFIG.value
        assert configs["log.segment.bytes"].source == ConfigSource.DEFAULT_CONFIG.value
    finally:
        broker.close()


def _java_hash(s):
    """Java's String.hashCode (ASCII strings), as an unsigned 32-bit value."""
    h = 0
    for c in s:
        h = (h * 31 + ord(c)) & 0xFFFFFFFF
    return h


def test_committed_offsets_are_compacted_and_the_latest_survive_a_kill():
    from confluent_kafka import Consumer, TopicPartition as Tp
    from conftest import Broker
    broker = Broker(extra=["sluice.offsets.compact.records=20"])
    try:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        admin.create_topics([NewTopic("compacted", num_partitions=2,
                                      replication_factor=1)])["compacted"].result(timeout=30)
        group = "compacting-group"

        def consumer():
            return Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group,
                             "enable.auto.commit": False})

        c = consumer()
        # Partition 1 is committed once, early: compaction must keep it.
        c.commit(offsets=[Tp("compacted", 1, 5)], asynchronous=False)
        for i in range(1, 201):
            c.commit(offsets=[Tp("compacted", 0, i)], asynchronous=False)
        offsets_partition = (_java_hash(group) & 0x7FFFFFFF) % 50
        low, high = c.get_watermark_offsets(Tp("__consumer_offsets", offsets_partition),
                                            timeout=30)
        assert low > 0, "nothing was compacted away"
        assert high - low < 60, f"the partition still holds {high - low} records"
        c.close()

        broker.kill()
        broker.start()
        c = consumer()
        committed = c.committed([Tp("compacted", 0), Tp("compacted", 1)], timeout=30)
        assert [tp.offset for tp in committed] == [200, 5]
        c.close()
    finally:
        broker.close()


def _refused_with_invalid_request(future, what):
    """The error string the client reports (librdkafka shows the broker's
    error message for some APIs, its own text for the code for others)."""
    from confluent_kafka import KafkaError, KafkaException
    try:
        future.result(timeout=30)
    except KafkaException as e:
        err = e.args[0]
        assert err.code() == KafkaError.INVALID_REQUEST, f"{what}: {err}"
        return err.str()
    raise AssertionError(f"{what} was accepted")


def test_the_offsets_topic_cannot_be_deleted_repartitioned_or_reconfigured(broker):
    from confluent_kafka import Consumer, TopicPartition as CkTopicPartition
    from confluent_kafka.admin import (AlterConfigOpType, ConfigEntry, ConfigResource,
                                       NewPartitions, ResourceType)
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(5):
        producer.produce("kept", value=str(i))
    assert producer.flush(30) == 0
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "keeper",
                         "enable.auto.commit": False})
    consumer.commit(offsets=[CkTopicPartition("kept", 0, 3)], asynchronous=False)

    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    _refused_with_invalid_request(
        admin.delete_topics(["__consumer_offsets"])["__consumer_offsets"], "DeleteTopics")
    why = _refused_with_invalid_request(
        admin.create_partitions([NewPartitions("__consumer_offsets", 60)])["__consumer_offsets"],
        "CreatePartitions")
    assert "scramble every consumer group's committed offsets" in why, why
    resource = ConfigResource(ResourceType.TOPIC, "__consumer_offsets", incremental_configs=[
        ConfigEntry("retention.ms", "1000", incremental_operation=AlterConfigOpType.SET)])
    why = _refused_with_invalid_request(
        admin.incremental_alter_configs([resource])[resource], "IncrementalAlterConfigs")
    assert "internal topic" in why, why

    # Nothing changed: 50 partitions, no retention override, and the group's
    # offset is still there and still moves.
    assert len(admin.list_topics(timeout=30).topics["__consumer_offsets"].partitions) == 50
    described = ConfigResource(ResourceType.TOPIC, "__consumer_offsets")
    configs = admin.describe_configs([described])[described].result(timeout=30)
    assert configs["retention.ms"].value == "-1"
    assert consumer.committed([CkTopicPartition("kept", 0)], timeout=30)[0].offset == 3
    consumer.commit(offsets=[CkTopicPartition("kept", 0, 5)], asynchronous=False)
    assert consumer.committed([CkTopicPartition("kept", 0)], timeout=30)[0].offset == 5
    consumer.close()
    with open(f"{broker.dir}/broker.log") as log:
        text = log.read()
    for api in ("DeleteTopics", "CreatePartitions", "IncrementalAlterConfigs"):
        assert f"{api} refused" in text, text


def test_a_transactional_producer_fails_at_once_with_a_fatal_error(broker):
    from confluent_kafka import KafkaError, KafkaException
    producer = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": "tx-1"})
    try:
        # Were the refusal retriable, librdkafka would retry until this
        # timeout and then raise _TIMED_OUT instead of the broker's code.
        producer.init_transactions(30)
    except KafkaException as e:
        err = e.args[0]
        assert err.code() == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED, err
        assert err.fatal(), err
        assert "transactions are not supported" in err.str(), err
    else:
        raise AssertionError("init_transactions succeeded on a broker without transactions")


def test_list_offsets_max_timestamp_finds_the_record_with_the_largest_timestamp(broker):
    from confluent_kafka import TopicPartition as CkTopicPartition
    from confluent_kafka.admin import OffsetSpec
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    tp = CkTopicPartition("stamps", 0)
    empty = admin.create_topics([NewTopic("stamps", num_partitions=1, replication_factor=1)])
    empty["stamps"].result(timeout=30)
    answer = admin.list_offsets({tp: OffsetSpec.max_timestamp()})[tp].result(timeout=30)
    assert answer.offset == -1
    # The largest timestamp sits inside a compressed batch, after a smaller
    # one, and a later record ties with it: the first record holding it wins.
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 100,
                         "compression.type": "lz4"})
    for ts in (1_000_000, 9_000_000, 2_000_000):
        producer.produce("stamps", value=b"x", partition=0, timestamp=ts)
    assert producer.flush(30) == 0
    for ts in (3_000_000, 9_000_000):
        producer.produce("stamps", value=b"y", partition=0, timestamp=ts)
        assert producer.flush(30) == 0
    answer = admin.list_offsets({tp: OffsetSpec.max_timestamp()})[tp].result(timeout=30)
    assert (answer.offset, answer.timestamp) == (1, 9_000_000)


def test_a_restarted_static_member_gets_its_partitions_back_without_a_rebalance():
    """KIP-345 through librdkafka: a consumer with group.instance.id that
    restarts within its session timeout takes its old place; the other
    member is never asked to give its partitions up."""
    from confluent_kafka import Consumer
    broker = _group_broker()
    try:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        admin.create_topics([NewTopic("static", num_partitions=4, replication_factor=1)])["static"].result(timeout=30)
        events = {"a": [], "b": [], "b2": []}

        def member(name, instance):
            c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "statics",
                          "group.instance.id": instance, "client.id": name,
                          "session.timeout.ms": 30000, "heartbeat.interval.ms": 500,
                          "enable.auto.commit": False, "auto.offset.reset": "earliest"})
            c.subscribe(["static"],
                        on_assign=lambda c, ps: events[name].append(("assign", sorted(p.partition for p in ps))),
                        on_revoke=lambda c, ps: events[name].append(("revoke", sorted(p.partition for p in ps))))
            return c

        def assigned(name):
            return [e[1] for e in events[name] if e[0] == "assign"]

        a, b = member("a", "ia"), member("b", "ib")
        deadline = time.monotonic() + 60
        # Until both hold partitions of one generation, between them all four.
        while time.monotonic() < deadline:
            a.poll(0.1)
            b.poll(0.1)
            if a.assignment() and b.assignment() and \
                    len(a.assignment()) + len(b.assignment()) == 4:
                break
        b_partitions = sorted(p.partition for p in b.assignment())
        a_partitions = sorted(p.partition for p in a.assignment())
        assert b_partitions and a_partitions, events
        revokes_before = [e for e in events["a"] if e[0] == "revoke"]

        # A static member leaves no LeaveGroup behind on close (KIP-345):
        # its session keeps its place for the restarted process.
        b.close()
        b2 = member("b2", "ib")
        while time.monotonic() < deadline and not b2.assignment():
            b2.poll(0.1)
            a.poll(0.1)
        assert sorted(p.partition for p in b2.assignment()) == b_partitions, events
        # A rebalance could not have completed without a rejoining, and
        # librdkafka revokes before it rejoins: no new revoke means none.
        assert [e for e in events["a"] if e[0] == "revoke"] == revokes_before, events
        assert sorted(p.partition for p in a.assignment()) == a_partitions

        described = admin.describe_consumer_groups(["statics"])["statics"].result(timeout=30)
        instances = sorted(m.group_instance_id for m in described.members)
        assert instances == ["ia", "ib"], described
        b2.close()
        a.close()
    finally:
        broker.close()


def test_a_produce_to_the_offsets_topic_is_refused_and_the_broker_restarts_cleanly():
    from confluent_kafka import Consumer, KafkaError, TopicPartition as Tp
    from conftest import Broker
    broker = Broker()
    try:
        producer = Producer({"bootstrap.servers": broker.bootstrap})
        for i in range(5):
            producer.produce("guarded", value=str(i))
        assert producer.flush(30) == 0
        group = "guardian"

        def consumer():
            return Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group,
                             "enable.auto.commit": False})

        c = consumer()
        c.commit(offsets=[Tp("guarded", 0, 4)], asynchronous=False)
        # The partition holding this group's offsets: a client's write there
        # would be read back as a commit, or break the next start.
        offsets_partition = (_java_hash(group) & 0x7FFFFFFF) % 50
        internal = Tp("__consumer_offsets", offsets_partition)
        before = c.get_watermark_offsets(internal, timeout=30)
        assert before[1] > before[0], f"the commit is not in {internal}: {before}"

        delivered = []
        intruder = Producer({"bootstrap.servers": broker.bootstrap,
                             "message.timeout.ms": 30000})
        for i in range(3):
            intruder.produce("__consumer_offsets", key=b"\x00\x01garbage", value=f"not an offset {i}",
                             partition=offsets_partition,
                             on_delivery=lambda err, msg: delivered.append(err))
        intruder.flush(30)
        assert len(delivered) == 3, delivered
        # INVALID_TOPIC_EXCEPTION (17), not retried until the timeout.
        assert all(e is not None and e.code() == KafkaError.TOPIC_EXCEPTION for e in delivered), \
            delivered
        assert c.get_watermark_offsets(internal, timeout=30) == before, "something was appended"
        c.close()

        broker.stop()
        with open(f"{broker.dir}/broker.log") as log:
            assert "refused a client's produce to an internal topic" in log.read()
        broker.start()
        c = consumer()
        assert c.get_watermark_offsets(internal, timeout=30) == before
        assert c.committed([Tp("guarded", 0)], timeout=30)[0].offset == 4
        # The group still commits after the restart.
        c.commit(offsets=[Tp("guarded", 0, 5)], asynchronous=False)
        assert c.committed([Tp("guarded", 0)], timeout=30)[0].offset == 5
        c.close()
    finally:
        broker.close()
