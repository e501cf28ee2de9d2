//! A real crash: a child process appending with `flush.messages=1` is
//! SIGKILLed at varying moments; after each kill the log is reopened and
//! every append the child reported as flushed must be there, intact.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use compio::driver::DriverType;
use sluice_engine::io::Fs;
use sluice_engine::log::{AppendMode, Durability, Log};
use sluice_engine::{Epoch, LogConfig, Offset};

const CHILD_ENV: &str = "SLUICE_KILL_TEST_DIR";
const DRIVER_ENV: &str = "SLUICE_KILL_TEST_DRIVER";

fn config() -> LogConfig {
    LogConfig {
        flush_messages: Some(1),
        segment_bytes: 64 * 1024,
        ..LogConfig::default()
    }
}

/// Kills the child when the test ends, however it ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // Already dead is fine; the wait reaps it either way.
        if self.0.kill().is_ok() {
            drop(self.0.wait());
        }
    }
}

/// The child: append forever, printing each flushed append.
#[test]
#[ignore = "not a test on its own: the child process of sigkilled_appender_loses_no_flushed_append"]
fn child_appender() {
    let dir = PathBuf::from(std::env::var_os(CHILD_ENV).expect("run by the parent test"));
    let driver = match std::env::var(DRIVER_ENV).as_deref() {
        Ok("io_uring") => DriverType::IoUring,
        _ => DriverType::Poll,
    };
    let rt = common::runtime(driver).expect("driver");
    rt.block_on(async {
        let (mut log, _) = Log::open(Fs::Os, dir, config(), 0).await.unwrap();
        for i in 0u64.. {
            let b = common::batch(1 + (i % 4) as usize, 50 + (i % 300) as usize, i as i64);
            let info = log
                .append(
                    b,
                    AppendMode::Leader {
                        epoch: Epoch(0),
                        keep: true,
                    },
                    0,
                )
                .await
                .unwrap();
            assert_eq!(info.durability, Durability::Flushed);
            let stored = log.read(info.base_offset, 1, None, true).await.unwrap();
            let header = sluice_engine::batch::validate(&stored.records, usize::MAX).unwrap();
            println!("flushed {} {}", info.base_offset.0, header.crc);
        }
    });
}

fn run_child(dir: &Path, driver: &str, kill_after: usize) -> Vec<(i64, u32)> {
    let exe = std::env::current_exe().unwrap();
    let child = Command::new(exe)
        .args([
            "--exact",
            "child_appender",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir)
        .env(DRIVER_ENV, driver)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let stdout = child.0.stdout.take().unwrap();
    let mut reported = Vec::new();
    let mut lines = BufReader::new(stdout).lines();
    while reported.len() < kill_after {
        let Some(line) = lines.next() else { break };
        if let Some(rest) = line.unwrap().strip_prefix("flushed ") {
            let mut fields = rest.split(' ');
            let offset = fields.next().unwrap().parse().unwrap();
            let crc = fields.next().unwrap().parse().unwrap();
            reported.push((offset, crc));
        }
    }
    child.0.kill().unwrap();
    // Whatever the child printed before it died was flushed before it was
    // printed; collect those lines too.
    for line in lines {
        if let Some(rest) = line.unwrap().strip_prefix("flushed ") {
            let mut fields = rest.split(' ');
            if let (Some(o), Some(c)) = (fields.next(), fields.next()) {
                if let (Ok(o), Ok(c)) = (o.parse(), c.parse()) {
                    reported.push((o, c));
                }
            }
        }
    }
    drop(child);
    reported
}

#[test]
fn sigkilled_appender_loses_no_flushed_append() {
    let mut drivers = vec!["poll"];
    if common::runtime(DriverType::IoUring).is_some() {
        drivers.push("io_uring");
    }
    for driver in drivers {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("killed-0");
        let mut all_reported: Vec<(i64, u32)> = Vec::new();
        for kill_after in [1usize, 40, 3, 250, 17] {
            let reported = run_child(&dir, driver, kill_after);
            assert!(!reported.is_empty(), "the child appended nothing");
            // Each run appends after what the previous ones left, so every
            // report from every run must still hold.
            all_reported.extend(reported);
            let rt = common::runtime(DriverType::Poll).unwrap();
            rt.block_on(async {
                let (log, report) = Log::open(Fs::Os, dir.clone(), config(), 0).await.unwrap();
                for &(offset, crc) in &all_reported {
                    let r = log.read(Offset(offset), 1, None, true).await.unwrap();
                    let header = sluice_engine::batch::validate(&r.records, usize::MAX)
                        .unwrap_or_else(|e| panic!("{driver}: batch at {offset}: {e}; {report:?}"));
                    assert_eq!(header.base_offset, offset, "{driver}");
                    assert_eq!(header.crc, crc, "{driver}: batch at {offset} changed");
                }
            });
        }
    }
}
