//! A fixed-length set of piece indices as a bitmap: the shape the decision loop needs
//! (union, "holds one I lack", first missing) in a few word operations per 64 pieces.

/// Pieces `0..len` of one blob, each held or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PieceSet {
    words: Vec<u64>,
    len: u32,
}

impl PieceSet {
    pub fn empty(len: u32) -> Self {
        PieceSet {
            words: vec![0; (len as usize).div_ceil(64)],
            len,
        }
    }

    pub fn full(len: u32) -> Self {
        let mut set = Self::empty(len);
        for w in &mut set.words {
            *w = u64::MAX;
        }
        set.trim();
        set
    }

    /// The set of `indices`; indices at or past `len` are ignored (callers validate first).
    pub fn from_indices(len: u32, indices: &[u32]) -> Self {
        let mut set = Self::empty(len);
        for &i in indices {
            set.insert(i);
        }
        set
    }

    /// Clears the bits past `len` in the last word, so counts and complements stay exact.
    fn trim(&mut self) {
        let rem = self.len % 64;
        if rem != 0 {
            if let Some(last) = self.words.last_mut() {
                *last &= (1u64 << rem) - 1;
            }
        }
    }

    pub fn insert(&mut self, i: u32) {
        if i < self.len {
            self.words[(i / 64) as usize] |= 1 << (i % 64);
        }
    }

    pub fn remove(&mut self, i: u32) {
        if i < self.len {
            self.words[(i / 64) as usize] &= !(1 << (i % 64));
        }
    }

    pub fn contains(&self, i: u32) -> bool {
        i < self.len && self.words[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    pub fn count(&self) -> u32 {
        self.words.iter().map(|w| w.count_ones()).sum()
    }

    pub fn is_full(&self) -> bool {
        self.count() == self.len
    }

    pub fn union_with(&mut self, other: &PieceSet) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= b;
        }
    }

    /// Whether `self` holds a piece that `other` lacks.
    pub fn has_any_missing_from(&self, other: &PieceSet) -> bool {
        self.words
            .iter()
            .zip(&other.words)
            .any(|(mine, theirs)| mine & !theirs != 0)
    }

    /// Pieces held here that `other` lacks, lowest first: what a parent can give a requester.
    pub fn missing_from_vec(&self, other: &PieceSet) -> Vec<u32> {
        let mut out = Vec::new();
        for (wi, (&mine, &theirs)) in self.words.iter().zip(&other.words).enumerate() {
            let mut bits = mine & !theirs;
            while bits != 0 {
                out.push(wi as u32 * 64 + bits.trailing_zeros());
                bits &= bits - 1;
            }
        }
        out
    }

    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// Held pieces, lowest first.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        ones(&self.words, false, self.len)
    }

    /// Pieces not held, lowest first.
    pub fn iter_missing(&self) -> impl Iterator<Item = u32> + '_ {
        ones(&self.words, true, self.len)
    }

    /// Held pieces, lowest first.
    #[cfg(test)]
    pub fn to_vec(&self) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.count() as usize);
        for (wi, &word) in self.words.iter().enumerate() {
            let base = wi as u32 * 64;
            if word == u64::MAX {
                // Bits past `len` are always clear, so a full word is 64 real pieces.
                out.extend(base..base + 64);
                continue;
            }
            let mut bits = word;
            while bits != 0 {
                out.push(base + bits.trailing_zeros());
                bits &= bits - 1;
            }
        }
        out
    }
}

/// Indices of set bits (or clear bits, when `invert`) below `len`, lowest first.
fn ones(words: &[u64], invert: bool, len: u32) -> impl Iterator<Item = u32> + '_ {
    words.iter().enumerate().flat_map(move |(wi, &w)| {
        let mut bits = if invert { !w } else { w };
        std::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let bit = bits.trailing_zeros();
            bits &= bits - 1;
            Some(wi as u32 * 64 + bit)
        })
        .take_while(move |&i| i < len)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parent_offers_only_what_the_requester_lacks() {
        let parent = PieceSet::from_indices(130, &[0, 1, 63, 64, 100, 129]);
        let me = PieceSet::from_indices(130, &[1, 64]);
        assert_eq!(parent.missing_from_vec(&me), vec![0, 63, 100, 129]);
        assert!(PieceSet::full(130)
            .missing_from_vec(&PieceSet::full(130))
            .is_empty());
    }

    #[test]
    fn full_set_holds_exactly_len_pieces() {
        for len in [0, 1, 63, 64, 65, 130] {
            let full = PieceSet::full(len);
            assert_eq!(full.count(), len);
            assert!(full.is_full());
            assert_eq!(full.iter_missing().count(), 0);
            assert_eq!(full.to_vec(), (0..len).collect::<Vec<_>>());
        }
    }

    #[test]
    fn missing_pieces_come_lowest_first_and_stop_at_len() {
        let set = PieceSet::from_indices(70, &[0, 2, 64, 69, 500]);
        assert_eq!(set.count(), 4);
        let missing: Vec<u32> = set.iter_missing().collect();
        assert_eq!(missing.len(), 66);
        assert_eq!(&missing[..3], &[1, 3, 4]);
        assert_eq!(missing.last(), Some(&68));
        assert!(!set.contains(500));
    }

    #[test]
    fn one_set_can_offer_another_what_it_lacks() {
        let a = PieceSet::from_indices(100, &[1, 2]);
        let b = PieceSet::from_indices(100, &[1, 2, 3]);
        assert!(b.has_any_missing_from(&a));
        assert!(!a.has_any_missing_from(&b));
        let mut u = a.clone();
        u.union_with(&PieceSet::from_indices(100, &[99]));
        assert_eq!(u.to_vec(), vec![1, 2, 99]);
    }
}
