//! Moving a CRC-32 past bytes that follow it: the arithmetic that lets a
//! message record's checksum be finished under the log's lock with one
//! multiplication, whatever the record's size.
//!
//! CRC-32 is linear over GF(2): the checksum of `a` followed by `b` is the
//! checksum of `a` multiplied by x^(8·len(b)) modulo the polynomial, xor the
//! checksum of `b`. `crc32fast`'s `Hasher::combine` computes that power on
//! every call (one multiplication per set bit of the length); here the
//! power is an operator computed once per record, before the lock, and
//! applied under it.

/// The CRC-32 polynomial, bit-reflected (as the checksum's state is).
const POLY: u32 = 0xEDB8_8320;

/// Multiplies two bit-reflected polynomials modulo [`POLY`].
const fn multiply(a: u32, mut b: u32) -> u32 {
    let mut product = 0u32;
    let mut bit = 0;
    while bit < 32 {
        // Branch-free: take b when bit `bit` of a (from the top) is set.
        product ^= b & ((a >> (31 - bit)) & 1).wrapping_neg();
        b = (b >> 1) ^ ((b & 1).wrapping_neg() & POLY);
        bit += 1;
    }
    product
}

/// x^(8·2^k) modulo the polynomial for k in 0..64: one entry per bit of a
/// byte count.
const ZERO_BYTES_POWERS: [u32; 64] = {
    let mut powers = [0u32; 64];
    powers[0] = 0x0080_0000; // x^8, reflected
    let mut k = 1;
    while k < 64 {
        powers[k] = multiply(powers[k - 1], powers[k - 1]);
        k += 1;
    }
    powers
};

/// What moving a checksum past `len` bytes multiplies it by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PastBytes(u32);

impl PastBytes {
    pub const fn new(len: u64) -> PastBytes {
        let mut power = 0x8000_0000; // x^0, reflected
        let mut k = 0;
        while k < 64 {
            if (len >> k) & 1 != 0 {
                power = multiply(power, ZERO_BYTES_POWERS[k]);
            }
            k += 1;
        }
        PastBytes(power)
    }

    /// [`PastBytes::new`], remembered for the last length this thread
    /// asked for: a publisher's messages mostly have one size, and the
    /// power costs one bit-serial multiplication per set bit of the length
    /// (about 5% of S1's user CPU before it was remembered).
    pub fn for_len(len: u64) -> PastBytes {
        thread_local! {
            static LAST: std::cell::Cell<(u64, PastBytes)> = const { std::cell::Cell::new((0, PastBytes(0x8000_0000))) };
        }
        LAST.with(|last| {
            let (last_len, power) = last.get();
            if last_len == len {
                return power;
            }
            let power = PastBytes::new(len);
            last.set((len, power));
            power
        })
    }

    /// The checksum of `first` followed by the bytes this was made for,
    /// given `first`'s checksum and theirs.
    pub fn join(self, first_crc: u32, then_crc: u32) -> u32 {
        multiply(first_crc, self.0) ^ then_crc
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn joining_two_checksums_is_the_checksum_of_both(
            first in proptest::collection::vec(any::<u8>(), 0..64),
            then in proptest::collection::vec(any::<u8>(), 0..5_000),
        ) {
            let whole = [&first[..], &then[..]].concat();
            let joined = PastBytes::new(then.len() as u64).join(crc32fast::hash(&first), crc32fast::hash(&then));
            prop_assert_eq!(joined, crc32fast::hash(&whole));
        }
    }

    #[test]
    fn the_remembered_power_is_the_power_of_its_length() {
        for len in [1_100, 1_100, 7, 0, 1_100, 65_536, 0] {
            assert_eq!(PastBytes::for_len(len), PastBytes::new(len), "length {len}");
        }
    }

    #[test]
    fn past_no_bytes_the_checksum_is_unchanged() {
        let crc = crc32fast::hash(b"warren");
        assert_eq!(PastBytes::new(0).join(crc, crc32fast::hash(b"")), crc);
    }
}
