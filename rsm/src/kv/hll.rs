//! HyperLogLog (Redis `PFADD`, `PFCOUNT`, `PFMERGE`): a string value that
//! estimates how many distinct elements were added to it.
//!
//! ```text
//!  value   "HYLL" | 12 bytes 0 | 16384 registers, one byte each
//!  element ──MurmurHash64A(seed 0xadc83b19)──► h
//!          register h & 16383, rank = 1 + trailing zeros of (h >> 14 | 1 << 50)
//!  PFADD   register = max(register, rank)    (the node hashes; the log
//!                                             carries (register, rank) pairs)
//!  PFCOUNT Ertl's estimator over the registers' histogram (what Redis uses)
//! ```
//!
//! The registers, hash and estimator are Redis' (so counts match Redis'
//! for the same elements), but the value's bytes are not: a register is a
//! whole byte here (16 KiB a key), not Redis' packed 6 bits or its sparse
//! form. A string without the header is not a HyperLogLog
//! ([`KvError::NotHyperLogLog`]).

use bytes::Bytes;

use super::command::{KvError, KvResult};
use super::value::Value;
use super::{check_key, KvStore};

/// Registers of a HyperLogLog (Redis' `HLL_REGISTERS`, precision 14).
pub const HLL_REGISTERS: usize = 1 << HLL_P;
/// Bits of the hash that pick the register.
const HLL_P: u32 = 14;
/// Largest rank a register holds: 64 − 14 hash bits, plus one.
pub const HLL_RANK_MAX: u8 = (64 - HLL_P + 1) as u8;
/// The value's header: magic, then zeros.
const HLL_HEADER_BYTES: usize = 16;
const HLL_MAGIC: &[u8; 4] = b"HYLL";
/// Bytes of a HyperLogLog value.
pub const HLL_BYTES: usize = HLL_HEADER_BYTES + HLL_REGISTERS;

/// Redis' seed for hashing elements.
const SEED: u64 = 0xadc8_3b19;

/// MurmurHash64A of `data` with `seed` (Austin Appleby's 64-bit hash for
/// 64-bit platforms, as Redis' HyperLogLog uses it).
fn murmur64a(data: &[u8], seed: u64) -> u64 {
    const M: u64 = 0xc6a4_a793_5bd1_e995;
    const R: u32 = 47;
    let mut h = seed ^ (data.len() as u64).wrapping_mul(M);
    let mut blocks = data.chunks_exact(8);
    for block in &mut blocks {
        let mut k = u64::from_le_bytes(block.try_into().expect("8 bytes"));
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h ^= k;
        h = h.wrapping_mul(M);
    }
    let tail = blocks.remainder();
    if !tail.is_empty() {
        for (i, b) in tail.iter().enumerate() {
            h ^= u64::from(*b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> R;
    h = h.wrapping_mul(M);
    h ^= h >> R;
    h
}

/// The register `element` falls in and the rank it sets there.
pub fn hll_register(element: &[u8]) -> (u16, u8) {
    let h = murmur64a(element, SEED);
    let register = (h & (HLL_REGISTERS as u64 - 1)) as u16;
    // The sentinel bit bounds the rank at 64 − 14 + 1.
    let rest = (h >> HLL_P) | (1u64 << (64 - HLL_P));
    let rank = rest.trailing_zeros() as u8 + 1;
    debug_assert!(rank <= HLL_RANK_MAX);
    (register, rank)
}

/// The registers of a HyperLogLog value; `None` if `value` is not one.
pub fn hll_registers(value: &[u8]) -> Option<&[u8]> {
    if value.len() != HLL_BYTES || &value[..4] != HLL_MAGIC {
        return None;
    }
    let registers = &value[HLL_HEADER_BYTES..];
    registers
        .iter()
        .all(|r| *r <= HLL_RANK_MAX)
        .then_some(registers)
}

/// An empty HyperLogLog value.
fn empty() -> Vec<u8> {
    let mut v = vec![0u8; HLL_BYTES];
    v[..4].copy_from_slice(HLL_MAGIC);
    v
}

/// The estimated number of distinct elements of the union of `sets` (each
/// the registers of a HyperLogLog): Ertl's improved raw estimator ("New
/// cardinality estimation algorithms for HyperLogLog sketches", 2017),
/// as Redis computes `PFCOUNT`.
pub fn hll_estimate(sets: &[&[u8]]) -> u64 {
    let m = HLL_REGISTERS as f64;
    let q = (64 - HLL_P) as usize;
    // How many registers (of the union: the largest rank) hold each rank.
    let mut histogram = [0u32; 64];
    for i in 0..HLL_REGISTERS {
        let rank = sets.iter().map(|s| s[i]).max().unwrap_or(0);
        histogram[usize::from(rank)] += 1;
    }
    let mut z = m * tau((m - f64::from(histogram[q + 1])) / m);
    for count in histogram[1..=q].iter().rev() {
        z += f64::from(*count);
        z *= 0.5;
    }
    z += m * sigma(f64::from(histogram[0]) / m);
    let alpha_inf = 0.5 / std::f64::consts::LN_2;
    (alpha_inf * m * m / z).round() as u64
}

/// σ(x) = x + Σ_{k≥1} x^(2^k) · 2^(k−1), summed until it stops changing.
fn sigma(mut x: f64) -> f64 {
    if x == 1.0 {
        return f64::INFINITY;
    }
    let mut y = 1.0;
    let mut z = x;
    loop {
        x *= x;
        let before = z;
        z += x * y;
        y += y;
        if z == before {
            return z;
        }
    }
}

/// τ(x) = (1 − x − Σ_{k≥1} (1 − x^(2^−k))² · 2^−k) / 3, summed until it
/// stops changing.
fn tau(mut x: f64) -> f64 {
    if x == 0.0 || x == 1.0 {
        return 0.0;
    }
    let mut y = 1.0;
    let mut z = 1.0 - x;
    loop {
        x = x.sqrt();
        let before = z;
        y *= 0.5;
        z -= (1.0 - x).powi(2) * y;
        if z == before {
            return z / 3.0;
        }
    }
}

impl KvStore {
    /// `PFADD`'s write (see [`KvCommand::HllAdd`](super::KvCommand::HllAdd)).
    pub(super) fn hll_add(&mut self, key: &[u8], registers: &[(u16, u8)]) -> KvResult {
        if let Some(e) = check_key(key) {
            return KvResult::Error(e);
        }
        // Decoding checks the pairs; a command built in process could skip
        // that, and an out-of-range register would index past the value.
        if registers
            .iter()
            .any(|(r, rank)| usize::from(*r) >= HLL_REGISTERS || *rank > HLL_RANK_MAX)
        {
            return KvResult::Error(KvError::Malformed);
        }
        self.map.upsert(key, |cur| {
            let current = match cur {
                None => None,
                Some(v) if v.is_typed() => return (None, KvResult::Error(KvError::WrongType)),
                Some(v) => match hll_registers(v.as_slice()) {
                    None => return (None, KvResult::Error(KvError::NotHyperLogLog)),
                    Some(r) => Some(r),
                },
            };
            // Most adds to a populated HyperLogLog raise nothing: the
            // 16 KiB value is copied only when a register goes up.
            let raises = |regs: &[u8]| {
                registers
                    .iter()
                    .any(|(r, rank)| *rank > regs[usize::from(*r)])
            };
            if current.is_some_and(|regs| !raises(regs)) {
                return (None, KvResult::Int(0));
            }
            let mut value = match cur {
                Some(v) => v.as_slice().to_vec(),
                None => empty(),
            };
            for (register, rank) in registers {
                let slot = &mut value[HLL_HEADER_BYTES + usize::from(*register)];
                *slot = (*slot).max(*rank);
            }
            (Some(Value::from(value)), KvResult::Int(1))
        })
    }

    /// `PFMERGE`'s write (see [`KvCommand::HllMerge`](super::KvCommand::HllMerge)).
    pub(super) fn hll_merge(&mut self, dst: &[u8], sources: &[Bytes]) -> KvResult {
        if let Some(e) = check_key(dst) {
            return KvResult::Error(e);
        }
        let mut merged = [0u8; HLL_REGISTERS];
        for key in sources.iter().map(|k| k.as_ref()).chain([dst]) {
            let Some(v) = self.map.get(key) else {
                continue;
            };
            if v.is_typed() {
                return KvResult::Error(KvError::WrongType);
            }
            let Some(registers) = hll_registers(v.as_slice()) else {
                return KvResult::Error(KvError::NotHyperLogLog);
            };
            for (m, r) in merged.iter_mut().zip(registers) {
                *m = (*m).max(*r);
            }
        }
        let mut value = empty();
        value[HLL_HEADER_BYTES..].copy_from_slice(&merged);
        // The destination keeps its deadline, as a string changed in place.
        self.map
            .upsert(dst, |_| (Some(Value::from(value)), KvResult::Ok))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur64a_matches_the_reference_values() {
        // Published MurmurHash64A outputs (from other implementations'
        // test suites): short, 4-byte and 9-byte inputs, several seeds.
        assert_eq!(murmur64a(b"", 0), 0);
        assert_eq!(murmur64a(b"hash me", 22), 15_828_218_858_260_124_487);
        assert_eq!(murmur64a(b"fransisco", 1), 0x083f_daf4_a6d0_d3d9);
        assert_eq!(murmur64a(b"aaaa", 0x9747_b28c), 0x41da_53fd_abaf_04c8);
    }

    #[test]
    fn ranks_stay_in_range_and_spread_over_registers() {
        let mut seen = vec![false; HLL_REGISTERS];
        for i in 0..100_000u32 {
            let (register, rank) = hll_register(&i.to_le_bytes());
            assert!((1..=HLL_RANK_MAX).contains(&rank));
            seen[usize::from(register)] = true;
        }
        let used = seen.iter().filter(|s| **s).count();
        assert!(used > HLL_REGISTERS * 99 / 100, "{used} registers used");
    }

    #[test]
    fn estimates_are_within_two_percent_from_one_to_a_million() {
        let mut registers = vec![0u8; HLL_REGISTERS];
        let mut added = 0u64;
        for target in [1u64, 10, 100, 1_000, 10_000, 100_000, 1_000_000] {
            while added < target {
                let (r, rank) = hll_register(format!("element:{added}").as_bytes());
                let slot = &mut registers[usize::from(r)];
                *slot = (*slot).max(rank);
                added += 1;
            }
            let estimate = hll_estimate(&[&registers]);
            let error = (estimate as f64 - target as f64).abs() / target as f64;
            assert!(
                error <= 0.02 || estimate.abs_diff(target) <= 1,
                "{target} elements estimated as {estimate}"
            );
        }
        assert_eq!(hll_estimate(&[&vec![0u8; HLL_REGISTERS]]), 0);
    }

    #[test]
    fn only_values_with_the_header_and_ranks_in_range_are_hyperloglogs() {
        let v = empty();
        assert!(hll_registers(&v).is_some());
        assert!(hll_registers(b"HYLL").is_none());
        let mut bad = empty();
        bad[0] = b'X';
        assert!(hll_registers(&bad).is_none());
        let mut bad = empty();
        bad[HLL_BYTES - 1] = HLL_RANK_MAX + 1;
        assert!(hll_registers(&bad).is_none());
    }
}
