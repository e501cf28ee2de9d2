// A load generator on Apache Kafka's Java client (kafka-clients 3.9): produce
// RECORDS records of RECORD_SIZE bytes to TOPIC, then consume them all back,
// and report the broker's CPU-seconds per GB of payload for each phase.
// bench/scripts/java_load.sh compiles and runs it; by hand:
//
//   javac -cp 'JARS/*' -d CLASSES bench/java/JavaLoad.java
//   java -cp "CLASSES:JARS/*" JavaLoad BOOTSTRAP TOPIC PARTITIONS RECORDS RECORD_SIZE BROKER_PID CLK_TCK
//
// Phases, each timed and charged separately:
// 1. Creates TOPIC with PARTITIONS partitions (Admin client; an existing topic
//    is an error, so every run writes to fresh logs).
// 2. Produces RECORDS records without keys, record i to partition
//    i % PARTITIONS (equal bytes on every partition). Settings: acks=1,
//    enable.idempotence=false (acks=1 rules idempotence out), linger.ms=5,
//    batch.size=65536, compression none; everything else the client's
//    defaults (buffer.memory 32 MiB, max.in.flight 5, max.request.size 1 MiB).
//    The phase ends when every send is acknowledged (flush()).
// 3. Consumes every partition from offset 0 with one consumer (assign, no
//    group, so no offsets are committed), the client's fetch defaults
//    (fetch.max.bytes 50 MiB, max.partition.fetch.bytes 1 MiB,
//    fetch.min.bytes 1), until RECORDS records and RECORDS * RECORD_SIZE
//    payload bytes have been read.
//
// The broker's CPU is utime + stime from /proc/BROKER_PID/stat (fields 14 and
// 15, in clock ticks of CLK_TCK per second: `getconf CLK_TCK`), read just
// before and just after each phase: client start-up and topic creation are
// not charged. GB is 10^9 bytes of record payload (values), as Iggy's
// benchmark counts message payload; GiB figures are printed beside.
//
// Prints one "phase" line per phase, then one JSON object on the last line.
// Any failure prints "FAILED: why" and exits 1.

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.Properties;
import java.util.Random;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicReference;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.ConsumerRecords;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public final class JavaLoad {
    /** A consume phase that reads nothing new for this long has failed. */
    private static final Duration STALL = Duration.ofSeconds(60);

    private static final class LoadFailed extends Exception {
        LoadFailed(String message) {
            super(message);
        }
    }

    /** What one phase cost. */
    private record Phase(String name, long records, long bytes, double seconds, double cpuSeconds) {
        double cpuPerGb() {
            return cpuSeconds / (bytes / 1e9);
        }

        double cpuPerGib() {
            return cpuSeconds / (bytes / (double) (1L << 30));
        }

        double mbPerSecond() {
            return bytes / 1e6 / seconds;
        }

        String line() {
            return String.format(Locale.ROOT,
                    "phase %s: %d records, %d bytes in %.2f s (%.1f MB/s); broker CPU %.2f s"
                            + " = %.3f CPU-s/GB, %.3f CPU-s/GiB",
                    name, records, bytes, seconds, mbPerSecond(), cpuSeconds, cpuPerGb(),
                    cpuPerGib());
        }

        String json() {
            return String.format(Locale.ROOT,
                    "\"%s\":{\"records\":%d,\"bytes\":%d,\"seconds\":%.3f,\"mb_per_s\":%.1f,"
                            + "\"broker_cpu_s\":%.3f,\"cpu_s_per_gb\":%.4f,\"cpu_s_per_gib\":%.4f}",
                    name, records, bytes, seconds, mbPerSecond(), cpuSeconds, cpuPerGb(),
                    cpuPerGib());
        }
    }

    public static void main(String[] args) {
        try {
            if (args.length != 7) {
                throw new LoadFailed("usage: JavaLoad BOOTSTRAP TOPIC PARTITIONS RECORDS"
                        + " RECORD_SIZE BROKER_PID CLK_TCK");
            }
            run(args[0], args[1], Integer.parseInt(args[2]), Long.parseLong(args[3]),
                    Integer.parseInt(args[4]), Long.parseLong(args[5]),
                    Long.parseLong(args[6]));
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

    private static void run(String bootstrap, String topic, int partitions, long records,
            int recordSize, long brokerPid, long clockTicks) throws Exception {
        Path stat = Path.of("/proc", Long.toString(brokerPid), "stat");
        createTopic(bootstrap, topic, partitions);
        System.out.println("created " + topic + " with " + partitions + " partitions");

        Phase produce = produce(bootstrap, topic, partitions, records, recordSize, stat,
                clockTicks);
        System.out.println(produce.line());
        Phase consume = consume(bootstrap, topic, partitions, records, recordSize, stat,
                clockTicks);
        System.out.println(consume.line());
        System.out.println("{" + produce.json() + "," + consume.json() + "}");
    }

    /** utime + stime of the broker process, in seconds. */
    private static double brokerCpuSeconds(Path stat, long clockTicks) throws Exception {
        String text = Files.readString(stat, StandardCharsets.US_ASCII);
        // The command name (field 2) is in parentheses and may hold spaces:
        // count fields from the last ')'. Field 3 is the first after it.
        String[] fields = text.substring(text.lastIndexOf(')') + 2).trim().split(" +");
        long utime = Long.parseLong(fields[14 - 3]);
        long stime = Long.parseLong(fields[15 - 3]);
        return (utime + stime) / (double) clockTicks;
    }

    private static void createTopic(String bootstrap, String topic, int partitions)
            throws Exception {
        Properties props = new Properties();
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        try (Admin admin = Admin.create(props)) {
            admin.createTopics(List.of(new NewTopic(topic, partitions, (short) 1)))
                    .all()
                    .get(60, TimeUnit.SECONDS);
        }
    }

    private static Phase produce(String bootstrap, String topic, int partitions, long records,
            int recordSize, Path stat, long clockTicks) throws Exception {
        Properties props = new Properties();
        props.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(ProducerConfig.ACKS_CONFIG, "1");
        props.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "false");
        props.put(ProducerConfig.LINGER_MS_CONFIG, "5");
        props.put(ProducerConfig.BATCH_SIZE_CONFIG, "65536");
        props.put(ProducerConfig.COMPRESSION_TYPE_CONFIG, "none");
        props.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        props.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG,
                ByteArraySerializer.class.getName());

        // One random payload, sent as every record's value: the broker never
        // looks inside records, so its content does not change its cost.
        byte[] value = new byte[recordSize];
        new Random(8).nextBytes(value);
        AtomicLong acked = new AtomicLong();
        AtomicReference<Exception> failure = new AtomicReference<>();

        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(props)) {
            // Fetch the metadata before the clock starts.
            producer.partitionsFor(topic);
            double cpuBefore = brokerCpuSeconds(stat, clockTicks);
            long start = System.nanoTime();
            for (long i = 0; i < records && failure.get() == null; i++) {
                int partition = (int) (i % partitions);
                producer.send(new ProducerRecord<>(topic, partition, null, value),
                        (metadata, e) -> {
                            if (e != null) {
                                failure.compareAndSet(null, e);
                            } else {
                                acked.incrementAndGet();
                            }
                        });
            }
            producer.flush();
            double seconds = (System.nanoTime() - start) / 1e9;
            double cpu = brokerCpuSeconds(stat, clockTicks) - cpuBefore;
            if (failure.get() != null) {
                throw new LoadFailed("a send failed: " + failure.get());
            }
            if (acked.get() != records) {
                throw new LoadFailed("acknowledged " + acked.get() + " of " + records);
            }
            return new Phase("produce", records, records * recordSize, seconds, cpu);
        }
    }

    private static Phase consume(String bootstrap, String topic, int partitions, long records,
            int recordSize, Path stat, long clockTicks) throws Exception {
        Properties props = new Properties();
        props.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        props.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        props.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG,
                ByteArrayDeserializer.class.getName());
        props.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG,
                ByteArrayDeserializer.class.getName());

        List<TopicPartition> assigned = new ArrayList<>();
        for (int p = 0; p < partitions; p++) {
            assigned.add(new TopicPartition(topic, p));
        }
        try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(props)) {
            consumer.assign(assigned);
            consumer.seekToBeginning(assigned);
            // Resolve the start positions (ListOffsets) before the clock starts.
            for (TopicPartition tp : assigned) {
                consumer.position(tp);
            }
            double cpuBefore = brokerCpuSeconds(stat, clockTicks);
            long start = System.nanoTime();
            long count = 0;
            long bytes = 0;
            long lastProgress = System.nanoTime();
            while (count < records) {
                ConsumerRecords<byte[], byte[]> batch = consumer.poll(Duration.ofMillis(500));
                if (batch.isEmpty()) {
                    if (System.nanoTime() - lastProgress > STALL.toNanos()) {
                        throw new LoadFailed("no records for " + STALL.toSeconds() + " s after "
                                + count + " of " + records);
                    }
                    continue;
                }
                lastProgress = System.nanoTime();
                for (ConsumerRecord<byte[], byte[]> record : batch) {
                    count++;
                    bytes += record.value().length;
                }
            }
            double seconds = (System.nanoTime() - start) / 1e9;
            double cpu = brokerCpuSeconds(stat, clockTicks) - cpuBefore;
            if (count != records || bytes != records * recordSize) {
                throw new LoadFailed("consumed " + count + " records, " + bytes + " bytes;"
                        + " expected " + records + ", " + records * recordSize);
            }
            return new Phase("consume", count, bytes, seconds, cpu);
        }
    }
}
