//! Weights → the ranges of a `numgen random mod N vmap` that give each choice its share.

/// An inclusive range of `numgen` values.
pub type Range = (u32, u32);

/// Splits `0..modulus` into one contiguous inclusive range per entry, sized by weight.
/// Weights are divided by their greatest common divisor first (3:3 becomes 1:1), so
/// the map stays as small as the shares allow. Entries with weight 0 get no range.
///
/// Returns the modulus and, per entry with a positive weight, its range, in input order:
/// the ranges cover `0..modulus` exactly, without overlap or gap.
pub fn split<T: Clone>(entries: &[(T, u32)]) -> (u32, Vec<(T, Range)>) {
    let divisor = entries
        .iter()
        .map(|(_, w)| *w)
        .filter(|w| *w > 0)
        .fold(0, gcd);
    if divisor == 0 {
        return (0, Vec::new());
    }
    let mut next = 0;
    let ranges = entries
        .iter()
        .filter(|(_, w)| *w > 0)
        .map(|(t, w)| {
            let size = w / divisor;
            let range = (next, next + size - 1);
            next += size;
            (t.clone(), range)
        })
        .collect();
    (next, ranges)
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Each entry's share in percent, in input order.
pub fn shares_pct<T>(entries: &[(T, u32)]) -> Vec<f64> {
    let total: u32 = entries.iter().map(|(_, w)| *w).sum();
    entries
        .iter()
        .map(|(_, w)| {
            if total == 0 {
                0.0
            } else {
                f64::from(*w) * 100.0 / f64::from(total)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_to_one() {
        let (m, r) = split(&[("a", 3), ("b", 1)]);
        assert_eq!(m, 4);
        assert_eq!(r, vec![("a", (0, 2)), ("b", (3, 3))]);
    }

    #[test]
    fn equal_weights_reduce() {
        let (m, r) = split(&[("a", 256), ("b", 256)]);
        assert_eq!(m, 2);
        assert_eq!(r, vec![("a", (0, 0)), ("b", (1, 1))]);
    }

    /// Exact shares, no overlap, no gap, for 1 to 64 entries with weights 1 to 256.
    #[test]
    fn ranges_tile_the_modulus_with_exact_shares() {
        // A small deterministic generator: the property must hold for every input.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for n in 1..=64usize {
            for _ in 0..20 {
                let weights: Vec<(usize, u32)> =
                    (0..n).map(|i| (i, (next() % 256) as u32 + 1)).collect();
                let (modulus, ranges) = split(&weights);
                assert_eq!(ranges.len(), n);
                let total: u64 = weights.iter().map(|(_, w)| u64::from(*w)).sum();
                let mut expect_next = 0;
                for ((i, (first, last)), (_, w)) in ranges.iter().zip(&weights) {
                    assert_eq!(*first, expect_next, "gap or overlap before entry {i}");
                    assert!(last >= first);
                    let size = u64::from(last - first + 1);
                    // size / modulus == w / total, exactly.
                    assert_eq!(size * total, u64::from(*w) * u64::from(modulus));
                    expect_next = last + 1;
                }
                assert_eq!(expect_next, modulus);
            }
        }
    }
}
