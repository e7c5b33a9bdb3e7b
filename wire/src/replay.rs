//! The per-sender sequence window. One piece serves two needs: it rejects
//! replayed and duplicated datagrams, and it is where loss, duplicates and
//! reordering are counted.
//!
//! Loss is counted once and for good: a sequence number skipped by a
//! newer datagram is *missing* while it is inside the window (it may still
//! arrive, late) and *lost* when it leaves the window unfilled. So the lost
//! count never goes down, and a late datagram fills only a hole that a gap
//! opened: one older than the first datagram seen (which no gap counted)
//! cannot cancel a real loss.

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
    /// Bit `i` set: `highest - i` was skipped by a gap and has not arrived.
    missing: u128,
    /// Skipped sequence numbers that left the window unfilled, or belonged
    /// to an incarnation the sender left behind. Never decreases.
    lost: u64,
}

impl ReplayWindow {
    /// Judges `(incarnation, seq)` and, when accepted, records it. Call
    /// only for datagrams whose integrity (CRC, MAC) is already checked.
    pub fn check(&mut self, incarnation: u64, seq: u64) -> ReplayVerdict {
        if !self.started || incarnation > self.incarnation {
            let restarted = self.started;
            // What the old incarnation still owed will never come.
            let lost = self.lost + u64::from(self.missing.count_ones());
            *self = ReplayWindow {
                started: true,
                incarnation,
                highest: seq,
                seen: 1,
                missing: 0,
                lost,
            };
            return ReplayVerdict::Fresh { restarted };
        }
        if incarnation < self.incarnation {
            return ReplayVerdict::Stale;
        }
        if seq > self.highest {
            let shift = seq - self.highest;
            let gap = shift - 1;
            if shift >= REPLAY_WINDOW {
                // Everything missing leaves the window, and so does the part
                // of the gap that does not fit in it.
                let kept = gap.min(REPLAY_WINDOW - 1);
                self.lost += u64::from(self.missing.count_ones()) + (gap - kept);
                self.seen = 1;
                // Bits 1..=kept: the newest `kept` skipped numbers.
                self.missing = if kept == 0 {
                    0
                } else {
                    (u128::MAX >> (REPLAY_WINDOW - kept)) << 1
                };
            } else {
                let leaving = self.missing >> (REPLAY_WINDOW - shift);
                self.lost += u64::from(leaving.count_ones());
                self.seen = (self.seen << shift) | 1;
                // Bits 1..shift: the numbers this datagram skipped.
                self.missing = (self.missing << shift) | ((1u128 << shift) - 2);
            }
            self.highest = seq;
            return ReplayVerdict::Next { gap };
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
        self.missing &= !bit;
        ReplayVerdict::Late
    }

    /// Datagrams lost for good: skipped by a gap and never arrived while
    /// inside the window (or owed by an incarnation the sender left).
    /// Never decreases.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// Datagrams skipped by a gap that may still arrive (inside the window).
    pub fn missing(&self) -> u32 {
        self.missing.count_ones()
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

    #[test]
    fn loss_is_counted_when_a_hole_leaves_the_window_and_never_goes_down() {
        let mut w = ReplayWindow::default();
        assert_eq!(w.check(1, 10), Fresh { restarted: false });
        // Older than the first datagram: late, but no gap had counted it.
        assert_eq!(w.check(1, 9), Late);
        assert_eq!(w.check(1, 12), Next { gap: 1 }); // 11 missing
        assert_eq!((w.missing(), w.lost()), (1, 0));
        // 11 never comes; 9 arriving earlier must not cancel it.
        let mut lost_before = 0;
        for seq in 13..=12 + REPLAY_WINDOW {
            assert!(w.check(1, seq).accepted());
            assert!(w.lost() >= lost_before, "lost went down");
            lost_before = w.lost();
        }
        assert_eq!((w.missing(), w.lost()), (0, 1));
        // A late arrival fills its hole: never counted as lost.
        assert_eq!(w.check(1, 200), Next { gap: 59 });
        assert_eq!(w.check(1, 150), Late);
        assert_eq!((w.missing(), w.lost()), (58, 1));
        // A jump beyond the window: all missing and the unseen part lost.
        assert_eq!(w.check(1, 200 + 300), Next { gap: 299 });
        assert_eq!((w.missing(), w.lost()), (127, 1 + 58 + 299 - 127));
        // A restart: the old incarnation's holes are lost.
        assert_eq!(w.check(2, 1), Fresh { restarted: true });
        assert_eq!((w.missing(), w.lost()), (0, 1 + 58 + 172 + 127));
    }
}
