//! A real local pair of store masters, driven through
//! `tarantool/scripts/pair.sh` (which starts each through
//! `scripts/instance.sh`) so tests run exactly what an operator runs:
//! a cluster state store ([`Pair::start`]) or a verdict-store pair, a the
//! instance of cluster 1 and b that of cluster 2 ([`Pair::start_verdict`]).
//! Stopped (SIGTERM, both) when dropped.
//!
//! Which Tarantool runs: [`TARANTOOL_ENV`] (`SHOAL_TARANTOOL`), a path to
//! the binary, or `tarantool` on `PATH` (Debian's 2.6) when unset. The
//! scripts read the same variable, so a test, a bench and `pair.sh` started
//! by hand all run the same version ([`tarantool_bin`], [`tarantool_version`]).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Which master of the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Master {
    A,
    B,
}

impl Master {
    fn arg(self) -> &'static str {
        match self {
            Master::A => "a",
            Master::B => "b",
        }
    }
}

/// A running pair in `dir` (see `pair.sh` for the layout).
#[derive(Debug)]
pub struct Pair {
    pub dir: PathBuf,
    /// `host:port` of master a and b.
    pub a: String,
    pub b: String,
    /// Password of the `shoal` user.
    pub password: String,
    /// Cluster ids of a and b in a verdict-store pair (`None` in a
    /// cluster state store).
    clusters: Option<[u32; 2]>,
    /// Extra environment for the instances (e.g. the expirer module).
    env: Vec<(String, String)>,
    /// Whether dropping this handle stops the pair (not for
    /// [`Pair::attach`]).
    owned: bool,
}

/// The environment variable that chooses the Tarantool binary (a path).
pub const TARANTOOL_ENV: &str = "SHOAL_TARANTOOL";

/// The Tarantool binary tests, benches and the scripts run: the path in
/// `SHOAL_TARANTOOL`, or `tarantool` (found on `PATH`) when it is unset.
pub fn tarantool_bin() -> PathBuf {
    match std::env::var_os(TARANTOOL_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from("tarantool"),
    }
}

/// A Tarantool version, `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl Version {
    /// From `tarantool --version`'s first line (`Tarantool 2.11.5-0-g12a9ceb87`).
    pub fn parse(line: &str) -> Option<Version> {
        let v = line.trim().strip_prefix("Tarantool ")?;
        let mut it = v.split(|c: char| !c.is_ascii_digit()).map(str::parse);
        Some(Version {
            major: it.next()?.ok()?,
            minor: it.next()?.ok()?,
            patch: it.next()?.ok()?,
        })
    }
}

/// The version of [`tarantool_bin`], from `--version`.
pub fn tarantool_version() -> std::io::Result<Version> {
    let bin = tarantool_bin();
    let out = Command::new(&bin).arg("--version").output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().unwrap_or_default();
    Version::parse(first).ok_or_else(|| {
        std::io::Error::other(format!(
            "{} --version printed {first:?}, not a Tarantool version",
            bin.display()
        ))
    })
}

/// The `module.h` that belongs to [`tarantool_bin`]: `SHOAL_TARANTOOL_INCLUDE`
/// (a directory holding `module.h`) when set, else `<prefix>/include/tarantool`
/// for a binary at `<prefix>/bin/tarantool` (`/usr/include/tarantool` for
/// Debian's), found through `PATH` when the binary is not a path.
pub fn tarantool_include_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("SHOAL_TARANTOOL_INCLUDE").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d));
    }
    let bin = tarantool_bin();
    let bin = if bin.components().count() > 1 {
        bin
    } else {
        std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .map(|d| d.join(&bin))
            .find(|p| p.is_file())?
    };
    let bin = std::fs::canonicalize(bin).ok()?;
    let dir = bin.parent()?.parent()?.join("include/tarantool");
    dir.join("module.h").is_file().then_some(dir)
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pair.sh")
}

/// `tarantool/scripts/instance.sh`, which starts one instance in a
/// directory (see its header): for harnesses that run each cluster's
/// store elsewhere, e.g. in a network namespace.
pub fn instance_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/instance.sh")
}

impl Pair {
    /// Starts a fresh pair in `dir` (wiped first) on free ports.
    pub fn start(dir: &Path) -> std::io::Result<Pair> {
        Pair::start_with(dir, &[])
    }

    /// Starts a fresh verdict-store pair in `dir` (wiped first):
    /// `SHOAL_TT_SCHEMA=verdict`, a is cluster 1 and b cluster 2.
    pub fn start_verdict(dir: &Path) -> std::io::Result<Pair> {
        Pair::start_verdict_with(dir, &[])
    }

    /// As [`Pair::start_verdict`], with extra environment for the
    /// instances (`SHOAL_TT_XQ_RETAIN_S`, `SHOAL_TT_CLUSTER_A`, ...).
    pub fn start_verdict_with(dir: &Path, env: &[(&str, &str)]) -> std::io::Result<Pair> {
        let mut all = vec![("SHOAL_TT_SCHEMA", "verdict")];
        all.extend_from_slice(env);
        Pair::start_with(dir, &all)
    }

    /// As [`Pair::start`], with extra environment for the instances
    /// (`SHOAL_TT_EXPIRER`, `LUA_CPATH`, `SHOAL_TT_MEMTX_MB`, ...).
    pub fn start_with(dir: &Path, env: &[(&str, &str)]) -> std::io::Result<Pair> {
        // A previous run's instances may still hold the ports.
        if dir.join("env").exists() {
            let _ = Command::new("bash")
                .arg(script())
                .arg("kill")
                .arg(dir)
                .arg("a")
                .status();
            let _ = Command::new("bash")
                .arg(script())
                .arg("kill")
                .arg(dir)
                .arg("b")
                .status();
        }
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
        let mut pair = Pair {
            dir: dir.to_path_buf(),
            a: String::new(),
            b: String::new(),
            password: String::new(),
            clusters: None,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            owned: true,
        };
        pair.run(&["start"])?;
        pair.read_env()?;
        Ok(pair)
    }

    /// A handle on a pair that runs already in `dir` (started by another
    /// [`Pair`] or by `pair.sh`), from its `DIR/env`. It stops, kills and
    /// restarts masters like the owner's handle (restarts without the
    /// owner's extra environment; the schema and cluster ids are in
    /// `DIR/env`), but dropping it leaves the pair running.
    pub fn attach(dir: &Path) -> std::io::Result<Pair> {
        let mut pair = Pair {
            dir: dir.to_path_buf(),
            a: String::new(),
            b: String::new(),
            password: String::new(),
            clusters: None,
            env: Vec::new(),
            owned: false,
        };
        pair.read_env()?;
        Ok(pair)
    }

    fn read_env(&mut self) -> std::io::Result<()> {
        let text = std::fs::read_to_string(self.dir.join("env"))?;
        let (mut ca, mut cb) = (None, None);
        for line in text.lines() {
            match line.split_once('=') {
                Some(("SHOAL_TT_A", v)) => self.a = v.to_string(),
                Some(("SHOAL_TT_B", v)) => self.b = v.to_string(),
                Some(("SHOAL_TT_PASSWORD", v)) => self.password = v.to_string(),
                Some(("SHOAL_TT_CLUSTER_A", v)) => ca = v.parse::<u32>().ok(),
                Some(("SHOAL_TT_CLUSTER_B", v)) => cb = v.parse::<u32>().ok(),
                _ => {}
            }
        }
        self.clusters = ca.zip(cb).map(|(a, b)| [a, b]);
        if self.a.is_empty() || self.b.is_empty() || self.password.is_empty() {
            return Err(std::io::Error::other(format!(
                "{}/env is incomplete",
                self.dir.display()
            )));
        }
        Ok(())
    }

    fn run(&self, args: &[&str]) -> std::io::Result<()> {
        let (cmd, rest) = args.split_first().expect("a command");
        let out = Command::new("bash")
            .arg(script())
            .arg(cmd)
            .arg(&self.dir)
            .args(rest)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()?;
        if out.status.success() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!(
                "pair.sh {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            )))
        }
    }

    /// The address of one master.
    pub fn addr(&self, m: Master) -> &str {
        match m {
            Master::A => &self.a,
            Master::B => &self.b,
        }
    }

    /// The cluster id of one instance of a verdict-store pair; `None` for
    /// a cluster state store.
    pub fn cluster(&self, m: Master) -> Option<u32> {
        self.clusters.map(|[a, b]| match m {
            Master::A => a,
            Master::B => b,
        })
    }

    /// Stops one master gracefully.
    pub fn stop(&self, m: Master) -> std::io::Result<()> {
        self.run(&["stop", m.arg()])
    }

    /// `kill -9` one master.
    pub fn kill(&self, m: Master) -> std::io::Result<()> {
        self.run(&["kill", m.arg()])
    }

    /// Starts one master again (after stop or kill); it recovers from its
    /// own files and reconnects to the other.
    pub fn restart(&self, m: Master) -> std::io::Result<()> {
        self.run(&["start", m.arg()])
    }

    /// Runs one line of Lua on a master's admin console and returns the
    /// YAML the console answers (`---\n- value\n...`).
    pub fn console(&self, m: Master, lua: &str) -> std::io::Result<String> {
        console(&self.dir.join(m.arg()).join("console.sock"), lua)
    }

    /// The master's own log, for failure messages.
    pub fn log(&self, m: Master) -> String {
        std::fs::read_to_string(self.dir.join(m.arg()).join("tarantool.log")).unwrap_or_default()
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        if self.owned {
            let _ = self.run(&["stop"]);
        }
    }
}

/// Runs one line of Lua on the admin console listening at `path` (any
/// instance started by `instance.sh`: `DIR/console.sock`) and returns the
/// YAML it answers (`---\n- value\n...`).
pub fn console(path: &Path, lua: &str) -> std::io::Result<String> {
    use std::io::{BufRead, BufReader, Write};
    let stream = std::os::unix::net::UnixStream::connect(path)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(600)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    // The greeting: two lines.
    let mut line = String::new();
    for _ in 0..2 {
        line.clear();
        reader.read_line(&mut line)?;
    }
    let mut w = stream;
    w.write_all(lua.replace('\n', " ").as_bytes())?;
    w.write_all(b"\n")?;
    let mut out = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::other(format!("console closed: {out}")));
        }
        if line == "...\n" {
            return Ok(out);
        }
        out.push_str(&line);
    }
}

/// A pair in a temporary directory of its own: stopped, and the directory
/// removed, when dropped (tests).
pub struct TempPair(Option<Pair>);

impl TempPair {
    pub fn new(pair: Pair) -> TempPair {
        TempPair(Some(pair))
    }
}

impl std::ops::Deref for TempPair {
    type Target = Pair;
    fn deref(&self) -> &Pair {
        // Some until dropped.
        self.0.as_ref().expect("pair")
    }
}

impl Drop for TempPair {
    fn drop(&mut self) {
        if let Some(pair) = self.0.take() {
            let dir = pair.dir.clone();
            drop(pair);
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Version;

    #[test]
    fn version_lines() {
        let v = |a, b, c| {
            Some(Version {
                major: a,
                minor: b,
                patch: c,
            })
        };
        assert_eq!(Version::parse("Tarantool 2.6.0-0-g47aa4e01e\n"), v(2, 6, 0));
        assert_eq!(Version::parse("Tarantool 2.11.5-0-g12a9ceb87"), v(2, 11, 5));
        assert_eq!(Version::parse("Tarantool 3.3.0-0-g5fc82b85d"), v(3, 3, 0));
        assert_eq!(Version::parse("Tarantool Enterprise 3.3.0"), None);
        assert_eq!(Version::parse("Tarantool 3"), None);
        assert_eq!(Version::parse(""), None);
        assert!(v(2, 11, 5) > v(2, 6, 0) && v(3, 3, 0) > v(2, 11, 5));
    }
}
