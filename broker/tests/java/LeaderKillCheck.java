// Apache Kafka's producer (its defaults: idempotent, acks=all) while a
// partition leader is killed. Run by broker/tests/java.rs:
//
//   java -cp CLASSES:JARS/* LeaderKillCheck BOOTSTRAP TOPIC RECORDS
//
// 1. Creates TOPIC: 3 partitions, 3 replicas, min.insync.replicas=2; prints
//    "created" once every partition has a leader and three replicas.
// 2. Sends RECORDS records over ten keys, each key's values numbered in
//    order ("k3-17"). Half-way it prints "half-way" and keeps sending: the
//    test kills a leader then, with records in flight.
// 3. Flushes: every send must be acknowledged (the client retries against
//    the new leader).
// 4. Reads every partition from the start and checks that each
//    acknowledged record is there once, at the offset its acknowledgement
//    named, and that each key's records come in the order sent.
//
// Prints "OK acked=N" at the end, or "FAILED: why" and exits 1.

import java.time.Duration;
import java.util.ArrayList;
import java.util.Collections;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.TimeUnit;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.common.TopicPartitionInfo;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

public final class LeaderKillCheck {
    private static final int PARTITIONS = 3;
    private static final int KEYS = 10;

    public static void main(String[] args) throws Exception {
        String bootstrap = args[0];
        String topic = args[1];
        int records = Integer.parseInt(args[2]);
        try {
            run(bootstrap, topic, records);
        } catch (Exception e) {
            System.out.println("FAILED: " + e);
            System.out.flush();
            System.exit(1);
        }
    }

    private static void run(String bootstrap, String topic, int records) throws Exception {
        create(bootstrap, topic);
        System.out.println("created");
        System.out.flush();

        // Acknowledged offsets by "partition/offset" -> value.
        Map<String, String> acked = new ConcurrentHashMap<>();
        List<Exception> failures = Collections.synchronizedList(new ArrayList<>());
        Properties p = new Properties();
        p.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        p.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        p.put(ProducerConfig.LINGER_MS_CONFIG, "5");
        p.put(ProducerConfig.DELIVERY_TIMEOUT_MS_CONFIG, "120000");
        p.put(ProducerConfig.METADATA_MAX_AGE_CONFIG, "1000");
        int[] next = new int[KEYS];
        try (KafkaProducer<String, String> producer = new KafkaProducer<>(p)) {
            for (int i = 0; i < records; i++) {
                int key = i % KEYS;
                String value = "k" + key + "-" + next[key]++;
                producer.send(new ProducerRecord<>(topic, "k" + key, value), (md, e) -> {
                    if (e != null) {
                        failures.add(e);
                    } else if (acked.put(md.partition() + "/" + md.offset(), value) != null) {
                        failures.add(new IllegalStateException(
                                "two acknowledgements for " + md.partition() + "/" + md.offset()));
                    }
                });
                if (i == records / 2) {
                    System.out.println("half-way");
                    System.out.flush();
                }
                if (i % 50 == 0) {
                    Thread.sleep(2);
                }
            }
            producer.flush();
        }
        if (!failures.isEmpty()) {
            throw new IllegalStateException("sends failed: " + failures.subList(0, Math.min(5, failures.size())));
        }
        if (acked.size() != records) {
            throw new IllegalStateException("acknowledged " + acked.size() + " of " + records);
        }

        Properties c = new Properties();
        c.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        c.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        c.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        c.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        List<TopicPartition> all = new ArrayList<>();
        for (int i = 0; i < PARTITIONS; i++) {
            all.add(new TopicPartition(topic, i));
        }
        Map<String, String> read = new HashMap<>();
        Map<String, Integer> lastSeq = new HashMap<>();
        try (KafkaConsumer<String, String> consumer = new KafkaConsumer<>(c)) {
            consumer.assign(all);
            consumer.seekToBeginning(all);
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(60);
            while (read.size() < records && System.nanoTime() < deadline) {
                for (ConsumerRecord<String, String> r : consumer.poll(Duration.ofMillis(200))) {
                    String at = r.partition() + "/" + r.offset();
                    if (read.put(at, r.value()) != null) {
                        throw new IllegalStateException("read " + at + " twice");
                    }
                    int seq = Integer.parseInt(r.value().substring(r.value().indexOf('-') + 1));
                    Integer before = lastSeq.put(r.key(), seq);
                    if (before != null && seq != before + 1) {
                        throw new IllegalStateException("key " + r.key() + ": " + seq
                                + " after " + before);
                    }
                }
            }
        }
        if (!read.equals(acked)) {
            throw new IllegalStateException("read " + read.size() + " records, not the "
                    + acked.size() + " acknowledged at their offsets");
        }
        System.out.println("OK acked=" + acked.size());
        System.out.flush();
    }

    private static void create(String bootstrap, String topic) throws Exception {
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        try (Admin admin = Admin.create(p)) {
            NewTopic t = new NewTopic(topic, PARTITIONS, (short) 3)
                    .configs(Map.of("min.insync.replicas", "2"));
            admin.createTopics(List.of(t)).all().get(30, TimeUnit.SECONDS);
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(30);
            while (true) {
                TopicDescription d = admin.describeTopics(List.of(topic))
                        .allTopicNames()
                        .get(30, TimeUnit.SECONDS)
                        .get(topic);
                boolean ready = d.partitions().size() == PARTITIONS;
                for (TopicPartitionInfo info : d.partitions()) {
                    ready &= info.leader() != null && info.isr().size() == 3;
                }
                if (ready) {
                    return;
                }
                if (System.nanoTime() > deadline) {
                    throw new IllegalStateException("the topic's partitions never all had leaders: " + d);
                }
                Thread.sleep(50);
            }
        }
    }
}
