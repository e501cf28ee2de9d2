import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.time.Duration;
import java.util.List;
import java.util.Properties;

import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecords;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.consumer.LogTruncationException;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.StringDeserializer;

/**
 * Reads partition 0 of a topic up to a number of records, says so, and waits
 * for a line on stdin: meanwhile the test deposes the leader by an unclean
 * election whose new leader never had the last of those records. Then it
 * polls on. With auto.offset.reset=none, the client must find (KIP-320:
 * OffsetForLeaderEpoch with the epoch of the last record it read) that the
 * new leader's log ends below its position and throw LogTruncationException.
 *
 * Usage: TruncationCheck BOOTSTRAP TOPIC RECORDS
 */
public class TruncationCheck {
    public static void main(String[] args) throws Exception {
        String bootstrap = args[0];
        String topic = args[1];
        int expect = Integer.parseInt(args[2]);
        Properties props = new Properties();
        props.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        props.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        props.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "none");
        props.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        props.put(ConsumerConfig.METADATA_MAX_AGE_CONFIG, "1000");
        TopicPartition tp = new TopicPartition(topic, 0);
        try (KafkaConsumer<String, String> consumer = new KafkaConsumer<>(props)) {
            consumer.assign(List.of(tp));
            consumer.seekToBeginning(List.of(tp));
            int read = 0;
            long deadline = System.currentTimeMillis() + 60_000;
            while (read < expect && System.currentTimeMillis() < deadline) {
                read += consumer.poll(Duration.ofMillis(200)).count();
            }
            System.out.println("read " + read + " records up to offset " + consumer.position(tp));
            System.out.flush();
            if (read < expect) {
                System.exit(1);
            }
            new BufferedReader(new InputStreamReader(System.in)).readLine();
            deadline = System.currentTimeMillis() + 60_000;
            while (System.currentTimeMillis() < deadline) {
                try {
                    ConsumerRecords<String, String> more = consumer.poll(Duration.ofMillis(200));
                    if (!more.isEmpty()) {
                        System.out.println("read " + more.count() + " more records");
                    }
                } catch (LogTruncationException e) {
                    System.out.println("truncation detected: " + e.divergentOffsets());
                    System.out.flush();
                    System.exit(0);
                }
            }
            System.out.println("no truncation detected; position " + consumer.position(tp));
            System.exit(1);
        }
    }
}
