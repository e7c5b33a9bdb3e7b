//! The operator's side of the binary, with the real `shoal` on temp
//! configs: `check` refuses what `run` refuses (secret files, the socket's
//! path, bounds), prints no secret, errors print their cause once, the
//! local socket gets its configured mode and group and never replaces a
//! file that is not a socket, and a node without `[auth]` says so.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use shoal_node::testkit::{unique_group, wait_until, NodeSpec};
use shoal_node::{http_get, LocalClient};
use shoal_wire::Code;

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_shoal");

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("shoal-cfg-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// Runs `shoal <cmd> -c <config>`; a `run` that is still up after 10 s is
/// killed and reported as success (it was meant to refuse).
fn shoal(cmd: &str, config: &Path) -> (bool, String, String) {
    let mut child = Command::new(BIN)
        .arg(cmd)
        .arg("-c")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn shoal");
    let end = Instant::now() + Duration::from_secs(10);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() >= end {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out: Output = child.wait_with_output().expect("output");
    let ok = out.status.success() || out.status.code().is_none();
    (
        ok,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A loopback config in `dir` without `[auth]`, whose `[local]` section
/// gets `local_extra`, then `extra` at the end.
fn config(dir: &Path, local_extra: &str, extra: &str) -> (String, PathBuf) {
    let (group, port) = unique_group();
    let mut spec = NodeSpec::loopback(1, group, port, dir);
    spec.secret = None;
    spec.extra = extra.to_string();
    let socket = spec.socket_path();
    let http = format!(
        "127.0.0.1:{}",
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port()
    );
    let line = format!("socket = \"{}\"\n", socket.display());
    let text = spec
        .config_text(&http, "127.0.0.1:0")
        .replace(&line, &format!("{line}{local_extra}"));
    assert!(text.contains(local_extra), "[local] extended");
    (text, socket)
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

#[test]
fn check_refuses_what_run_refuses() {
    let dir = tempdir("refuse");
    let plain = write(&dir, "plain-file", "not a directory");
    let precious = dir.join("node1.sock");
    let verdicts = "[verdicts]\nstore = \"127.0.0.1:9\"\npassword = \"verdict-pw\"\ntoken_key_id = 1\ntoken_secret = \"0123456789abcdef\"\n";
    let store = "[store]\nmasters = [\"127.0.0.1:9\"]\n";
    let cases: Vec<(&str, String, String, &str)> = vec![
        (
            "missing store.password_file",
            String::new(),
            format!(
                "{store}password_file = \"{}\"\n",
                dir.join("no-such-pw").display()
            ),
            "store.password_file",
        ),
        (
            "empty store.password_file",
            String::new(),
            format!(
                "{store}password_file = \"{}\"\n",
                write(&dir, "empty-pw", "\n").display()
            ),
            "store.password_file",
        ),
        (
            "missing verdicts.api_tokens_file",
            String::new(),
            format!(
                "{verdicts}api_tokens_file = \"{}\"\n",
                dir.join("no-such-tokens").display()
            ),
            "verdicts.api_tokens_file",
        ),
        (
            "socket under a regular file",
            String::new(),
            String::new(),
            "is not a directory",
        ),
        (
            "socket dir missing without create_dir",
            String::new(),
            String::new(),
            "local.create_dir",
        ),
        (
            "session_capacity 10^15",
            String::new(),
            "[state]\nsession_capacity = 1000000000000000\n".to_string(),
            "state.session_capacity",
        ),
        (
            "max_resources 10^15",
            String::new(),
            "[state]\nmax_resources = 1000000000000000\n".to_string(),
            "state.max_resources",
        ),
        (
            "unknown group",
            "group = \"no-such-group-shoal\"\n".to_string(),
            String::new(),
            "local.group",
        ),
        (
            "mode not octal",
            "mode = \"0999\"\n".to_string(),
            String::new(),
            "local.mode",
        ),
        (
            "regular file at the socket path",
            String::new(),
            String::new(),
            "is a regular file",
        ),
        (
            "corrupt incarnation file",
            String::new(),
            String::new(),
            "node.incarnation_file",
        ),
    ];
    for (what, local_extra, extra, needle) in cases {
        let (mut text, socket) = config(&dir, &local_extra, &extra);
        let sock = socket.display().to_string();
        if what == "socket under a regular file" {
            text = text.replace(&sock, &plain.join("sub/s.sock").display().to_string());
        }
        if what == "socket dir missing without create_dir" {
            text = text.replace(&sock, &dir.join("nodir/s.sock").display().to_string());
        }
        if what == "regular file at the socket path" {
            std::fs::write(&precious, b"precious").expect("write");
        }
        // The default place: next to the socket, named by cluster and id.
        let incarnation = dir.join("shoal-1-1.incarnation");
        if what == "corrupt incarnation file" {
            std::fs::write(&incarnation, b"garbage\n").expect("write");
        }
        let path = write(&dir, "bad.toml", &text);
        for cmd in ["check", "run"] {
            let (ok, _, err) = shoal(cmd, &path);
            assert!(!ok, "`{cmd}` refuses {what}: {err}");
            assert!(
                err.contains(needle),
                "`{cmd}` on {what} says `{needle}`: {err}"
            );
            assert!(!err.contains("File exists"), "{err}");
        }
        if what == "regular file at the socket path" {
            assert_eq!(
                std::fs::read(&precious).expect("the file is still there"),
                b"precious"
            );
            std::fs::remove_file(&precious).expect("rm");
        }
        if what == "corrupt incarnation file" {
            assert_eq!(std::fs::read(&incarnation).expect("kept"), b"garbage\n");
            std::fs::remove_file(&incarnation).expect("rm");
        }
    }
    assert!(!dir.join("nodir").exists(), "no directory made");
    assert!(plain.is_file());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_prints_no_secret() {
    let dir = tempdir("redact");
    let secrets = [
        "cluster-key-0123456789",
        "old-cluster-key-0123456789",
        "store-password-inline",
        "verdict-password-in-file",
        "api-token-inline-0123456789",
        "api-token-in-file-0123456789",
        "token-secret-0123456789",
        "old-token-secret-0123456789",
    ];
    let pw = write(&dir, "verdict.pw", &format!("{}\n", secrets[3]));
    let tokens = write(&dir, "api.tokens", &format!("{}\n", secrets[5]));
    let extra = format!(
        "[auth]\nkey_id = 2\nsecret = \"{}\"\nprevious_key_id = 1\nprevious_secret = \"{}\"\n\
         [store]\nmasters = [\"127.0.0.1:9\"]\npassword = \"{}\"\n\
         [verdicts]\nstore = \"127.0.0.1:9\"\npassword_file = \"{}\"\napi_tokens = [\"{}\"]\napi_tokens_file = \"{}\"\n\
         token_key_id = 2\ntoken_secret = \"{}\"\nprevious_token_key_id = 1\nprevious_token_secret = \"{}\"\n",
        secrets[0],
        secrets[1],
        secrets[2],
        pw.display(),
        secrets[4],
        tokens.display(),
        secrets[6],
        secrets[7]
    );
    let (text, _) = config(&dir, "", &extra);
    let path = write(&dir, "secrets.toml", &text);
    let (ok, out, err) = shoal("check", &path);
    assert!(ok, "valid: {err}");
    for s in secrets {
        assert!(!out.contains(s), "`{s}` printed:\n{out}");
        assert!(!err.contains(s), "`{s}` printed:\n{err}");
    }
    // The redacted forms are there, with their lengths: the check did read
    // the files (two API tokens, the verdict password from its file).
    // The secrets read from files (lengths 24 and 28, no other secret has
    // them) show only in the preflight.
    for s in [secrets[3], secrets[5]] {
        let redacted = format!("<redacted {} bytes>", s.len());
        assert_eq!(out.matches(&redacted).count(), 1, "{redacted}: {out}");
    }
    assert!(
        out.contains("<redacted 22 bytes>"),
        "the cluster key: {out}"
    );
    assert!(
        !err.contains("no [auth]"),
        "signed cluster: no warning: {err}"
    );
    // --quiet (the unit's ExecStartPre): the verdict only.
    let out = Command::new(BIN)
        .args(["check", "--quiet", "-c"])
        .arg(&path)
        .output()
        .expect("run shoal check --quiet");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "config ok\n");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn io_errors_name_their_cause_once() {
    let dir = tempdir("once");
    let (text, socket) = config(&dir, "", "");
    let path = write(&dir, "node.toml", &text);
    // A socket nobody serves: connect is refused.
    drop(std::os::unix::net::UnixDatagram::bind(&socket).expect("bind"));
    let out = Command::new(BIN)
        .args(["send", "-c"])
        .arg(&path)
        .args(["load", "1", "1"])
        .output()
        .expect("runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.matches("Connection refused").count(), 1, "{err}");
    let (ok, _, err) = shoal("check", &dir.join("missing.toml"));
    assert!(!ok);
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A `shoal run` of `config`, killed on drop.
struct Running {
    child: std::process::Child,
    log: PathBuf,
}

impl Running {
    fn start(config: &Path, log: PathBuf) -> Running {
        let child = Command::new(BIN)
            .arg("run")
            .arg("-c")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn");
        let mut r = Running { child, log };
        let up = wait_until(Duration::from_secs(10), || {
            r.log_text().contains("shoal node serving")
                || r.child.try_wait().ok().flatten().is_some()
        });
        assert!(
            up && r.child.try_wait().ok().flatten().is_none(),
            "node started: {}",
            r.log_text()
        );
        r
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_of(text: &str) -> String {
    let line = text
        .lines()
        .find(|l| l.starts_with("admin = "))
        .expect("admin line");
    line.trim_start_matches("admin = ")
        .trim_matches('"')
        .to_string()
}

fn metric(http: &str, name: &str) -> Option<f64> {
    let page = http_get(http, "/metrics").ok()?;
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A group the socket can be given that differs from the process's own
/// when we are root (`nogroup`), else our own group: (name, gid).
fn test_group() -> (String, u32) {
    let etc = std::fs::read_to_string("/etc/group").unwrap_or_default();
    let gid_of = |name: &str| {
        etc.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 3 && f[0] == name).then(|| f[2].parse::<u32>().ok())?
        })
    };
    // SAFETY: geteuid/getegid have no failure mode.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if euid == 0 {
        if let Some(g) = gid_of("nogroup") {
            return ("nogroup".to_string(), g);
        }
    }
    let name = etc
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 3 && f[2] == egid.to_string()).then(|| f[0].to_string())
        })
        .unwrap_or_else(|| egid.to_string());
    (name, egid)
}

#[test]
fn socket_gets_its_mode_and_group_and_an_unsigned_node_says_so() {
    let dir = tempdir("perm");
    let (gname, gid) = test_group();
    let (text, socket) = config(&dir, &format!("mode = \"0660\"\ngroup = \"{gname}\"\n"), "");
    let path = write(&dir, "node.toml", &text);
    let http = http_of(&text);
    let node = Running::start(&path, dir.join("node.log"));
    let m = std::fs::symlink_metadata(&socket).expect("socket exists");
    assert!(m.file_type().is_socket());
    assert_eq!(m.mode() & 0o7777, 0o660, "mode {:o}", m.mode() & 0o7777);
    assert_eq!(m.gid(), gid, "group {gname}");
    // Without [auth]: a warning at start and the gauge at 0.
    assert!(node.log_text().contains("no [auth]"), "{}", node.log_text());
    assert_eq!(metric(&http, "shoal_auth_enabled"), Some(0.0));
    // `check` on the running node's config passes and says the socket is
    // in use; it warns about the missing [auth] too.
    let (ok, out, err) = shoal("check", &path);
    assert!(ok, "{err}");
    assert!(out.contains("served by a running sidecar"), "{out}");
    assert!(err.contains("no [auth]"), "{err}");

    // A filter running as another user of the group can use the socket.
    // SAFETY: geteuid has no failure mode.
    let root = unsafe { libc::geteuid() } == 0;
    let setpriv = Path::new("/usr/bin/setpriv").exists();
    if root && setpriv && gname == "nogroup" {
        let as_nobody = |cfg: &Path| {
            Command::new("setpriv")
                .args(["--reuid=65534", &format!("--regid={gid}"), "--clear-groups"])
                .arg(BIN)
                .args(["send", "-c"])
                .arg(cfg)
                .args(["load", "5", "77"])
                .output()
                .expect("setpriv runs")
        };
        let out = as_nobody(&path);
        assert!(
            out.status.success(),
            "nobody:nogroup sends: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut c = LocalClient::connect(&socket).expect("connect");
        assert!(wait_until(Duration::from_secs(5), || {
            c.query(Code::QUERY_LOAD, 5, Duration::from_secs(1))
                .is_ok_and(|r| r.fields[1] == 77)
        }));
        // The same user is shut out of a socket with mode 0600.
        drop(node);
        let text600 = text.replace("mode = \"0660\"", "mode = \"0600\"");
        let path600 = write(&dir, "node600.toml", &text600);
        let _node = Running::start(&path600, dir.join("node600.log"));
        let m = std::fs::symlink_metadata(&socket).expect("socket");
        assert_eq!(m.mode() & 0o7777, 0o600);
        let out = as_nobody(&path600);
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        common::skip(
            "socket_gets_its_mode_and_group_and_an_unsigned_node_says_so (access as another user)",
            "needs root, setpriv and a nogroup group",
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_signed_node_reports_auth_on() {
    let dir = tempdir("signed");
    let (text, _) = config(
        &dir,
        "",
        "[auth]\nkey_id = 1\nsecret = \"integration-test-secret\"\n",
    );
    let path = write(&dir, "node.toml", &text);
    let node = Running::start(&path, dir.join("node.log"));
    assert_eq!(metric(&http_of(&text), "shoal_auth_enabled"), Some(1.0));
    assert!(!node.log_text().contains("no [auth]"));
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn create_dir_makes_the_directory_only_at_run() {
    let dir = tempdir("mkdir");
    let (text, socket) = config(&dir, "create_dir = true\n", "");
    let nested = dir.join("run/shoal/node1.sock");
    let text = text.replace(&socket.display().to_string(), &nested.display().to_string());
    let path = write(&dir, "node.toml", &text);
    let (ok, out, err) = shoal("check", &path);
    assert!(ok, "{err}");
    assert!(out.contains("will be created"), "{out}");
    assert!(!dir.join("run").exists(), "check changes nothing");
    let _node = Running::start(&path, dir.join("node.log"));
    let m = std::fs::symlink_metadata(&nested).expect("socket");
    assert!(m.file_type().is_socket());
    let _ = std::fs::remove_dir_all(&dir);
}
