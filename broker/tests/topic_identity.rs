//! Topic identity on disk (KIP-516): every partition directory names its
//! topic's id in `partition.metadata`, and a directory that names another
//! id is set aside at start instead of being served as the topic's data.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{consume, numbered, produce, values, Broker};

const FILE: &str = "partition.metadata";

/// The `topic_id` line's value in `dir`'s partition.metadata, after
/// checking the file is Kafka's two lines.
fn topic_id_in(dir: &Path) -> String {
    let text = fs::read_to_string(dir.join(FILE))
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.join(FILE).display()));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text:?}");
    assert_eq!(lines[0], "version: 0", "{text:?}");
    let id = lines[1]
        .strip_prefix("topic_id: ")
        .unwrap_or_else(|| panic!("no topic_id line in {text:?}"));
    assert_eq!(id.len(), 22, "not a Kafka-printed UUID: {id:?}");
    id.to_string()
}

/// Directories in `data` whose names start with `prefix`.
fn dirs_starting_with(data: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(data)
        .expect("list the data directory")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .collect();
    out.sort();
    out
}

fn bytes_of_segments(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .expect("list a partition directory")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .map(|p| fs::metadata(p).expect("segment metadata").len())
        .sum()
}

#[test]
fn a_partition_directory_of_another_topic_id_is_set_aside_not_served() {
    let mut broker = Broker::start();
    let (old, old_values) = numbered("old-", 5);
    produce(&broker, "reborn", &[], &old);
    assert_eq!(values(&consume(&broker, "reborn", &[])), old_values);
    let dir = broker.data_dir().join("reborn-0");
    let id = topic_id_in(&dir);
    broker.stop();

    // As if the topic had been deleted, the broker had crashed before the
    // directory went, and a topic of the same name had been created: the
    // directory on disk names an id the metadata log does not.
    let foreign = if id == "AAAAAAAAAAAAAAAAAAAAAA" {
        "AQEBAQEBAQEBAQEBAQEBAQ"
    } else {
        "AAAAAAAAAAAAAAAAAAAAAA"
    };
    fs::write(dir.join(FILE), format!("version: 0\ntopic_id: {foreign}\n")).unwrap();
    broker.start_again();

    let served = consume(&broker, "reborn", &[]);
    assert!(
        served.is_empty(),
        "the other topic's data was served: {:?}",
        values(&served)
    );
    let strays = dirs_starting_with(&broker.data_dir(), "reborn-0.");
    assert_eq!(strays.len(), 1, "no stray directory: {strays:?}");
    assert!(
        strays[0].to_string_lossy().ends_with(".stray"),
        "{strays:?}"
    );
    assert_eq!(topic_id_in(&strays[0]), foreign);
    assert!(
        bytes_of_segments(&strays[0]) > 0,
        "the set-aside data was not kept"
    );
    assert_eq!(topic_id_in(&dir), id, "the fresh directory's topic id");
    let stderr = broker.stderr();
    assert!(
        stderr.contains("set its directory aside") && stderr.contains(foreign),
        "no log line names the stray directory and its id"
    );

    // The topic works on its fresh directory, from offset 0.
    let (new, new_values) = numbered("new-", 3);
    produce(&broker, "reborn", &[], &new);
    let msgs = consume(&broker, "reborn", &[]);
    assert_eq!(values(&msgs), new_values);
    assert_eq!(msgs[0].offset, 0);
}

#[test]
fn a_partition_directory_without_a_topic_id_gets_one_and_keeps_its_data() {
    let mut broker = Broker::start();
    let (input, expected) = numbered("kept-", 5);
    produce(&broker, "legacy", &[], &input);
    let data = broker.data_dir();
    let dir = data.join("legacy-0");
    let id = topic_id_in(&dir);
    broker.stop();

    // A directory made by a Sluice that wrote no partition.metadata.
    fs::remove_file(dir.join(FILE)).unwrap();
    broker.start_again();

    assert_eq!(values(&consume(&broker, "legacy", &[])), expected);
    assert_eq!(topic_id_in(&dir), id);
    assert!(dirs_starting_with(&data, "legacy-0.").is_empty());
    // Every partition directory, the internal topic's too, names its topic.
    for entry in fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() && !name.starts_with('.') {
            topic_id_in(&path);
        }
    }
}

#[test]
fn a_new_topic_does_not_adopt_a_directory_of_another_topic_id_found_while_running() {
    let broker = Broker::start();
    let (input, _) = numbered("donor-", 5);
    produce(&broker, "donor", &[], &input);
    let data = broker.data_dir();

    // A directory for a topic that does not exist yet, holding another
    // topic's batches and id (left by a deletion whose removal failed, or
    // copied in by hand), found when the topic is created.
    let planted = data.join("newcomer-0");
    fs::create_dir(&planted).unwrap();
    for entry in fs::read_dir(data.join("donor-0")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|x| x == "log") {
            fs::copy(&path, planted.join(path.file_name().unwrap())).unwrap();
        }
    }
    let donor_id = topic_id_in(&data.join("donor-0"));
    fs::write(
        planted.join(FILE),
        format!("version: 0\ntopic_id: {donor_id}\n"),
    )
    .unwrap();

    // Metadata auto-creates the topic; the follower reconciles the image.
    let (input, expected) = numbered("own-", 2);
    produce(&broker, "newcomer", &[], &input);
    let msgs = consume(&broker, "newcomer", &[]);
    assert_eq!(values(&msgs), expected, "the topic served the planted data");
    assert_eq!(msgs[0].offset, 0);
    let strays = dirs_starting_with(&data, "newcomer-0.");
    assert_eq!(strays.len(), 1, "no stray directory: {strays:?}");
    assert_eq!(topic_id_in(&strays[0]), donor_id);
    assert_ne!(topic_id_in(&planted), donor_id);
}
