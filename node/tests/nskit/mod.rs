//! Helpers the root-only namespace tests share: the lock that keeps two
//! of them from running at once, running code inside a namespace, a UDP
//! echo to probe, and an attacker that probes a node over UDP and TCP.
#![allow(dead_code)] // each test binary uses its own subset

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use shoal_node::testkit::NodeProcess;

/// Held for the whole test: released when the file is closed. Never wrap
/// a test that takes it in `flock` on the same file (it would deadlock).
pub(crate) fn netns_lock() -> File {
    let f = File::create("/tmp/shoal-netns.lock").expect("lock file");
    // SAFETY: flock on a valid fd.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
    f
}

/// Runs `f` in a thread that joined namespace `ns` (sockets made there
/// stay in it wherever they are used from).
pub(crate) fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).expect("netns file");
        // SAFETY: joins this thread (only) to the namespace of a valid fd.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("namespace thread")
}

/// A UDP echo on `addr:port` in namespace `ns`, answering until the
/// process ends.
pub(crate) fn udp_echo(ns: &str, addr: Ipv4Addr, port: u16) {
    let sock = in_ns(ns, move || {
        UdpSocket::bind((addr, port)).expect("bind echo")
    });
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(&buf[..n], from);
        }
    });
}

/// The port of a node's admin listener (it answers `/healthz`).
pub(crate) fn http_port(n: &NodeProcess) -> u16 {
    n.admin
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port")
}

/// An attacker: its namespace and a UDP socket made there.
pub(crate) struct Attacker {
    pub(crate) udp: UdpSocket,
    pub(crate) ns: String,
    /// Its address (the source the nodes see).
    pub(crate) addr: Ipv4Addr,
    /// UDP echo port probed on every target.
    pub(crate) echo: u16,
}

impl Attacker {
    pub(crate) fn new(ns: &str, addr: Ipv4Addr, echo: u16) -> Attacker {
        Attacker {
            udp: in_ns(ns, || UdpSocket::bind("0.0.0.0:0").expect("attacker")),
            ns: ns.to_string(),
            addr,
            echo,
        }
    }

    /// Whether UDP and TCP from the attacker get an answer from `target`
    /// (`http` its node's HTTP port). Both must agree; a disagreement is
    /// probed again (twice at most), since an element can expire between
    /// the UDP and the TCP probe of one round.
    pub(crate) fn gets_through(&self, target: Ipv4Addr, http: u16) -> bool {
        for _ in 0..2 {
            let (udp, tcp) = self.probe(target, http);
            if udp == tcp {
                return udp;
            }
        }
        let (udp, tcp) = self.probe(target, http);
        assert_eq!(
            udp, tcp,
            "UDP and TCP disagree for {target} three times running"
        );
        udp
    }

    /// Whether UDP to the target's echo, and TCP to its HTTP port, get an
    /// answer: (udp, tcp).
    pub(crate) fn probe(&self, target: Ipv4Addr, http: u16) -> (bool, bool) {
        let wait = Duration::from_millis(250);
        let _ = self.udp.set_read_timeout(Some(Duration::from_millis(1)));
        let mut buf = [0u8; 64];
        while self.udp.recv_from(&mut buf).is_ok() {} // drain late echoes
        let _ = self.udp.set_read_timeout(Some(wait));
        // Up to three probes, as TCP resends its SYN: a first datagram can
        // be lost while a neighbour entry resolves on a fresh bridge.
        let token = std::process::id().to_le_bytes();
        let udp = (0..3).any(|_| {
            self.udp.send_to(&token, (target, self.echo)).is_ok()
                && matches!(self.udp.recv_from(&mut buf), Ok((n, _)) if buf[..n] == token[..])
        });
        let addr = SocketAddr::from((target, http));
        let tcp = in_ns(&self.ns, move || {
            TcpStream::connect_timeout(&addr, wait).is_ok_and(|mut s| {
                let _ = s.set_read_timeout(Some(wait));
                s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                    .is_ok()
                    && {
                        let mut b = [0u8; 12];
                        s.read_exact(&mut b).is_ok()
                    }
            })
        });
        (udp, tcp)
    }
}
