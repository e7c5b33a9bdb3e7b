//! Multicast sockets: one UDP socket per node that joins the cluster's
//! group on an explicit interface, receives everyone's datagrams and sends
//! this node's. The interface is always pinned, so test traffic never
//! follows the host's default route.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;

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
