//! A real local pair of state-store masters, driven through
//! `tarantool/scripts/pair.sh` so tests run exactly what an operator runs.
//! Stopped (SIGTERM, both) when dropped.

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
    /// Extra environment for the instances (e.g. the expirer module).
    env: Vec<(String, String)>,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pair.sh")
}

impl Pair {
    /// Starts a fresh pair in `dir` (wiped first) on free ports.
    pub fn start(dir: &Path) -> std::io::Result<Pair> {
        Pair::start_with(dir, &[])
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
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        pair.run(&["start"])?;
        let text = std::fs::read_to_string(dir.join("env"))?;
        for line in text.lines() {
            match line.split_once('=') {
                Some(("SHOAL_TT_A", v)) => pair.a = v.to_string(),
                Some(("SHOAL_TT_B", v)) => pair.b = v.to_string(),
                Some(("SHOAL_TT_PASSWORD", v)) => pair.password = v.to_string(),
                _ => {}
            }
        }
        if pair.a.is_empty() || pair.b.is_empty() || pair.password.is_empty() {
            return Err(std::io::Error::other(format!(
                "{}/env is incomplete",
                dir.display()
            )));
        }
        Ok(pair)
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
        use std::io::{BufRead, BufReader, Write};
        let path = self.dir.join(m.arg()).join("console.sock");
        let stream = std::os::unix::net::UnixStream::connect(&path)?;
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

    /// The master's own log, for failure messages.
    pub fn log(&self, m: Master) -> String {
        std::fs::read_to_string(self.dir.join(m.arg()).join("tarantool.log")).unwrap_or_default()
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = self.run(&["stop"]);
    }
}
