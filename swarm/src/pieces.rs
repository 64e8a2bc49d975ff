//! A set of piece indices as a bitmap that knows its own count.

/// Pieces `0..len` of a blob, each in or out of the set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PieceSet {
    words: Vec<u64>,
    len: u32,
    count: u32,
}

impl PieceSet {
    pub fn empty(len: u32) -> PieceSet {
        PieceSet {
            words: vec![0; (len as usize).div_ceil(64)],
            len,
            count: 0,
        }
    }

    pub fn full(len: u32) -> PieceSet {
        let mut set = PieceSet::empty(len);
        for w in set.words.iter_mut() {
            *w = u64::MAX;
        }
        set.trim();
        set.count = len;
        set
    }

    /// Clears the bits past `len` in the last word.
    fn trim(&mut self) {
        let tail = self.len % 64;
        if tail != 0 {
            if let Some(last) = self.words.last_mut() {
                *last &= (1u64 << tail) - 1;
            }
        }
    }

    /// The number of pieces the set ranges over.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// How many pieces are in the set.
    pub fn count(&self) -> u32 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn is_full(&self) -> bool {
        self.count == self.len
    }

    pub fn contains(&self, index: u32) -> bool {
        index < self.len && self.words[(index / 64) as usize] & (1 << (index % 64)) != 0
    }

    /// Adds `index`; false when it was already in, or out of range.
    pub fn insert(&mut self, index: u32) -> bool {
        if index >= self.len || self.contains(index) {
            return false;
        }
        self.words[(index / 64) as usize] |= 1 << (index % 64);
        self.count += 1;
        true
    }

    /// Removes `index`; false when it was not in.
    pub fn remove(&mut self, index: u32) -> bool {
        if !self.contains(index) {
            return false;
        }
        self.words[(index / 64) as usize] &= !(1 << (index % 64));
        self.count -= 1;
        true
    }

    /// The pieces in the set, lowest first.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.words.iter().enumerate().flat_map(|(k, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let bit = w.trailing_zeros();
                w &= w - 1;
                Some(k as u32 * 64 + bit)
            })
        })
    }

    /// The pieces in this set and in neither `a` nor `b`, lowest first (sets of one length).
    pub fn without<'a>(
        &'a self,
        a: &'a PieceSet,
        b: &'a PieceSet,
    ) -> impl Iterator<Item = u32> + 'a {
        self.words.iter().enumerate().flat_map(move |(k, &w)| {
            let mut w =
                w & !a.words.get(k).copied().unwrap_or(0) & !b.words.get(k).copied().unwrap_or(0);
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let bit = w.trailing_zeros();
                w &= w - 1;
                Some(k as u32 * 64 + bit)
            })
        })
    }

    /// The lowest piece not in the set, below `limit`.
    pub fn first_missing(&self, limit: u32) -> Option<u32> {
        let limit = limit.min(self.len);
        for (k, &w) in self.words.iter().enumerate() {
            if w != u64::MAX {
                let index = k as u32 * 64 + (!w).trailing_zeros();
                return (index < limit).then_some(index);
            }
        }
        None
    }

    /// The bitmap as bytes, piece 0 in the lowest bit of the first byte: the wire form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out: Vec<u8> = self.words.iter().flat_map(|w| w.to_le_bytes()).collect();
        out.truncate((self.len as usize).div_ceil(8));
        out
    }

    /// Reads [`PieceSet::to_bytes`] for `len` pieces; None when the length is wrong or a bit
    /// past `len` is set.
    pub fn from_bytes(len: u32, bytes: &[u8]) -> Option<PieceSet> {
        if bytes.len() != (len as usize).div_ceil(8) {
            return None;
        }
        let mut set = PieceSet::empty(len);
        for (k, chunk) in bytes.chunks(8).enumerate() {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            set.words[k] = u64::from_le_bytes(word);
        }
        let before: u32 = set.words.iter().map(|w| w.count_ones()).sum();
        set.trim();
        let count: u32 = set.words.iter().map(|w| w.count_ones()).sum();
        if count != before {
            return None;
        }
        set.count = count;
        Some(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_remove_and_count_agree() {
        let mut s = PieceSet::empty(130);
        assert!(s.insert(0) && s.insert(64) && s.insert(129));
        assert!(!s.insert(64), "second insert is not new");
        assert!(!s.insert(130), "out of range");
        assert_eq!(s.count(), 3);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0, 64, 129]);
        assert!(s.remove(64) && !s.remove(64));
        assert_eq!(s.count(), 2);
        assert_eq!(s.first_missing(130), Some(1));
    }

    #[test]
    fn full_sets_hold_exactly_len_pieces() {
        for len in [0, 1, 63, 64, 65, 1000] {
            let s = PieceSet::full(len);
            assert_eq!(s.count(), len);
            assert_eq!(s.iter().count() as u32, len);
            assert!(s.is_full());
            assert_eq!(s.first_missing(len), None);
        }
    }

    #[test]
    fn wire_form_round_trips_and_rejects_stray_bits() {
        let mut s = PieceSet::empty(13);
        s.insert(0);
        s.insert(12);
        let bytes = s.to_bytes();
        assert_eq!(bytes.len(), 2);
        assert_eq!(PieceSet::from_bytes(13, &bytes), Some(s));
        assert_eq!(
            PieceSet::from_bytes(13, &[0xff, 0xff]),
            None,
            "bits past 13"
        );
        assert_eq!(PieceSet::from_bytes(13, &[0]), None, "short");
        assert_eq!(PieceSet::from_bytes(0, &[]), Some(PieceSet::empty(0)));
    }
}
