//! Multicast sockets: one UDP socket per node that joins the cluster's
//! group on an explicit interface, receives everyone's datagrams and sends
//! this node's. The interface is always pinned, so test traffic never
//! follows the host's default route.
//!
//! Also the batched system calls on that socket: [`Rx`] takes every queued
//! datagram (up to its slots) with one `recvmmsg`, [`Tx`] sends a node's
//! [`Outbox`] with one `sendmmsg`; both reuse buffers allocated once.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;

use shoal_core::Outbox;
use shoal_wire::MAX_DATAGRAM;
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::MulticastSection;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{what} ({group}:{port} on {interface})")]
    Setup {
        what: &'static str,
        group: Ipv4Addr,
        port: u16,
        interface: Ipv4Addr,
        source: std::io::Error,
    },
}

/// What the kernel granted for the receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RcvBuf {
    pub requested: usize,
    /// As reported by the kernel, halved (Linux doubles the value it is
    /// given to account for bookkeeping).
    pub effective: usize,
    pub forced: bool,
}

impl RcvBuf {
    pub fn capped(&self) -> bool {
        self.effective < self.requested
    }
}

/// The cluster socket and where to send.
#[derive(Debug)]
pub struct Multicast {
    pub socket: UdpSocket,
    pub dest: SocketAddr,
    pub rcvbuf: RcvBuf,
}

/// Opens, binds and joins the group as the config says.
pub fn open(cfg: &MulticastSection) -> Result<Multicast, TransportError> {
    let err = |what: &'static str| {
        move |source| TransportError::Setup {
            what,
            group: cfg.group,
            port: cfg.port,
            interface: cfg.interface,
            source,
        }
    };
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(err("socket"))?;
    s.set_reuse_address(true).map_err(err("SO_REUSEADDR"))?;
    s.set_reuse_port(true).map_err(err("SO_REUSEPORT"))?;
    // Bound to the group address, the socket only sees this group's traffic.
    let bind = SocketAddrV4::new(cfg.group, cfg.port);
    s.bind(&bind.into()).map_err(err("bind"))?;
    s.join_multicast_v4(&cfg.group, &cfg.interface)
        .map_err(err("IP_ADD_MEMBERSHIP"))?;
    s.set_multicast_if_v4(&cfg.interface)
        .map_err(err("IP_MULTICAST_IF"))?;
    s.set_multicast_ttl_v4(cfg.ttl)
        .map_err(err("IP_MULTICAST_TTL"))?;
    s.set_multicast_loop_v4(cfg.loopback)
        .map_err(err("IP_MULTICAST_LOOP"))?;
    s.set_send_buffer_size(cfg.sndbuf)
        .map_err(err("SO_SNDBUF"))?;
    let rcvbuf = size_rcvbuf(&s, cfg.rcvbuf).map_err(err("SO_RCVBUF"))?;
    let socket: UdpSocket = s.into();
    Ok(Multicast {
        socket,
        dest: SocketAddr::V4(bind),
        rcvbuf,
    })
}

/// Asks for `want` bytes of receive buffer; when `net.core.rmem_max`
/// caps it, tries `SO_RCVBUFFORCE` (needs CAP_NET_ADMIN) before settling.
fn size_rcvbuf(s: &Socket, want: usize) -> std::io::Result<RcvBuf> {
    s.set_recv_buffer_size(want)?;
    let got = s.recv_buffer_size()? / 2;
    if got >= want {
        return Ok(RcvBuf {
            requested: want,
            effective: got,
            forced: false,
        });
    }
    let v = libc::c_int::try_from(want).unwrap_or(libc::c_int::MAX);
    // SAFETY: setsockopt on a valid fd with a pointer to a live c_int and
    // its exact size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    let effective = s.recv_buffer_size()? / 2;
    Ok(RcvBuf {
        requested: want,
        effective,
        forced: rc == 0 && effective >= want,
    })
}

/// Receive slots and (for the filter's Unix socket) each datagram's
/// sender. A datagram longer than its slot is cut to the slot: cluster
/// slots hold any datagram, filter slots (64 KiB) far more than a filter
/// may send, so a cut one is still refused as too long.
pub(crate) struct Rx {
    bufs: Vec<u8>,
    slot: usize,
    lens: Vec<usize>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    /// One address per slot when senders are kept, else empty.
    names: Vec<libc::sockaddr_un>,
}

impl Rx {
    /// Slots for cluster datagrams (senders not kept).
    pub(crate) fn new(slots: usize) -> Rx {
        Rx::build(slots, MAX_DATAGRAM, false)
    }

    /// Slots of `slot` bytes for a Unix datagram socket, keeping each
    /// sender's address so a reply can go back to it.
    pub(crate) fn with_senders(slots: usize, slot: usize) -> Rx {
        Rx::build(slots, slot, true)
    }

    fn build(slots: usize, slot: usize, senders: bool) -> Rx {
        let mut rx = Rx {
            bufs: vec![0; slots * slot],
            slot,
            lens: vec![0; slots],
            iovs: Vec::with_capacity(slots),
            hdrs: Vec::with_capacity(slots),
            // SAFETY: an all-zero sockaddr_un is a valid (unnamed) address.
            names: if senders {
                vec![unsafe { std::mem::zeroed() }; slots]
            } else {
                Vec::new()
            },
        };
        for i in 0..slots {
            rx.iovs.push(libc::iovec {
                // SAFETY: in bounds: slot i of `slots` slots.
                iov_base: unsafe { rx.bufs.as_mut_ptr().add(i * slot) }.cast(),
                iov_len: slot,
            });
        }
        // Pointers from one base pointer per buffer, taken once all are
        // filled: the headers keep them while `Rx` lives (moving `Rx`
        // moves no buffer).
        let iovs = rx.iovs.as_mut_ptr();
        let names = rx.names.as_mut_ptr();
        for i in 0..slots {
            // SAFETY: an all-zero msghdr is a valid empty header.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            // SAFETY: i < slots = the length of `iovs` (and of `names`
            // when senders are kept).
            h.msg_hdr.msg_iov = unsafe { iovs.add(i) };
            h.msg_hdr.msg_iovlen = 1;
            if senders {
                h.msg_hdr.msg_name = unsafe { names.add(i) }.cast();
            }
            rx.hdrs.push(h);
        }
        rx
    }

    /// Takes what is queued, without waiting: the number of datagrams
    /// (0 when none is queued), or the error.
    pub(crate) fn recv(&mut self, sock: &impl AsRawFd) -> std::io::Result<usize> {
        if !self.names.is_empty() {
            // The kernel shortens it to each sender's address.
            for h in &mut self.hdrs {
                h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_un>() as u32;
            }
        }
        // SAFETY: every header points at its own iovec (and, when kept,
        // its own address), and every iovec at its own slot of `bufs`; all
        // live as long as `self`, which the call borrows mutably; the
        // count is their length.
        let n = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                self.hdrs.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return match e.kind() {
                std::io::ErrorKind::WouldBlock => Ok(0),
                _ => Err(e),
            };
        }
        let n = n as usize;
        for i in 0..n {
            self.lens[i] = self.hdrs[i].msg_len as usize;
        }
        Ok(n)
    }

    /// The first `n` datagrams of the last [`recv`](Self::recv).
    pub(crate) fn datagrams(&self, n: usize) -> impl Iterator<Item = &[u8]> + '_ {
        (0..n).map(move |i| self.datagram(i))
    }

    /// Datagram `i` of the last [`recv`](Self::recv).
    pub(crate) fn datagram(&self, i: usize) -> &[u8] {
        &self.bufs[i * self.slot..i * self.slot + self.lens[i]]
    }

    /// The address datagram `i` came from, as the bytes `sendto` takes;
    /// empty when the sender has no name to reply to (an unbound socket)
    /// or senders are not kept.
    pub(crate) fn sender(&self, i: usize) -> &[u8] {
        let Some(name) = self.names.get(i) else {
            return &[];
        };
        let len = (self.hdrs[i].msg_hdr.msg_namelen as usize).min(std::mem::size_of_val(name));
        // Only the family: an unnamed sender.
        if len <= std::mem::size_of::<libc::sa_family_t>() {
            return &[];
        }
        // SAFETY: `len` bytes of a live sockaddr_un, within its size.
        unsafe { std::slice::from_raw_parts((name as *const libc::sockaddr_un).cast(), len) }
    }
}

/// Sends `bytes` to the Unix address `to` (from [`Rx::sender`]) without
/// waiting.
pub(crate) fn send_to_unix(sock: &impl AsRawFd, bytes: &[u8], to: &[u8]) -> std::io::Result<()> {
    if to.is_empty() || to.len() > std::mem::size_of::<libc::sockaddr_un>() {
        return Err(std::io::ErrorKind::InvalidInput.into());
    }
    // SAFETY: `bytes` and `to` are live slices of the lengths passed; `to`
    // holds a sockaddr_un prefix as the kernel wrote it.
    let rc = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT,
            to.as_ptr().cast(),
            to.len() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Send scratch: iovecs and headers rebuilt per call, capacity kept.
pub(crate) struct Tx {
    dest: libc::sockaddr_in,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl Tx {
    pub(crate) fn new(dest: SocketAddr) -> Tx {
        // SAFETY: an all-zero sockaddr_in is valid; fields set below.
        let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        if let SocketAddr::V4(v4) = dest {
            sa.sin_port = v4.port().to_be();
            sa.sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
        }
        Tx {
            dest: sa,
            iovs: Vec::new(),
            hdrs: Vec::new(),
        }
    }

    /// Sends every datagram of `out` to the destination; returns how
    /// many could not be sent (each failure skips one datagram, as
    /// separate sends would).
    pub(crate) fn send(&mut self, sock: &UdpSocket, out: &Outbox) -> u64 {
        if out.is_empty() {
            return 0;
        }
        self.iovs.clear();
        self.iovs.extend(out.iter().map(|d| libc::iovec {
            iov_base: d.as_ptr() as *mut libc::c_void,
            iov_len: d.len(),
        }));
        self.hdrs.clear();
        for iov in self.iovs.iter_mut() {
            // SAFETY: an all-zero msghdr is a valid empty header.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_name = (&mut self.dest as *mut libc::sockaddr_in).cast();
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            self.hdrs.push(h);
        }
        let mut at = 0;
        let mut failed = 0;
        while at < self.hdrs.len() {
            let left = &mut self.hdrs[at..];
            // SAFETY: each header points at `dest` and at its iovec,
            // which points into `out`; all outlive the call.
            let n = unsafe {
                libc::sendmmsg(
                    sock.as_raw_fd(),
                    left.as_mut_ptr(),
                    left.len() as libc::c_uint,
                    0,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::debug!(error = %e, "multicast send failed");
                failed += 1;
                at += 1;
            } else {
                at += n as usize;
            }
        }
        failed
    }
}

/// Attaches a socket filter that drops, in the kernel, the datagrams this
/// node sent itself: magic `SHOL`, sender `id` and `incarnation` at their
/// header offsets. With `IP_MULTICAST_LOOP` on (nodes sharing a host)
/// every datagram comes back to its sender, which would otherwise check
/// and drop it after a copy to user space. A node with the same id but
/// another incarnation (a misconfigured twin) still reaches the node and
/// is counted there (`shoal_own_id_conflict_total`); so does anything
/// short or malformed. The price: a forgery carrying exactly this node's
/// id and incarnation is dropped here uncounted instead of as `bad_mac`.
pub(crate) fn drop_own(sock: &UdpSocket, id: u32, incarnation: u64) -> std::io::Result<()> {
    // Classic BPF on a UDP socket sees the UDP header (8 bytes) first;
    // word loads are big-endian, the header's fields little-endian.
    const UDP: u32 = 8;
    let magic = u32::from_be_bytes(shoal_wire::MAGIC);
    let op = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let ld = |at: u32| op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, at);
    // `jf` of instruction i jumps to the accept at 11: 10 - i.
    let eq = |i: u8, k: u32| op(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, 0, 10 - i, k);
    let prog = [
        op(libc::BPF_LD | libc::BPF_W | libc::BPF_LEN, 0, 0, 0),
        // Shorter than magic..incarnation: let the node count it.
        op(libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K, 0, 9, UDP + 24),
        ld(UDP),
        eq(3, magic),
        ld(UDP + 12),
        eq(5, id.swap_bytes()),
        ld(UDP + 16),
        eq(7, (incarnation as u32).swap_bytes()),
        ld(UDP + 20),
        eq(9, ((incarnation >> 32) as u32).swap_bytes()),
        op(libc::BPF_RET | libc::BPF_K, 0, 0, 0),
        op(libc::BPF_RET | libc::BPF_K, 0, 0, u32::MAX),
    ];
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: setsockopt on a valid fd with a pointer to a live sock_fprog
    // (whose program outlives the call; the kernel copies it) and its size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A datagram header with `sender` and `incarnation` where the wire
    /// puts them.
    fn datagram(sender: u32, incarnation: u64) -> Vec<u8> {
        let mut d = vec![0u8; 60];
        d[0..4].copy_from_slice(&shoal_wire::MAGIC);
        d[12..16].copy_from_slice(&sender.to_le_bytes());
        d[16..24].copy_from_slice(&incarnation.to_le_bytes());
        d
    }

    #[test]
    fn own_datagrams_are_dropped_in_the_kernel_and_others_pass() {
        let group = Ipv4Addr::new(239, 79, (std::process::id() % 250) as u8 + 1, 3);
        let rx = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).expect("socket");
        rx.set_reuse_address(true).expect("reuse");
        rx.bind(&SocketAddrV4::new(group, 0).into()).expect("bind");
        rx.join_multicast_v4(&group, &Ipv4Addr::LOCALHOST)
            .expect("join");
        let rx: UdpSocket = rx.into();
        rx.set_read_timeout(Some(std::time::Duration::from_millis(500)))
            .expect("timeout");
        let port = rx.local_addr().expect("addr").port();
        const INC: u64 = 0x0123_4567_89ab_cdef;
        drop_own(&rx, 7, INC).expect("filter");
        let tx = UdpSocket::bind("127.0.0.1:0").expect("tx");
        let s2 = Socket::from(tx.try_clone().expect("clone"));
        s2.set_multicast_if_v4(&Ipv4Addr::LOCALHOST).expect("if");
        s2.set_multicast_loop_v4(true).expect("loop");
        let dest = SocketAddrV4::new(group, port);
        let mut short = datagram(7, INC);
        short.truncate(20);
        let mut foreign = datagram(7, INC);
        foreign[0] = b'X';
        let twin = datagram(7, INC + (1 << 32));
        let restarted = datagram(7, INC + 1);
        for d in [
            datagram(7, INC),
            datagram(8, INC),
            short.clone(),
            foreign.clone(),
            twin.clone(),
            restarted.clone(),
        ] {
            tx.send_to(&d, dest).expect("send");
        }
        let mut buf = [0u8; 128];
        let mut got = Vec::new();
        while let Ok(n) = rx.recv(&mut buf) {
            got.push(buf[..n].to_vec());
        }
        assert_eq!(
            got,
            vec![datagram(8, INC), short, foreign, twin, restarted],
            "only node 7's own datagram of this incarnation is dropped"
        );
    }
}
