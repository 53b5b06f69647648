//! A HyperLogLog for mergeable distinct counts.
//!
//! Precision 10 (1,024 one-byte registers, ~3.3% standard error; exact-ish
//! linear counting below ~2,500 distinct values). Registers are allocated on
//! the first insert so empty accumulators cost nothing. `redis/merge.lua`
//! merges the registers (register-wise max, from their hex in the partial)
//! and estimates with the same formula as [`HyperLogLog::estimate`].

pub const PRECISION: u32 = 10;
pub const REGISTERS: usize = 1 << PRECISION;

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HyperLogLog {
    registers: Option<Box<[u8]>>,
}

impl HyperLogLog {
    pub fn insert_hash(&mut self, hash: u64) {
        let index = (hash >> (64 - PRECISION)) as usize;
        let rest = hash << PRECISION;
        let rank = (rest.leading_zeros() + 1).min(64 - PRECISION + 1) as u8;
        let registers = self.registers.get_or_insert_with(|| vec![0u8; REGISTERS].into_boxed_slice());
        registers[index] = registers[index].max(rank);
    }

    pub fn merge(&mut self, other: &HyperLogLog) {
        let Some(theirs) = &other.registers else {
            return;
        };
        let ours = self.registers.get_or_insert_with(|| vec![0u8; REGISTERS].into_boxed_slice());
        for (a, b) in ours.iter_mut().zip(theirs.iter()) {
            *a = (*a).max(*b);
        }
    }

    pub fn estimate(&self) -> u64 {
        let Some(registers) = &self.registers else {
            return 0;
        };
        let m = REGISTERS as f64;
        let alpha = 0.7213 / (1.0 + 1.079 / m);
        let (mut sum, mut zeros) = (0.0f64, 0u32);
        for &r in registers.iter() {
            sum += 2f64.powi(-(r as i32));
            zeros += (r == 0) as u32;
        }
        let raw = alpha * m * m / sum;
        let estimate = if raw <= 2.5 * m && zeros > 0 { m * (m / zeros as f64).ln() } else { raw };
        estimate.round() as u64
    }

    /// The registers, or `None` when nothing was inserted.
    pub fn registers(&self) -> Option<&[u8]> {
        self.registers.as_deref()
    }

    /// A HyperLogLog holding `registers` (`REGISTERS` of them, each a rank
    /// of at most 64 - PRECISION + 1).
    pub fn from_registers(registers: Vec<u8>) -> Option<HyperLogLog> {
        let valid = registers.len() == REGISTERS && registers.iter().all(|&r| r as u32 <= 64 - PRECISION + 1);
        valid.then(|| HyperLogLog { registers: Some(registers.into_boxed_slice()) })
    }
}

/// A stable 64-bit hash (FNV-1a, then the splitmix64 finalizer for
/// avalanche): the same value hashes the same in every process and
/// version, which distinct counts merged across connectors require.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_sets_are_counted_almost_exactly() {
        let mut h = HyperLogLog::default();
        for i in 0..100u32 {
            h.insert_hash(stable_hash(&i.to_le_bytes()));
            h.insert_hash(stable_hash(&i.to_le_bytes()));
        }
        assert!((98..=102).contains(&h.estimate()), "{}", h.estimate());
    }

    #[test]
    fn large_sets_are_within_a_few_percent() {
        let mut h = HyperLogLog::default();
        for i in 0..100_000u32 {
            h.insert_hash(stable_hash(format!("user-{i}").as_bytes()));
        }
        let e = h.estimate() as f64;
        assert!((e - 100_000.0).abs() / 100_000.0 < 0.1, "{e}");
    }

    #[test]
    fn merge_is_union() {
        let (mut a, mut b, mut both) = (HyperLogLog::default(), HyperLogLog::default(), HyperLogLog::default());
        for i in 0..500u32 {
            let x = stable_hash(&i.to_le_bytes());
            if i % 2 == 0 { &mut a } else { &mut b }.insert_hash(x);
            both.insert_hash(x);
        }
        a.merge(&b);
        assert_eq!(a, both);
        let registers = a.registers().expect("inserted").to_vec();
        assert_eq!(HyperLogLog::from_registers(registers), Some(a));
        assert_eq!(HyperLogLog::from_registers(vec![0; 3]), None);
    }
}
