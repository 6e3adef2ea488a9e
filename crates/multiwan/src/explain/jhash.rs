//! The kernel's `jhash()` (include/linux/jhash.h, Bob Jenkins' lookup3), as nft's
//! `jhash … mod N seed S` computes it (net/netfilter/nft_hash.c), so `explain` can tell
//! which bucket, hence which link, a sticky policy gives a source.

const JHASH_INITVAL: u32 = 0xdead_beef;

fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(4);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(6);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(8);
    *b = b.wrapping_add(*a);
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(16);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(19);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(4);
    *b = b.wrapping_add(*a);
}

fn final_mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(14));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(11));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(25));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(16));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(4));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(14));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(24));
}

/// Little-endian word of up to 4 bytes (the kernel reads CPU-order words; the tail
/// bytes are added at the same places, which on little-endian machines is the same).
fn word(bytes: &[u8]) -> u32 {
    bytes
        .iter()
        .enumerate()
        .fold(0, |w, (i, b)| w | u32::from(*b) << (8 * i))
}

/// `jhash(key, key.len(), initval)`.
pub fn jhash(key: &[u8], initval: u32) -> u32 {
    let len = key.len() as u32;
    let init = JHASH_INITVAL.wrapping_add(len).wrapping_add(initval);
    let (mut a, mut b, mut c) = (init, init, init);
    let mut k = key;
    while k.len() > 12 {
        a = a.wrapping_add(word(&k[0..4]));
        b = b.wrapping_add(word(&k[4..8]));
        c = c.wrapping_add(word(&k[8..12]));
        mix(&mut a, &mut b, &mut c);
        k = &k[12..];
    }
    if k.is_empty() {
        return c;
    }
    let part = |from: usize| word(&k[from.min(k.len())..(from + 4).min(k.len())]);
    a = a.wrapping_add(part(0));
    b = b.wrapping_add(part(4));
    c = c.wrapping_add(part(8));
    final_mix(&mut a, &mut b, &mut c);
    c
}

/// nft's bucket: `reciprocal_scale(jhash(key, len, seed), modulus)`.
pub fn bucket(key: &[u8], seed: u32, modulus: u32) -> u32 {
    ((u64::from(jhash(key, seed)) * u64::from(modulus)) >> 32) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values of the kernel's jhash for known inputs (lookup3's `hashlittle`, which
    /// the kernel's jhash equals on little-endian machines; lookup3.c's self-test
    /// prints these).
    #[test]
    fn matches_lookup3_reference_values() {
        assert_eq!(jhash(b"", 0), 0xdead_beef);
        assert_eq!(jhash(b"", 0xdead_beef), 0xbd5b_7dde);
        assert_eq!(jhash(b"Four score and seven years ago", 0), 0x1777_0551);
        assert_eq!(jhash(b"Four score and seven years ago", 1), 0xcd62_8161);
    }

    #[test]
    fn buckets_stay_below_the_modulus_and_spread() {
        let mut seen = [0u32; 4];
        for i in 0..4000u32 {
            let b = bucket(&i.to_be_bytes(), 0x1234_5678, 4);
            seen[b as usize] += 1;
        }
        assert!(seen.iter().all(|n| (800..1200).contains(n)), "{seen:?}");
    }
}
