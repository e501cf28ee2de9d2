//! Several brokers as one cluster: node ids 1..=n, every one a controller
//! voter unless told otherwise, timeouts short enough for a test.
//! Dropping it kills them all.

use std::collections::BTreeSet;

use super::{free_port, Broker};

/// The brokers of one cluster; dropping it kills them all.
pub struct Cluster {
    pub brokers: Vec<Broker>,
}

impl Cluster {
    /// Starts `n` brokers, node ids 1..=n, all voters, with election
    /// timeouts short enough for a test, and waits until each is ready.
    pub fn start(n: usize) -> Cluster {
        Cluster::start_with(n, &[])
    }

    /// [`Cluster::start`] with `extra` settings on every broker.
    pub fn start_with(n: usize, extra: &[(&str, &str)]) -> Cluster {
        Cluster::start_voters(n, n, extra)
    }

    /// `n` brokers of which the first `voters` are controller voters and
    /// the rest brokers only (`process.roles=broker`, Raft learners).
    pub fn start_voters(n: usize, voters: usize, extra: &[(&str, &str)]) -> Cluster {
        let mut ports = BTreeSet::new();
        while ports.len() < 2 * n {
            ports.insert(free_port());
        }
        let ports: Vec<u16> = ports.into_iter().collect();
        let voter_list: Vec<String> = (0..voters)
            .map(|i| format!("{}@127.0.0.1:{}", i + 1, ports[n + i]))
            .collect();
        let mut brokers: Vec<Broker> = (0..n)
            .map(|i| {
                let settings = [
                    ("node.id", (i + 1).to_string()),
                    (
                        "listeners",
                        format!(
                            "PLAINTEXT://127.0.0.1:{},CONTROLLER://127.0.0.1:{}",
                            ports[i],
                            ports[n + i]
                        ),
                    ),
                    ("controller.quorum.voters", voter_list.join(",")),
                    ("controller.quorum.election.timeout.ms", "300".to_string()),
                    ("controller.quorum.fetch.timeout.ms", "600".to_string()),
                    (
                        "process.roles",
                        if i < voters {
                            "broker,controller"
                        } else {
                            "broker"
                        }
                        .to_string(),
                    ),
                ];
                let settings: Vec<(String, String)> = settings
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .chain(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())))
                    .collect();
                Broker::spawn_with(ports[i], &settings)
            })
            .collect();
        for broker in &mut brokers {
            broker.wait_ready();
        }
        Cluster { brokers }
    }

    pub fn broker(&self, node: i32) -> &Broker {
        &self.brokers[node as usize - 1]
    }
}

impl Cluster {
    /// `host:port,…` of every broker.
    pub fn bootstrap(&self) -> String {
        self.brokers
            .iter()
            .map(|b| b.addr())
            .collect::<Vec<_>>()
            .join(",")
    }
}
