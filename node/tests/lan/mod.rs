//! A LAN of network namespaces on a bridge (`scripts/netns.sh`) for the
//! root-only tests: namespace `PREFIXk` has 10.213.SUBNET.k; dropped with
//! the test.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/netns.sh")
}

pub(crate) struct Lan {
    pub(crate) prefix: String,
    pub(crate) subnet: u8,
    n: u32,
}

impl Lan {
    /// `n` namespaces named `TAG<pid>k`; `subnet_base` keeps two tests of
    /// one run on different subnets.
    pub(crate) fn up(tag: &str, subnet_base: u8, n: u32) -> Result<Lan, String> {
        let pid = std::process::id();
        let lan = Lan {
            prefix: format!("{tag}{}", pid % 10_000),
            subnet: (pid % 200) as u8 + subnet_base,
            n,
        };
        let out = Command::new("bash")
            .arg(script())
            .args(["up", &lan.prefix, &n.to_string()])
            .env("SHOAL_NETNS_SUBNET", lan.subnet.to_string())
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            lan.down();
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(lan)
    }

    pub(crate) fn ns(&self, k: u32) -> String {
        format!("{}{k}", self.prefix)
    }

    pub(crate) fn addr(&self, k: u32) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.subnet, k as u8)
    }

    fn down(&self) {
        let _ = Command::new("bash")
            .arg(script())
            .args(["down", &self.prefix, &self.n.to_string()])
            .output();
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        self.down();
    }
}
