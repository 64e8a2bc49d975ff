//! How a blob is cut into pieces. The mirror hashes pieces by it, agents fetch and verify them
//! by it, the scheduler counts holders by it: all three must agree on how many pieces a blob
//! has and where each starts, or an agent waits for a piece nobody will ever list.
//!
//! A blob of `size` bytes has `ceil(size / piece_size)` pieces, the last one short; a 0-byte
//! blob has none.

use std::ops::Range;

/// Piece sizes the mirror and agents accept (`blocksize`): the powers of two from
/// [`MIN_PIECE`] to [`MAX_PIECE`], eleven in all. A fixed set bounds what a client can make the
/// mirror hash: at most once per blob for each (`/pieces`).
pub const MIN_PIECE: u64 = 64 * 1024;
pub const MAX_PIECE: u64 = 64 * 1024 * 1024;

/// Pieces per blob the automatic piece size aims at. Small pieces spread through a pool
/// fastest (a piece's hops each cost its transfer time), but each costs a digest, an offer and
/// a notice; about 2,000 measured best from 128 MiB to 1 GiB blobs (docs/benchmarks.md).
pub const AUTO_PIECES: u64 = 2048;
/// The largest automatic piece size.
pub const AUTO_MAX_PIECE: u64 = 1 << 20;

/// The piece size `blocksize: auto` gives a blob of `size` bytes: the smallest power of two
/// that cuts it into at most [`AUTO_PIECES`] pieces, between [`MIN_PIECE`] and
/// [`AUTO_MAX_PIECE`]. Every agent, the mirror and the scheduler derive the same size from
/// the blob's size alone.
pub fn auto_piece_size(size: u64) -> u64 {
    size.div_ceil(AUTO_PIECES)
        .max(1)
        .checked_next_power_of_two()
        .unwrap_or(AUTO_MAX_PIECE)
        .clamp(MIN_PIECE, AUTO_MAX_PIECE)
}

/// Why a piece layout was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("pieceSize must be above 0")]
    ZeroPieceSize,
    #[error("pieceSize {0} is not a power of two between {MIN_PIECE} and {MAX_PIECE}")]
    PieceSizeOutOfRange(u64),
    #[error("{count} pieces is more than {max}; use larger pieces")]
    TooManyPieces { count: u64, max: u64 },
}

/// The pieces of one blob: `size` bytes cut every `piece_size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PieceLayout {
    size: u64,
    piece_size: u64,
    count: u32,
}

impl PieceLayout {
    /// Any piece size above 0, as long as the pieces can be numbered with a `u32`.
    pub fn new(size: u64, piece_size: u64) -> Result<Self, LayoutError> {
        if piece_size == 0 {
            return Err(LayoutError::ZeroPieceSize);
        }
        let count = size.div_ceil(piece_size);
        let count = u32::try_from(count).map_err(|_| LayoutError::TooManyPieces {
            count,
            max: u32::MAX as u64,
        })?;
        Ok(PieceLayout {
            size,
            piece_size,
            count,
        })
    }

    /// As [`PieceLayout::new`], with a piece size the mirror and agents accept
    /// ([`MIN_PIECE`]..=[`MAX_PIECE`]).
    pub fn bounded(size: u64, piece_size: u64) -> Result<Self, LayoutError> {
        check_piece_size(piece_size)?;
        Self::new(size, piece_size)
    }

    /// The layout with the automatic piece size ([`auto_piece_size`]); refused, as by
    /// [`PieceLayout::new`], for a size whose pieces a `u32` cannot number (above 4 PiB).
    pub fn auto(size: u64) -> Result<Self, LayoutError> {
        Self::new(size, auto_piece_size(size))
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn piece_size(&self) -> u64 {
        self.piece_size
    }

    /// How many pieces: 0 for a 0-byte blob.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The bytes of piece `index` (end exclusive); `None` past the last piece.
    pub fn span(&self, index: u32) -> Option<Range<u64>> {
        (index < self.count).then(|| {
            let start = index as u64 * self.piece_size;
            start..(start + self.piece_size).min(self.size)
        })
    }

    /// How many pieces, from the first, lie wholly within the first `available` bytes.
    pub fn complete_within(&self, available: u64) -> u32 {
        if available >= self.size {
            return self.count;
        }
        // Below `size`, so below `count` pieces.
        (available / self.piece_size) as u32
    }
}

/// Checks a piece size from config or the network: a power of two in
/// [`MIN_PIECE`]..=[`MAX_PIECE`].
pub fn check_piece_size(piece_size: u64) -> Result<u64, LayoutError> {
    if (MIN_PIECE..=MAX_PIECE).contains(&piece_size) && piece_size.is_power_of_two() {
        Ok(piece_size)
    } else {
        Err(LayoutError::PieceSizeOutOfRange(piece_size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_automatic_piece_size_follows_the_blob() {
        assert_eq!(auto_piece_size(0), MIN_PIECE);
        assert_eq!(auto_piece_size(1), MIN_PIECE);
        assert_eq!(auto_piece_size(128 << 20), 64 << 10);
        assert_eq!(auto_piece_size((128 << 20) + 1), 128 << 10);
        assert_eq!(auto_piece_size(1 << 30), 512 << 10);
        assert_eq!(auto_piece_size(2 << 30), 1 << 20);
        assert_eq!(auto_piece_size(u64::MAX), AUTO_MAX_PIECE);
        let l = PieceLayout::auto(128 << 20).expect("layout");
        assert_eq!((l.piece_size(), l.count()), (64 << 10, 2048));
        assert_eq!(PieceLayout::auto(0).expect("layout").count(), 0);
        assert!(matches!(
            PieceLayout::auto(u64::MAX),
            Err(LayoutError::TooManyPieces { .. })
        ));
    }

    #[test]
    fn pieces_round_up_and_the_last_is_short() {
        let l = PieceLayout::new(10, 4).expect("layout");
        assert_eq!(l.count(), 3);
        assert_eq!(l.span(0), Some(0..4));
        assert_eq!(l.span(2), Some(8..10));
        assert_eq!(l.span(3), None);
        let even = PieceLayout::new(8, 4).expect("layout");
        assert_eq!((even.count(), even.span(1)), (2, Some(4..8)));
    }

    #[test]
    fn a_zero_byte_blob_has_no_pieces() {
        let l = PieceLayout::new(0, 4 << 20).expect("layout");
        assert_eq!(l.count(), 0);
        assert_eq!(l.span(0), None);
        assert_eq!(l.complete_within(0), 0);
    }

    #[test]
    fn complete_pieces_count_only_whole_ones_until_the_end() {
        let l = PieceLayout::new(10, 4).expect("layout");
        assert_eq!(l.complete_within(3), 0);
        assert_eq!(l.complete_within(4), 1);
        assert_eq!(l.complete_within(9), 2);
        assert_eq!(l.complete_within(10), 3);
        assert_eq!(l.complete_within(u64::MAX), 3);
    }

    #[test]
    fn bad_layouts_are_refused() {
        assert_eq!(PieceLayout::new(4, 0), Err(LayoutError::ZeroPieceSize));
        assert!(matches!(
            PieceLayout::new(u64::MAX, 1),
            Err(LayoutError::TooManyPieces { .. })
        ));
        assert!(PieceLayout::bounded(10, MIN_PIECE - 1).is_err());
        assert!(PieceLayout::bounded(10, MAX_PIECE + 1).is_err());
        assert!(PieceLayout::bounded(10, MIN_PIECE).is_ok());
        assert!(
            PieceLayout::bounded(10, 3 << 20).is_err(),
            "not a power of two"
        );
        let accepted = (0..64)
            .map(|shift| 1u64 << shift)
            .filter(|&size| check_piece_size(size).is_ok())
            .count();
        assert_eq!(accepted, 11);
    }
}
