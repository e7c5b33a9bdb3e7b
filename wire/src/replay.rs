//! The per-sender sequence window. One piece serves two needs: it rejects
//! replayed and duplicated datagrams, and it is where loss, duplicates and
//! reordering are counted.

/// How far behind the highest sequence seen a late datagram is still
/// accepted (and un-counted as lost).
pub const REPLAY_WINDOW: u64 = 128;

/// What the window says about a datagram's `(incarnation, seq)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayVerdict {
    /// The first datagram seen from this sender, or the first of a newer
    /// incarnation (the sender restarted). Accept.
    Fresh { restarted: bool },
    /// Newer than anything seen; `gap` datagrams were skipped (lost, or
    /// still on their way). Accept.
    Next { gap: u64 },
    /// Inside the window and not seen before: a late datagram that had
    /// been counted in a gap. Accept.
    Late,
    /// Seen already. Reject.
    Duplicate,
    /// Older than the window, or from an older incarnation. Reject: it
    /// cannot be told apart from a replay.
    Stale,
}

impl ReplayVerdict {
    pub fn accepted(self) -> bool {
        matches!(
            self,
            ReplayVerdict::Fresh { .. } | ReplayVerdict::Next { .. } | ReplayVerdict::Late
        )
    }
}

/// Sliding window over one sender's datagram sequence.
#[derive(Clone, Debug, Default)]
pub struct ReplayWindow {
    started: bool,
    incarnation: u64,
    highest: u64,
    /// Bit `i` set: `highest - i` has been seen.
    seen: u128,
}

impl ReplayWindow {
    /// Judges `(incarnation, seq)` and, when accepted, records it. Call
    /// only for datagrams whose integrity (CRC, MAC) is already checked.
    pub fn check(&mut self, incarnation: u64, seq: u64) -> ReplayVerdict {
        if !self.started || incarnation > self.incarnation {
            let restarted = self.started;
            *self = ReplayWindow {
                started: true,
                incarnation,
                highest: seq,
                seen: 1,
            };
            return ReplayVerdict::Fresh { restarted };
        }
        if incarnation < self.incarnation {
            return ReplayVerdict::Stale;
        }
        if seq > self.highest {
            let shift = seq - self.highest;
            self.seen = if shift >= 128 {
                1
            } else {
                (self.seen << shift) | 1
            };
            self.highest = seq;
            return ReplayVerdict::Next { gap: shift - 1 };
        }
        let back = self.highest - seq;
        if back >= REPLAY_WINDOW {
            return ReplayVerdict::Stale;
        }
        let bit = 1u128 << back;
        if self.seen & bit != 0 {
            return ReplayVerdict::Duplicate;
        }
        self.seen |= bit;
        ReplayVerdict::Late
    }
}

#[cfg(test)]
mod tests {
    use super::ReplayVerdict::*;
    use super::*;

    #[test]
    fn in_order_loss_reorder_duplicate() {
        let mut w = ReplayWindow::default();
        assert_eq!(w.check(1, 1), Fresh { restarted: false });
        assert_eq!(w.check(1, 2), Next { gap: 0 });
        assert_eq!(w.check(1, 5), Next { gap: 2 });
        assert_eq!(w.check(1, 4), Late);
        assert_eq!(w.check(1, 4), Duplicate);
        assert_eq!(w.check(1, 5), Duplicate);
        assert_eq!(w.check(1, 2), Duplicate);
        assert_eq!(w.check(1, 3), Late);
    }

    #[test]
    fn window_edges_and_incarnations() {
        let mut w = ReplayWindow::default();
        w.check(10, 1000);
        assert_eq!(w.check(10, 1000 - 127), Late);
        assert_eq!(w.check(10, 1000 - 128), Stale);
        assert_eq!(w.check(9, 5000), Stale, "older incarnation is a replay");
        assert_eq!(w.check(11, 1), Fresh { restarted: true });
        assert_eq!(w.check(11, 1), Duplicate);
        assert_eq!(w.check(10, 1001), Stale);
        // A jump of more than the window clears it.
        assert_eq!(w.check(11, 1 + 500), Next { gap: 499 });
        assert_eq!(w.check(11, 1), Stale);
    }

    /// `docs/wire.md` section 5: seq 0 is an ordinary number to the window.
    #[test]
    fn seq_zero_is_an_ordinary_number() {
        let mut w = ReplayWindow::default();
        assert_eq!(w.check(7, 0), Fresh { restarted: false });
        assert_eq!(w.check(7, 1), Next { gap: 0 });
        assert_eq!(w.check(7, 0), Duplicate);
        let mut w = ReplayWindow::default();
        w.check(7, 1);
        w.check(7, 127);
        assert_eq!(w.check(7, 0), Late);
        assert_eq!(w.check(7, 0), Duplicate);
        let mut w = ReplayWindow::default();
        w.check(7, 128);
        assert_eq!(w.check(7, 0), Stale);
    }
}
