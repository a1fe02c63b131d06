//! Hash maps keyed by numbers: inode numbers, message ids.
//!
//! std's `HashMap` hashes with SipHash, which resists keys chosen to collide; that is
//! what a map keyed by names from outside needs, and it costs tens of nanoseconds a
//! key. Inode numbers are ours (handed out in order), and message ids are the store's
//! (Discord assigns them; records that name them are sealed). The maps keyed by them
//! sit on the way of every listed name (a warm `ls -lR` of 100,000 files asks each of
//! them several times per name), so they use [`IdHasher`]: one multiply per number
//! and MurmurHash3's finalizer at the end (FxHash's mixing, then an avalanche), which spreads
//! numbers handed out in order, and snowflakes that differ only in their high bits,
//! over the table as well as any.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// A hash map keyed by numbers (or tuples of them), hashed with [`IdHasher`].
pub type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// A hash set of numbers, hashed with [`IdHasher`].
pub type IdSet<K> = HashSet<K, BuildHasherDefault<IdHasher>>;

/// Multiplicative hashing of integers: see the module docs. Not for keys an attacker
/// may choose.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

/// An odd constant with well-spread bits (FxHash's, for 64 bits).
const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        // A product's low bits depend only on the low bits of what was multiplied, and
        // a snowflake's are often all zero (its increment and worker): the finalizer of
        // MurmurHash3 makes every bit depend on every bit.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(SEED);
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(n.into());
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_in_order_and_snowflakes_spread_over_the_buckets() {
        // 4,096 numbers in a row into 1,024 buckets by the low bits (as hashbrown
        // picks them): as a random spread would (about 4 a bucket, few empty).
        let mut buckets = vec![0u32; 1024];
        for n in 1_000_000u64..1_004_096 {
            let mut hasher = IdHasher::default();
            hasher.write_u64(n);
            buckets[(hasher.finish() & 1023) as usize] += 1;
        }
        assert!(buckets.iter().all(|&b| b <= 16), "{buckets:?}");
        assert!(
            buckets.iter().filter(|&&b| b == 0).count() < 60,
            "{buckets:?}"
        );
        // Snowflakes a millisecond apart: their low 22 bits are zero.
        let mut buckets = vec![0u32; 1024];
        for ms in 0u64..4096 {
            let mut hasher = IdHasher::default();
            hasher.write_u64((1_700_000_000_000 + ms) << 22);
            buckets[(hasher.finish() & 1023) as usize] += 1;
        }
        assert!(buckets.iter().all(|&b| b <= 16), "{buckets:?}");
        assert!(
            buckets.iter().filter(|&&b| b == 0).count() < 60,
            "{buckets:?}"
        );
        let mut map: IdMap<(u64, u64), u32> = IdMap::default();
        map.insert((1, 2), 3);
        assert_eq!(map.get(&(1, 2)), Some(&3));
        assert_eq!(map.get(&(2, 1)), None);
    }
}
