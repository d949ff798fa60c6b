//! Which partitions an instance owns: rendezvous (highest random weight) hashing over the live
//! members. Every instance computes the same answer from the same member list, each partition
//! has one owner, the partitions spread evenly, and a member joining or leaving moves only the
//! partitions it takes or gives up.

use std::hash::Hasher;

/// The owner of `partition` among `members` (`None` without members).
pub fn owner(members: &[String], partition: u32) -> Option<&str> {
    members
        .iter()
        .max_by_key(|m| (weight(m, partition), m.as_str()))
        .map(String::as_str)
}

/// The partitions of `0..partitions` that `me` owns among `members`.
pub fn owned_by(members: &[String], partitions: u32, me: &str) -> Vec<u32> {
    (0..partitions)
        .filter(|p| owner(members, *p) == Some(me))
        .collect()
}

fn weight(member: &str, partition: u32) -> u64 {
    let mut h = fnv::FnvHasher::default();
    h.write(member.as_bytes());
    h.write(&partition.to_le_bytes());
    // FNV's low bits mix poorly: finish with a 64-bit avalanche (splitmix64).
    let mut z = h.finish().wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("engine-{i}")).collect()
    }

    #[test]
    fn every_partition_has_exactly_one_owner_and_the_spread_is_even() {
        let m = names(3);
        let mut counts = [0usize; 3];
        for p in 0..32 {
            let owners: Vec<_> = m
                .iter()
                .filter(|x| owned_by(&m, 32, x).contains(&p))
                .collect();
            assert_eq!(owners.len(), 1, "partition {p}");
            counts[m.iter().position(|x| x == owners[0]).unwrap()] += 1;
        }
        assert!(counts.iter().all(|c| (6..=16).contains(c)), "{counts:?}");
    }

    #[test]
    fn a_member_leaving_moves_only_its_own_partitions() {
        let before = names(3);
        let after: Vec<String> = before[..2].to_vec();
        for p in 0..64 {
            let was = owner(&before, p).unwrap();
            let now = owner(&after, p).unwrap();
            if was != "engine-2" {
                assert_eq!(was, now, "partition {p} moved though its owner stayed");
            }
        }
        assert!(owned_by(&[], 32, "x").is_empty());
    }
}
