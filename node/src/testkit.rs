//! Real `shoal` processes for tests, the load harness and demos: config
//! generation, start-up, waiting, and reading a node's metrics. One piece
//! serves all of them so they start nodes the same way.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::client::{http_get, ClientError, LocalClient};

/// What a test node looks like.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub id: u32,
    pub cluster: u32,
    pub group: Ipv4Addr,
    pub port: u16,
    pub interface: Ipv4Addr,
    pub secret: Option<String>,
    /// Directory for the config, socket and log.
    pub dir: PathBuf,
    /// Run inside this network namespace (`ip netns exec`).
    pub netns: Option<String>,
    /// Extra TOML appended to the config (e.g. `[modes.default]`).
    pub extra: String,
    /// Extra keys of the `[http]` section (e.g. `max_connections = 8`).
    pub http_extra: String,
}

static NEXT_GROUP: AtomicU32 = AtomicU32::new(0);

/// A multicast group and port no other test of this process uses (the
/// port is also free on loopback at the time of the call).
pub fn unique_group() -> (Ipv4Addr, u16) {
    let n = NEXT_GROUP.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    let group = Ipv4Addr::new(239, 78, (pid % 250) as u8 + 1, (n % 250) as u8 + 1);
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map_or(30_000 + (n as u16 % 1000), |a| a.port());
    (group, port)
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_or(0, |a| a.port())
}

impl NodeSpec {
    /// A loopback node in `dir`.
    pub fn loopback(id: u32, group: Ipv4Addr, port: u16, dir: &Path) -> NodeSpec {
        NodeSpec {
            id,
            cluster: 1,
            group,
            port,
            interface: Ipv4Addr::LOCALHOST,
            secret: Some("integration-test-secret".to_string()),
            dir: dir.to_path_buf(),
            netns: None,
            extra: String::new(),
            http_extra: String::new(),
        }
    }

    pub fn socket_path(&self) -> PathBuf {
        self.dir.join(format!("node{}.sock", self.id))
    }

    /// Whether the node serves the API (its `extra` has `[verdicts]`).
    pub fn has_api(&self) -> bool {
        self.extra.contains("[verdicts]")
    }

    /// The TOML config for this node, with `admin` and `api` as the HTTP
    /// listeners (`api` is written only when the node serves the API).
    pub fn config_text(&self, admin: &str, api: &str) -> String {
        let auth = self.secret.as_ref().map_or(String::new(), |s| {
            format!("\n[auth]\nkey_id = 1\nsecret = \"{s}\"\n")
        });
        let api = if self.has_api() {
            format!("api = \"{api}\"\n")
        } else {
            String::new()
        };
        format!(
            "[node]\nid = {}\ncluster = {}\n\n[multicast]\ngroup = \"{}\"\nport = {}\ninterface = \"{}\"\n{auth}\n[local]\nsocket = \"{}\"\n\n[http]\nadmin = \"{admin}\"\n{api}{}\n\n{}\n",
            self.id,
            self.cluster,
            self.group,
            self.port,
            self.interface,
            self.socket_path().display(),
            self.http_extra,
            self.extra
        )
    }
}

/// A running `shoal run` process; killed when dropped.
#[derive(Debug)]
pub struct NodeProcess {
    child: Child,
    pub id: u32,
    pub socket: PathBuf,
    pub config: PathBuf,
    /// The admin listener (`/metrics`, `/status`, `/healthz`).
    pub admin: String,
    /// The API listener (`/v1/...`); bound only when the node has
    /// `[verdicts]`.
    pub api: String,
    pub log: PathBuf,
}

impl NodeProcess {
    /// Starts `bin run` for `spec` and waits until its local socket answers.
    pub fn spawn(bin: &Path, spec: &NodeSpec) -> std::io::Result<NodeProcess> {
        std::fs::create_dir_all(&spec.dir)?;
        // A node in a namespace listens on its own address, which the host
        // reaches over the bridge.
        let host = match spec.netns {
            Some(_) => spec.interface,
            None => Ipv4Addr::LOCALHOST,
        };
        let admin = format!("{host}:{}", free_tcp_port());
        let api = format!("{host}:{}", free_tcp_port());
        let config = spec.dir.join(format!("node{}.toml", spec.id));
        std::fs::write(&config, spec.config_text(&admin, &api))?;
        let log = spec.dir.join(format!("node{}.log", spec.id));
        let mut cmd = match &spec.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.arg("run")
            .arg("-c")
            .arg(&config)
            .env(
                "SHOAL_LOG",
                format!(
                    "{},shoal_node=info",
                    std::env::var("SHOAL_LOG").unwrap_or_else(|_| "info".into())
                ),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?);
        let child = cmd.spawn()?;
        let mut p = NodeProcess {
            child,
            id: spec.id,
            socket: spec.socket_path(),
            config,
            admin,
            api,
            log,
        };
        // Ready once it logs that it serves (the socket file alone may be
        // a leftover of a killed node); give up early if it exits.
        let ready = wait_until(Duration::from_secs(10), || {
            let serving =
                std::fs::read_to_string(&p.log).is_ok_and(|l| l.contains("shoal node serving"));
            serving || !p.alive()
        }) && p.alive();
        if !ready {
            let log = std::fs::read_to_string(&p.log).unwrap_or_default();
            return Err(std::io::Error::other(format!(
                "node {} did not start: {log}",
                spec.id
            )));
        }
        Ok(p)
    }

    /// A client bound to a path next to the node's socket, so replies
    /// reach it even across network namespaces.
    pub fn client(&self) -> Result<LocalClient, ClientError> {
        static N: AtomicU32 = AtomicU32::new(0);
        let own = self.socket.with_file_name(format!(
            "client-{}-{}-{}.sock",
            self.id,
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        LocalClient::connect_from(&self.socket, &own)
    }

    /// The node's Prometheus page.
    pub fn metrics(&self) -> std::io::Result<String> {
        http_get(&self.admin, "/metrics")
    }

    /// One sample from the metrics page, e.g. `shoal_records_applied_total`
    /// or `shoal_datagrams_rejected_total{reason="bad_mac"}`.
    pub fn metric(&self, sample: &str) -> Option<f64> {
        let page = self.metrics().ok()?;
        page.lines().find_map(|l| {
            l.strip_prefix(sample)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_none()
    }

    /// `kill -9`: no chance to save what it holds.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops it with SIGTERM and waits (then SIGKILL after 5 s).
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        if wait_until(Duration::from_secs(5), || !self.alive()) {
            return self.child.wait().ok();
        }
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` every 5 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
