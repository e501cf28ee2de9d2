//! Where a new partition's replicas go (pure code).
//!
//! The brokers are put in an order that alternates racks (rack a's first
//! broker, rack b's first, …, rack a's second, …). Partition `p`'s first
//! replica, its preferred leader, is the broker at `start + p` in that
//! order, so leaders go round the brokers evenly. Its followers come after
//! it at a distance that grows by one every time the partitions have gone
//! round all the brokers, so that one broker's followers are not all on
//! the same neighbour; with racks, a follower skips brokers whose rack
//! already holds a replica of the partition until every rack holds one.
//! This is the scheme Kafka's controller uses; `start` and `shift` are
//! picked per topic so that topics do not all start on the same broker.

/// A broker that may hold replicas: its id and rack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: i32,
    pub rack: Option<String>,
}

/// The replicas of each of `partitions` new partitions, `replication` each,
/// numbered from `first_partition` (for partitions added to a topic).
/// `None` when there are fewer candidates than `replication`.
pub fn place(
    candidates: &[Candidate],
    first_partition: usize,
    partitions: usize,
    replication: usize,
    start: usize,
    shift: usize,
) -> Option<Vec<Vec<i32>>> {
    let n = candidates.len();
    if replication == 0 || replication > n {
        return None;
    }
    let order = rack_alternated(candidates);
    let racks = {
        let mut racks: Vec<&Option<String>> = order.iter().map(|c| &c.rack).collect();
        racks.sort();
        racks.dedup();
        racks.len()
    };
    let mut out = Vec::with_capacity(partitions);
    for p in first_partition..first_partition + partitions {
        let round_shift = shift + p / n;
        let first = (start + p) % n;
        let mut replicas = vec![order[first].id];
        let mut used_racks = vec![&order[first].rack];
        for j in 0..replication - 1 {
            // Where the follower would go without racks.
            let at = if n > 1 {
                (first + 1 + (round_shift + j) % (n - 1)) % n
            } else {
                first
            };
            let chosen = (0..n)
                .map(|k| &order[(at + k) % n])
                .filter(|c| !replicas.contains(&c.id))
                .find(|c| used_racks.len() >= racks || !used_racks.contains(&&c.rack))
                .or_else(|| {
                    (0..n)
                        .map(|k| &order[(at + k) % n])
                        .find(|c| !replicas.contains(&c.id))
                })?;
            replicas.push(chosen.id);
            used_racks.push(&chosen.rack);
        }
        out.push(replicas);
    }
    Some(out)
}

/// The candidates in an order that takes one broker of each rack in turn
/// (racks and brokers in id order); without racks, by id.
fn rack_alternated(candidates: &[Candidate]) -> Vec<Candidate> {
    let mut by_rack: std::collections::BTreeMap<&Option<String>, Vec<&Candidate>> =
        std::collections::BTreeMap::new();
    for c in candidates {
        by_rack.entry(&c.rack).or_default().push(c);
    }
    for brokers in by_rack.values_mut() {
        brokers.sort_by_key(|c| c.id);
    }
    let mut out = Vec::with_capacity(candidates.len());
    let deepest = by_rack.values().map(Vec::len).max().unwrap_or(0);
    for i in 0..deepest {
        for brokers in by_rack.values() {
            if let Some(c) = brokers.get(i) {
                out.push((*c).clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn brokers(racks: &[Option<&str>]) -> Vec<Candidate> {
        racks
            .iter()
            .enumerate()
            .map(|(i, rack)| Candidate {
                id: i as i32 + 1,
                rack: rack.map(str::to_string),
            })
            .collect()
    }

    fn count(placed: &[Vec<i32>], leaders_only: bool) -> BTreeMap<i32, usize> {
        let mut counts = BTreeMap::new();
        for replicas in placed {
            let take = if leaders_only { 1 } else { replicas.len() };
            for id in &replicas[..take] {
                *counts.entry(*id).or_default() += 1;
            }
        }
        counts
    }

    #[test]
    fn replicas_and_leaders_spread_evenly_and_never_twice_on_a_broker() {
        // (brokers, partitions, replication factor)
        for (n, partitions, rf) in [(3, 6, 3), (3, 50, 3), (5, 10, 3), (4, 8, 2), (1, 4, 1)] {
            for start in 0..n {
                let placed = place(&brokers(&vec![None; n]), 0, partitions, rf, start, start)
                    .expect("enough brokers");
                assert_eq!(placed.len(), partitions);
                for replicas in &placed {
                    let mut distinct = replicas.clone();
                    distinct.sort_unstable();
                    distinct.dedup();
                    assert_eq!(distinct.len(), rf, "{replicas:?}");
                }
                for (leaders_only, total) in [(true, partitions), (false, partitions * rf)] {
                    let counts = count(&placed, leaders_only);
                    let (min, max) = (
                        counts.values().min().copied().unwrap_or(0),
                        counts.values().max().copied().unwrap_or(0),
                    );
                    assert_eq!(counts.values().sum::<usize>(), total);
                    assert!(
                        max - min <= 1 && (total < n || counts.len() == n),
                        "n={n} p={partitions} rf={rf} leaders_only={leaders_only}: {counts:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn each_rack_holds_a_replica_before_any_holds_two() {
        let racks = brokers(&[
            Some("a"),
            Some("a"),
            Some("b"),
            Some("b"),
            Some("c"),
            Some("c"),
        ]);
        let rack_of = |id: i32| racks[id as usize - 1].rack.clone();
        for rf in [2, 3] {
            let placed = place(&racks, 0, 12, rf, 1, 2).unwrap();
            for replicas in &placed {
                let mut seen: Vec<_> = replicas.iter().map(|id| rack_of(*id)).collect();
                seen.sort();
                seen.dedup();
                assert_eq!(seen.len(), rf, "{replicas:?}");
            }
        }
        // Two racks, three replicas: both racks, one of them twice.
        let two = brokers(&[Some("a"), Some("b"), Some("a"), Some("b")]);
        for replicas in place(&two, 0, 8, 3, 0, 0).unwrap() {
            let a = replicas.iter().filter(|id| *id % 2 == 1).count();
            assert!(a == 1 || a == 2, "{replicas:?}");
        }
    }

    #[test]
    fn a_replication_factor_above_the_brokers_is_refused() {
        assert_eq!(place(&brokers(&[None, None]), 0, 1, 3, 0, 0), None);
        assert_eq!(place(&brokers(&[None]), 0, 1, 0, 0, 0), None);
        assert_eq!(place(&[], 0, 1, 1, 0, 0), None);
    }

    #[test]
    fn added_partitions_continue_the_rotation() {
        let b = brokers(&[None, None, None]);
        let all = place(&b, 0, 6, 2, 1, 0).unwrap();
        let later = place(&b, 4, 2, 2, 1, 0).unwrap();
        assert_eq!(&all[4..], &later[..]);
    }
}
