//! Where multiwan's values sit inside `mark_mask`.
//!
//! A link's mark is its `id` placed at the lowest run of at least 8 contiguous bits of
//! the mask, so it depends on nothing but the id: editing or reordering the file never
//! changes which mark a connection carries. 255 (all eight bits) is reserved for the
//! `main` target.

/// The mark values multiwan uses under one `mark_mask`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarkLayout {
    mask: u32,
    shift: u32,
}

/// Value of the reserved `main` mark before shifting.
const MAIN_VALUE: u32 = 255;

impl MarkLayout {
    /// `mask` must hold a run of at least 8 contiguous bits (config validation ensures
    /// it); values go at the lowest such run.
    pub fn new(mask: u32) -> MarkLayout {
        let shift = (0..=24)
            .find(|s| (mask >> s) & 0xff == 0xff)
            .expect("mark_mask was validated to hold 8 contiguous bits");
        MarkLayout { mask, shift }
    }

    /// The bits multiwan owns.
    pub fn mask(&self) -> u32 {
        self.mask
    }

    /// The bits multiwan must leave as they are.
    pub fn keep(&self) -> u32 {
        !self.mask
    }

    /// A link's mark.
    pub fn link(&self, id: u8) -> u32 {
        u32::from(id) << self.shift
    }

    /// The mark of connections sent to the main table (rule target `main`).
    pub fn main(&self) -> u32 {
        MAIN_VALUE << self.shift
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_mask_puts_ids_in_the_second_byte() {
        let m = MarkLayout::new(0xff00);
        assert_eq!(m.link(1), 0x100);
        assert_eq!(m.link(254), 0xfe00);
        assert_eq!(m.main(), 0xff00);
        assert_eq!(m.keep(), 0xffff_00ff);
    }

    #[test]
    fn wider_masks_use_their_lowest_full_byte() {
        let m = MarkLayout::new(0x00ff_ff00);
        assert_eq!(m.link(3), 0x300);
        let m = MarkLayout::new(0x0ff0_0000);
        assert_eq!(m.link(1), 0x0010_0000);
        assert_eq!(m.main() & m.keep(), 0);
    }
}
