// Apache Kafka's Java client (kafka-clients 3.9) against a Sluice broker.
// Run by broker/tests/java.rs, which compiles it with javac:
//
//   java -cp CLASSES:JARS/* JavaClientCheck BOOTSTRAP TOPIC PARTITIONS RECORDS
//
// 1. Creates TOPIC with PARTITIONS partitions (Admin client).
// 2. Produces RECORDS records with the producer's defaults (idempotent,
//    acks=all), keyed so they spread over the partitions.
// 3. Consumes them with a classic consumer group (group.id, subscribe,
//    commitSync) and checks each partition's records arrive exactly once, in
//    the order they were produced, at increasing offsets.
// 4. Produces a few more and consumes again with a new consumer in the same
//    group: it must read only the new ones (the committed offsets are
//    honoured) and end at the log end.
//
// Prints one line per step; any failure prints "FAILED: why" and exits 1.

import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.Properties;
import java.util.Set;
import java.util.TreeMap;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.ElectionType;
import org.apache.kafka.common.TopicPartitionInfo;
import org.apache.kafka.common.errors.ElectionNotNeededException;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

public final class JavaClientCheck {
    /** How long one consume step may take before it fails. */
    private static final Duration CONSUME_DEADLINE = Duration.ofSeconds(60);
    /** Records produced before the second consumer runs. */
    private static final int MORE = 10;

    private static final class CheckFailed extends Exception {
        CheckFailed(String message) {
            super(message);
        }
    }

    public static void main(String[] args) {
        try {
            if (args.length != 4 && args.length != 5) {
                throw new CheckFailed(
                        "usage: JavaClientCheck BOOTSTRAP TOPIC PARTITIONS RECORDS [REPLICATION_FACTOR]");
            }
            short replication = args.length == 5 ? Short.parseShort(args[4]) : 1;
            run(args[0], args[1], Integer.parseInt(args[2]), Integer.parseInt(args[3]), replication);
        } catch (Throwable e) {
            System.out.println("FAILED: " + e);
            e.printStackTrace(System.out);
            System.out.flush();
            System.exit(1);
        }
        System.out.flush();
        // The clients are closed; exit without waiting for stray JVM threads.
        System.exit(0);
    }

    private static void run(String bootstrap, String topic, int partitions, int records,
            short replication) throws Exception {
        String group = topic + "-group";
        createTopic(bootstrap, topic, partitions, replication);
        System.out.println("created " + topic + " with " + partitions + " partitions");

        Map<Integer, List<String>> sent = produce(bootstrap, topic, "first-", records);
        System.out.println("produced " + records + " records to " + sent.size()
                + " partitions (idempotent, acks=all)");
        if (sent.size() != partitions) {
            throw new CheckFailed("the records reached " + sent.size() + " of "
                    + partitions + " partitions");
        }

        Map<Integer, List<String>> got = consume(bootstrap, topic, group, records);
        same("the first consumer", sent, got);
        System.out.println("consumed " + records + " records once each, in order per partition,"
                + " and committed");

        Map<Integer, List<String>> more = produce(bootstrap, topic, "second-", MORE);
        Map<Integer, List<String>> gotMore = consume(bootstrap, topic, group, MORE);
        same("the second consumer of the group", more, gotMore);
        System.out.println("a second consumer in the group read only the " + MORE
                + " new records");

        if (replication > 1) {
            electPreferred(bootstrap, topic);
        }
    }

    /** AdminClient.electLeaders (ElectLeaders): every partition is led by
     *  its preferred replica already, so each answers "not needed". */
    private static void electPreferred(String bootstrap, String topic) throws Exception {
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        try (Admin admin = Admin.create(p)) {
            TopicPartition first = new TopicPartition(topic, 0);
            Map<TopicPartition, Optional<Throwable>> result = admin
                    .electLeaders(ElectionType.PREFERRED, Set.of(first))
                    .partitions()
                    .get(30, TimeUnit.SECONDS);
            Optional<Throwable> outcome = result.get(first);
            if (outcome == null || (outcome.isPresent()
                    && !(outcome.get() instanceof ElectionNotNeededException))) {
                throw new CheckFailed("electLeaders answered " + result);
            }
            System.out.println("electLeaders(PREFERRED) answered for " + first + ": "
                    + (outcome.isPresent() ? "not needed" : "elected"));
        }
    }

    private static void createTopic(String bootstrap, String topic, int partitions,
            short replication)
            throws Exception {
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        try (Admin admin = Admin.create(p)) {
            admin.createTopics(List.of(new NewTopic(topic, partitions, replication)))
                    .all()
                    .get(30, TimeUnit.SECONDS);
            // The admin client describes topics with DescribeTopicPartitions
            // (KIP-966) when the broker offers it; wait until every
            // partition has a leader and all its replicas.
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(30);
            while (true) {
                TopicDescription d = admin.describeTopics(List.of(topic))
                        .allTopicNames()
                        .get(30, TimeUnit.SECONDS)
                        .get(topic);
                boolean ready = d.partitions().size() == partitions;
                for (TopicPartitionInfo info : d.partitions()) {
                    ready &= info.leader() != null && info.replicas().size() == replication;
                }
                if (ready) {
                    System.out.println("described " + topic + ": " + partitions
                            + " partitions, each with a leader and " + replication + " replicas");
                    break;
                }
                if (System.nanoTime() > deadline) {
                    throw new IllegalStateException("topic never fully described: " + d);
                }
                Thread.sleep(100);
            }
        }
    }

    /** Produces `count` records with the producer's defaults; returns each
     *  partition's values in the order they were sent. */
    private static Map<Integer, List<String>> produce(
            String bootstrap, String topic, String prefix, int count) throws Exception {
        Properties p = new Properties();
        p.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        p.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        // Nothing else: enable.idempotence=true and acks=all are the defaults
        // this test is about.
        List<String> values = new ArrayList<>();
        List<Future<RecordMetadata>> acks = new ArrayList<>();
        try (KafkaProducer<String, String> producer = new KafkaProducer<>(p)) {
            for (int i = 0; i < count; i++) {
                String value = prefix + i;
                values.add(value);
                acks.add(producer.send(new ProducerRecord<>(topic, "key-" + (i % 64), value)));
            }
            producer.flush();
        }
        Map<Integer, List<String>> sent = new TreeMap<>();
        Map<Integer, Long> lastOffset = new HashMap<>();
        for (int i = 0; i < count; i++) {
            RecordMetadata md = acks.get(i).get(30, TimeUnit.SECONDS);
            Long last = lastOffset.put(md.partition(), md.offset());
            if (last != null && md.offset() <= last) {
                throw new CheckFailed("partition " + md.partition() + " acknowledged offset "
                        + md.offset() + " after " + last);
            }
            sent.computeIfAbsent(md.partition(), k -> new ArrayList<>()).add(values.get(i));
        }
        return sent;
    }

    /** Reads `count` records with a new member of `group`, commits, and
     *  checks the consumer then stands at the end of every partition. */
    private static Map<Integer, List<String>> consume(
            String bootstrap, String topic, String group, int count) throws Exception {
        Properties p = new Properties();
        p.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ConsumerConfig.GROUP_ID_CONFIG, group);
        p.put(ConsumerConfig.GROUP_PROTOCOL_CONFIG, "classic");
        p.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        p.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        p.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        p.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG,
                StringDeserializer.class.getName());
        Map<Integer, List<String>> got = new TreeMap<>();
        Map<Integer, Long> lastOffset = new HashMap<>();
        int n = 0;
        long deadline = System.nanoTime() + CONSUME_DEADLINE.toNanos();
        try (KafkaConsumer<String, String> consumer = new KafkaConsumer<>(p)) {
            consumer.subscribe(List.of(topic));
            while (n < count) {
                if (System.nanoTime() > deadline) {
                    throw new CheckFailed("consumed " + n + " of " + count + " records within "
                            + CONSUME_DEADLINE + ": " + got);
                }
                for (ConsumerRecord<String, String> r : consumer.poll(Duration.ofMillis(200))) {
                    Long last = lastOffset.put(r.partition(), r.offset());
                    if (last != null && r.offset() <= last) {
                        throw new CheckFailed("partition " + r.partition() + " delivered offset "
                                + r.offset() + " after " + last);
                    }
                    got.computeIfAbsent(r.partition(), k -> new ArrayList<>()).add(r.value());
                    n++;
                }
            }
            if (n != count) {
                throw new CheckFailed("consumed " + n + " records, expected " + count);
            }
            consumer.commitSync(Duration.ofSeconds(30));
            // The committed offsets are the log ends: nothing was skipped and
            // nothing is left to read.
            Map<TopicPartition, Long> ends =
                    consumer.endOffsets(consumer.assignment(), Duration.ofSeconds(30));
            for (TopicPartition tp : consumer.assignment()) {
                long position = consumer.position(tp, Duration.ofSeconds(30));
                if (position != ends.get(tp)) {
                    throw new CheckFailed(tp + ": position " + position + " but the log ends at "
                            + ends.get(tp));
                }
            }
        }
        return got;
    }

    private static void same(String who, Map<Integer, List<String>> sent,
            Map<Integer, List<String>> got) throws CheckFailed {
        if (!sent.equals(got)) {
            throw new CheckFailed(who + " did not read each partition's records once, in order:"
                    + "\n  produced: " + sent + "\n  consumed: " + got);
        }
    }
}
