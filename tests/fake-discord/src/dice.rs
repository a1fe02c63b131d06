//! A small lock-free random source for failure injection and forced 429s. Quality matters
//! little here; speed and no extra dependency do.

use std::sync::atomic::{AtomicU64, Ordering};

/// SplitMix64 over an atomic counter, seeded from the OS.
#[derive(Debug)]
pub struct Dice {
    state: AtomicU64,
}

impl Dice {
    /// Dice seeded from the OS random source.
    pub fn new() -> Dice {
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed).expect("the OS random source works");
        Dice {
            state: AtomicU64::new(u64::from_le_bytes(seed)),
        }
    }

    /// A uniformly distributed `u64`.
    pub fn next_u64(&self) -> u64 {
        let mut z = self
            .state
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform float in `[0, 1)`.
    pub fn unit(&self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`.
    pub fn chance(&self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }

    /// A uniform float in `[low, high)`.
    pub fn between(&self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.unit()
    }

    /// One of `items`, uniformly.
    pub fn pick<T: Copy>(&self, items: &[T]) -> T {
        items[(self.next_u64() % items.len() as u64) as usize]
    }
}

impl Default for Dice {
    fn default() -> Self {
        Dice::new()
    }
}
