"""Faults under real clients: a follower paused past the lag limit, two of
three replicas stopped, and the active controller killed, each while
confluent-kafka produces. Every wait polls with a deadline; every broker
started is killed at teardown."""

import signal
import threading
import time

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import Cluster
from test_cluster import wait_for


def state(bootstrap, topic, partition):
    """(leader, sorted ISR) of one partition, or None while unknown. A new
    client each time asks a broker of `bootstrap`: one that knew the
    cluster could ask a paused broker and wait out its timeout."""
    md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=10)
    t = md.topics.get(topic)
    if t is None or t.error is not None or partition not in t.partitions:
        return None
    p = t.partitions[partition]
    return p.leader, sorted(p.isrs)


def deliver(bootstrap, topic, value, acks):
    """Sends one message to partition 0 without retries; the delivery
    error, or None once acknowledged."""
    result = []
    producer = Producer({"bootstrap.servers": bootstrap, "acks": acks, "retries": 0,
                         "enable.idempotence": False, "message.timeout.ms": 20000})
    producer.produce(topic, value=value, partition=0,
                     on_delivery=lambda err, msg: result.append(err))
    assert producer.flush(30) == 0, "the message is still in flight"
    return result[0]


def read_partition(bootstrap, topic, partition, count):
    """The first `count` messages of a partition as (offset, value)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"read-{topic}",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, partition, 0)])
    seen = []
    deadline = time.monotonic() + 60
    while len(seen) < count and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            seen.append((msg.offset(), msg.value().decode()))
    consumer.close()
    return seen


class BackgroundProducer:
    """An idempotent acks=all producer sending to partition 0 until
    stopped, recording what was acknowledged and what failed."""

    def __init__(self, bootstrap, topic):
        self.topic = topic
        self.acked = []
        self.failed = []
        self.sent = 0
        self.producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                                  "linger.ms": 5, "message.timeout.ms": 120000})
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run)
        self.thread.start()

    def report(self, err, msg):
        if err is None:
            self.acked.append((msg.offset(), msg.value().decode()))
        else:
            self.failed.append(err)

    def run(self):
        while not self.stopping.is_set():
            self.producer.produce(self.topic, value=f"m{self.sent:06d}".encode(), partition=0,
                                  on_delivery=self.report)
            self.producer.poll(0)
            self.sent += 1
            time.sleep(0.001)

    def wait_for_more(self, what, more=50):
        start = len(self.acked)
        wait_for(what, lambda: len(self.acked) >= start + more, timeout=60)

    def finish(self, bootstrap):
        """Stops, flushes, and checks that every message sent was
        acknowledged once and is read back once, in order."""
        self.stopping.set()
        self.thread.join(timeout=30)
        assert self.producer.flush(120) == 0, "messages still in flight"
        assert not self.failed, f"delivery failures: {self.failed[:5]}"
        expected = sorted(self.acked)
        assert [v for _, v in expected] == [f"m{i:06d}" for i in range(self.sent)]
        assert read_partition(bootstrap, self.topic, 0, len(expected)) == expected


def create(admin, topic, **kwargs):
    admin.create_topics([NewTopic(topic, **kwargs)])[topic].result(timeout=30)


def test_a_follower_paused_past_the_lag_limit_leaves_the_isr_and_rejoins_while_producing(cluster):
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    topic = "paused"
    create(admin, topic, num_partitions=1, replication_factor=3,
           config={"min.insync.replicas": "2"})
    leader, _ = wait_for("all three in sync", lambda: (s := state(cluster.bootstrap, topic, 0))
                         and s[0] > 0 and len(s[1]) == 3 and s)
    follower = next(n for n in (1, 2, 3) if n != leader)
    producer = BackgroundProducer(cluster.bootstrap, topic)
    try:
        producer.wait_for_more("acknowledgements with all in sync")
        cluster.signal(follower, signal.SIGSTOP)
        # replica.lag.time.max.ms and the session are 1 s in these clusters.
        at_leader = cluster.brokers[leader - 1].bootstrap
        wait_for("the paused follower to leave the ISR",
                 lambda: (s := state(at_leader, topic, 0)) and follower not in s[1], timeout=30)
        producer.wait_for_more("acks=all to go on with two in sync")
        cluster.signal(follower, signal.SIGCONT)
        wait_for("the resumed follower to rejoin the ISR",
                 lambda: (s := state(cluster.bootstrap, topic, 0)) and len(s[1]) == 3, timeout=60)
        producer.wait_for_more("acks=all with all three in sync again")
    finally:
        cluster.signal(follower, signal.SIGCONT)
        producer.finish(cluster.bootstrap)


def test_with_two_of_three_replicas_stopped_acks_all_is_refused_and_acks_1_still_works():
    # Four brokers, three of them voters: the partition's replicas are 1
    # (its leader), 4 and 2, so stopping 4 and 2 leaves two voters, a
    # controller quorum that can shrink the ISR.
    cluster = Cluster(n=4, voters=3)
    try:
        admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
        topic = "two-down"
        create(admin, topic, num_partitions=1, replication_factor=-1, replica_assignment=[[1, 4, 2]],
               config={"min.insync.replicas": "2"})
        wait_for("broker 1 leading all three in sync",
                 lambda: state(cluster.bootstrap, topic, 0) == (1, [1, 2, 4]))
        assert deliver(cluster.bootstrap, topic, b"before", "all") is None
        cluster.brokers[3].kill()
        cluster.brokers[1].kill()
        wait_for("the ISR to be the leader alone",
                 lambda: state(cluster.bootstrap, topic, 0) == (1, [1]), timeout=30)
        err = deliver(cluster.bootstrap, topic, b"refused", "all")
        assert err is not None and err.code() == KafkaError.NOT_ENOUGH_REPLICAS, err
        assert deliver(cluster.bootstrap, topic, b"alone", "1") is None
        # Appended and acknowledged, but not committed while the ISR is
        # below min.insync.replicas (KIP-966): consumers do not see it yet.
        watermarks = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": "w"})
        assert watermarks.get_watermark_offsets(TopicPartition(topic, 0), timeout=10) == (0, 1)
        watermarks.close()
        # Broker 4 returns and catches up: the message is committed, and
        # read back after the first; the refused one was never appended.
        cluster.brokers[3].start()
        wait_for("broker 4 back in the ISR",
                 lambda: state(cluster.bootstrap, topic, 0) == (1, [1, 4]), timeout=30)
        assert [v for _, v in read_partition(cluster.bootstrap, topic, 0, 2)] == ["before", "alone"]
    finally:
        cluster.kill()


def test_killing_the_active_controller_while_producing_elects_another_and_keeps_the_topics(cluster):
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    topic = "under-controller-kill"
    create(admin, topic, num_partitions=1, replication_factor=3,
           config={"min.insync.replicas": "2"})
    wait_for("all three in sync", lambda: (s := state(cluster.bootstrap, topic, 0)) and s[0] > 0
             and len(s[1]) == 3)

    def controller():
        # A new client each time (see `state`): a killed broker's answer
        # is not cached.
        try:
            fresh = AdminClient({"bootstrap.servers": cluster.bootstrap})
            return fresh.describe_cluster(request_timeout=5).result().controller.id
        except Exception:
            return None

    old = wait_for("a controller", controller)
    producer = BackgroundProducer(cluster.bootstrap, topic)
    try:
        producer.wait_for_more("acknowledgements before the kill")
        cluster.brokers[old - 1].kill()
        # Election timeouts are 300 ms here: another within seconds.
        new = wait_for("another active controller",
                       lambda: (c := controller()) is not None and c != old and c, timeout=10)
        assert new != old
        assert state(cluster.bootstrap, topic, 0) is not None, "the topic is gone"

        def created():
            # A new client, as a tool started now would be: the old one
            # still has the dead controller in its metadata.
            fresh = AdminClient({"bootstrap.servers": cluster.bootstrap})
            try:
                create(fresh, "after-the-kill", num_partitions=1, replication_factor=2)
                return True
            except Exception as e:
                # A retry whose first try was applied finds the topic.
                return "TOPIC_ALREADY_EXISTS" in str(e)

        wait_for("CreateTopics to work", created, timeout=30)
        wait_for("the new topic to have a leader",
                 lambda: (s := state(cluster.bootstrap, "after-the-kill", 0)) and s[0] > 0)
        producer.wait_for_more("acknowledgements after the kill")
    finally:
        producer.finish(cluster.bootstrap)
