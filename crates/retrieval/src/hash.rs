//! The two small non-cryptographic hashes sleuth uses wherever it needs a reproducible choice
//! from text or a seed: FNV-1a over bytes and SplitMix64's finaliser. One copy here, so the
//! cache keys, the hashed TF-IDF features, the question split, the per-phase seeds and the
//! scripted cold start's phrase choices all compute the same functions (and a change to one of
//! them shows up as the changed output it is: the round-5 data split depends on them).

/// 2^64 / φ, SplitMix64's increment ("golden gamma").
pub const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// 64-bit FNV-1a of `bytes` (Fowler, Noll, Vo; offset basis 0xcbf29ce484222325, prime
/// 0x100000001b3).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// SplitMix64's output function (Steele, Lea and Flood 2014, "Fast splittable pseudorandom
/// number generators"): a bijection of `z` whose output bits each depend on every input bit.
/// SplitMix64's n-th output is `splitmix64_mix(seed + n·GOLDEN_GAMMA)`.
pub fn splitmix64_mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_values() {
        // FNV-1a test vectors (the FNV reference page): "" is the offset basis, "a" and "foobar".
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
        // SplitMix64 seeded with 0: its first output.
        assert_eq!(splitmix64_mix(GOLDEN_GAMMA), 0xe220_a839_7b1d_cdaf);
    }
}
