//! The queue of sealed datagrams waiting to be multicast: every datagram
//! in one contiguous buffer with its end offsets, so queueing a datagram
//! is one copy and never an allocation once the buffers have grown to the
//! busiest burst. The driver swaps a whole `Outbox` out of the node (see
//! [`Node::take_transmit`](crate::Node::take_transmit)) and sends it with
//! one `sendmmsg`, outside the node's lock.

/// Sealed datagrams in order, in one buffer.
#[derive(Debug, Default)]
pub struct Outbox {
    bytes: Vec<u8>,
    ends: Vec<usize>,
    /// Datagrams already taken from the front by [`Outbox::pop_into`].
    read: usize,
}

impl Outbox {
    pub fn new() -> Outbox {
        Outbox::default()
    }

    /// Appends one datagram.
    pub fn push(&mut self, datagram: &[u8]) {
        self.bytes.extend_from_slice(datagram);
        self.ends.push(self.bytes.len());
    }

    /// Datagrams not yet taken.
    pub fn len(&self) -> usize {
        self.ends.len() - self.read
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The datagrams not yet taken, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        let start = |i: usize| if i == 0 { 0 } else { self.ends[i - 1] };
        (self.read..self.ends.len()).map(move |i| &self.bytes[start(i)..self.ends[i]])
    }

    /// Copies the first datagram not yet taken into `out` (cleared first)
    /// and takes it. Returns false when there is none.
    pub fn pop_into(&mut self, out: &mut Vec<u8>) -> bool {
        let Some(d) = self.iter().next() else {
            return false;
        };
        out.clear();
        out.extend_from_slice(d);
        self.read += 1;
        if self.read == self.ends.len() {
            self.clear();
        }
        true
    }

    /// Forgets every datagram, keeping the buffers' capacity.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
        self.read = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_and_capacity() {
        let mut o = Outbox::new();
        o.push(b"one");
        o.push(b"");
        o.push(b"three");
        assert_eq!(
            o.iter().collect::<Vec<_>>(),
            vec![&b"one"[..], b"", b"three"]
        );
        let mut out = Vec::new();
        assert!(o.pop_into(&mut out));
        assert_eq!(out, b"one");
        assert_eq!(o.len(), 2);
        assert!(o.pop_into(&mut out) && out.is_empty());
        assert!(o.pop_into(&mut out));
        assert_eq!(out, b"three");
        assert!(!o.pop_into(&mut out));
        assert!(o.is_empty());
        let cap = o.bytes.capacity();
        o.push(b"again");
        assert_eq!(o.bytes.capacity(), cap, "no allocation once grown");
    }
}
