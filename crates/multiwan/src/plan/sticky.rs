//! Sticky sharing: which link each hash bucket of sources goes to.
//!
//! nft hashes a connection's source (or source and destination) with `jhash … mod
//! BUCKETS seed S` and looks the bucket up in a verdict map. Buckets are given to links
//! by weighted rendezvous hashing: each bucket goes to the candidate link with the
//! highest score `-weight / ln(u)`, where `u` is a pseudo-random number drawn from
//! (seed, bucket, link id). Two properties follow, and are what an operator expects of
//! "sticky":
//! - when a link leaves service, only its buckets move (each to whichever remaining
//!   link scores next), and when it comes back, only buckets it wins move to it;
//! - across many buckets the split follows the weights.
//!
//! The seed is kept in the state directory, so the assignment survives restarts.

/// Number of hash buckets: enough for a smooth split, small enough for a compact map.
pub const BUCKETS: u32 = 1024;

/// The link (index into `candidates`) of every bucket, for candidates given as
/// `(link id, weight)`. Empty candidates give an empty assignment.
pub fn assign(seed: u32, candidates: &[(u8, u32)]) -> Vec<usize> {
    if candidates.is_empty() {
        return Vec::new();
    }
    (0..BUCKETS)
        .map(|bucket| {
            let mut best = 0;
            let mut best_score = f64::NEG_INFINITY;
            for (i, (id, weight)) in candidates.iter().enumerate() {
                let u = unit(mix(u64::from(seed) << 32
                    | u64::from(bucket) << 8
                    | u64::from(*id)));
                let score = -f64::from(*weight) / u.ln();
                if score > best_score {
                    best_score = score;
                    best = i;
                }
            }
            best
        })
        .collect()
}

/// Contiguous runs of buckets with the same link: `((first, last), candidate index)`.
pub fn ranges(assignment: &[usize]) -> Vec<((u32, u32), usize)> {
    let mut out: Vec<((u32, u32), usize)> = Vec::new();
    for (bucket, &link) in assignment.iter().enumerate() {
        let bucket = bucket as u32;
        match out.last_mut() {
            Some(((_, last), l)) if *l == link && *last + 1 == bucket => *last = bucket,
            _ => out.push(((bucket, bucket), link)),
        }
    }
    out
}

/// splitmix64's finaliser: a cheap, well-mixed 64-bit hash.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Maps a hash into the open interval (0, 1).
fn unit(h: u64) -> f64 {
    ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_follows_weights() {
        let a = assign(7, &[(1, 1), (2, 1)]);
        let first = a.iter().filter(|&&l| l == 0).count();
        assert!((450..=574).contains(&first), "{first} of 1024");
        let a = assign(7, &[(1, 5), (2, 3), (3, 2)]);
        let counts: Vec<usize> = (0..3)
            .map(|i| a.iter().filter(|&&l| l == i).count())
            .collect();
        for (c, want) in counts.iter().zip([0.5, 0.3, 0.2]) {
            let share = *c as f64 / f64::from(BUCKETS);
            assert!((share - want).abs() < 0.05, "{counts:?}");
        }
    }

    #[test]
    fn only_the_leaving_links_buckets_move() {
        let three = assign(42, &[(1, 1), (2, 1), (3, 1)]);
        let two = assign(42, &[(1, 1), (2, 1)]);
        for (b, (&before, &after)) in three.iter().zip(&two).enumerate() {
            if before != 2 {
                assert_eq!(before, after, "bucket {b} moved although its link stayed");
            }
        }
    }

    #[test]
    fn ranges_cover_every_bucket_once() {
        let a = assign(1, &[(1, 3), (4, 1)]);
        let r = ranges(&a);
        let mut next = 0;
        for ((first, last), link) in &r {
            assert_eq!(*first, next);
            for b in *first..=*last {
                assert_eq!(a[b as usize], *link);
            }
            next = last + 1;
        }
        assert_eq!(next, BUCKETS);
    }
}
