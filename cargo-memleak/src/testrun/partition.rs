//! `--partition count:K/N` and `hash:K/N`: one shard of a run, for CI matrices.
//!
//! Invariants: every test that would run goes to exactly one of the N shards, whatever K;
//! `count` deals the tests that would run, in list order across the whole run, round-robin
//! (the i-th, from 0, to shard i % N + 1), so shards differ by at most one test; `hash` puts a
//! test where a stable hash of its binary id and name says (64-bit FNV-1a, the same on every
//! machine and in every version), so adding a test never moves another. Ignored tests are not
//! dealt.

use std::str::FromStr;

/// Which shard of the run this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Partition {
    pub kind: Kind,
    /// 1-based.
    pub shard: u64,
    pub total: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Count,
    Hash,
}

impl Partition {
    /// Whether the test at `index` (among the tests that would run, from 0) is in this shard.
    pub fn contains(&self, index: usize, binary_id: &str, test: &str) -> bool {
        let bucket = match self.kind {
            Kind::Count => index as u64 % self.total,
            Kind::Hash => stable_hash(binary_id, test) % self.total,
        };
        bucket == self.shard - 1
    }
}

/// 64-bit FNV-1a over the binary id, a NUL and the test's name.
fn stable_hash(binary_id: &str, test: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in binary_id.bytes().chain([0]).chain(test.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

impl FromStr for Partition {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let usage = || format!("--partition {text}: write count:K/N or hash:K/N, 1 <= K <= N");
        let (kind, shards) = text.split_once(':').ok_or_else(usage)?;
        let kind = match kind {
            "count" => Kind::Count,
            "hash" => Kind::Hash,
            _ => return Err(usage()),
        };
        let (shard, total) = shards.split_once('/').ok_or_else(usage)?;
        let (shard, total): (u64, u64) = (
            shard.parse().map_err(|_| usage())?,
            total.parse().map_err(|_| usage())?,
        );
        if !(1..=total).contains(&shard) {
            return Err(usage());
        }
        Ok(Partition { kind, shard, total })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_test_is_in_exactly_one_shard() {
        let tests: Vec<(String, String)> = (0..50)
            .map(|n| (format!("pkg::t{}", n % 3), format!("test_{n}")))
            .collect();
        for kind in ["count", "hash"] {
            let shards: Vec<Partition> = (1..=3)
                .map(|k| format!("{kind}:{k}/3").parse().unwrap())
                .collect();
            for (index, (binary, test)) in tests.iter().enumerate() {
                let homes = shards
                    .iter()
                    .filter(|shard| shard.contains(index, binary, test))
                    .count();
                assert_eq!(homes, 1, "{kind} {binary} {test}");
            }
        }
        let second: Partition = "count:2/3".parse().unwrap();
        assert!(second.contains(1, "a", "x") && second.contains(4, "b", "y"));
        assert!(!second.contains(2, "a", "x"));
        assert_eq!(
            stable_hash("alpha::gate", "leaks_a_vec"),
            0xbc75_4db6_f1b5_a8c1
        );
        for bad in [
            "count:0/2",
            "count:3/2",
            "hash:1",
            "slice:1/2",
            "count:a/2",
            "hash:1/0",
        ] {
            assert!(bad.parse::<Partition>().is_err(), "{bad}");
        }
    }
}
