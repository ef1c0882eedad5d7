//! `BIN N` makes N allocate+free pairs of a 64-byte box through the binary's global allocator
//! and prints the ns per pair.

use std::{hint::black_box, time::Instant};

pub fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let start = Instant::now();
    for _ in 0..n {
        drop(black_box(Box::new([0u8; 64])));
    }
    if n > 0 {
        println!("{:.1}", start.elapsed().as_nanos() as f64 / n as f64);
    }
}
