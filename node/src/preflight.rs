//! What `shoal run` checks outside the config text before it opens
//! anything, and what `shoal check` checks the same way: the secrets named
//! by file are read, the local socket's path is inspected (its directory
//! and whatever is already there) and the socket's group is resolved.
//! [`Config::preflight`] is the one function both commands call, so a
//! config `check` passes is one `run` accepts; [`bind_local`] then binds
//! the socket on what it found, with its mode and group.

use std::ffi::CString;
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use tracing::info;

use crate::config::{Config, ConfigError, GroupSpec, LocalSection, Secret};

/// What the preflight found; secrets stay redacted when it is printed.
#[derive(Debug)]
pub struct Preflight {
    pub socket: SocketPath,
    /// The gid `[local] group` resolved to.
    pub socket_gid: Option<u32>,
    pub store_password: Option<Secret>,
    pub verdicts_password: Option<Secret>,
    /// Bearer tokens the API accepts (inline and from the file).
    pub api_tokens: Vec<Secret>,
}

/// The state of the local socket's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketPath {
    /// Nothing there; the directory exists.
    Free,
    /// Nothing there; this directory (and its missing parents) is created
    /// at bind, because `[local] create_dir = true`.
    CreateDir(PathBuf),
    /// A socket is there: replaced at bind if nobody listens on it, else
    /// `run` refuses to start (see [`probe`]).
    Socket,
}

/// Whether a sidecar serves an existing socket.
#[derive(Debug)]
pub enum Probe {
    /// A connect was accepted: someone serves it.
    Live,
    /// Connection refused: a socket left by a process that is gone.
    Stale,
    /// Anything else (e.g. no permission): it cannot be told, so the
    /// socket is left alone.
    Unknown(std::io::Error),
}

/// Connects to the socket at `path` to learn whether anybody listens.
pub fn probe(path: &Path) -> Probe {
    let sock = match UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => return Probe::Unknown(e),
    };
    match sock.connect(path) {
        Ok(()) => Probe::Live,
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => Probe::Stale,
        Err(e) => Probe::Unknown(e),
    }
}

fn socket_err(message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: "local.socket".to_string(),
        message: message.into(),
    }
}

impl Config {
    /// Everything `run` needs beyond the text: reads the password and
    /// token files, checks the session-token keys, inspects the socket's
    /// path and resolves its group. Changes nothing on disk.
    pub fn preflight(&self) -> Result<Preflight, ConfigError> {
        let store_password = match &self.store {
            Some(st) => Some(Secret::new(st.password()?)),
            None => None,
        };
        let (verdicts_password, api_tokens) = match &self.verdicts {
            Some(v) => {
                let password = Secret::new(v.password()?);
                let tokens = v.api_tokens()?.into_iter().map(Secret::new).collect();
                v.token_keys()?;
                (Some(password), tokens)
            }
            None => (None, Vec::new()),
        };
        let socket = inspect_socket_path(&self.local)?;
        // A corrupt incarnation file stops `run`: `check` says so too.
        crate::incarnation::read(&self.incarnation_file()).map_err(|e| ConfigError::Invalid {
            key: "node.incarnation_file".to_string(),
            message: e.to_string(),
        })?;
        Ok(Preflight {
            socket,
            socket_gid: self.local.group.as_ref().map(resolve_group).transpose()?,
            store_password,
            verdicts_password,
            api_tokens,
        })
    }
}

/// Looks at the socket's path without changing anything: its directory
/// must exist (or be creatable with `create_dir`), and whatever is at the
/// path must be a socket. Any other file is refused, never deleted.
pub(crate) fn inspect_socket_path(local: &LocalSection) -> Result<SocketPath, ConfigError> {
    let path = &local.socket;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // The nearest ancestor that exists must be a directory; the ones below
    // it are missing.
    let mut missing = false;
    for a in dir.ancestors().filter(|a| !a.as_os_str().is_empty()) {
        match std::fs::metadata(a) {
            Ok(m) if m.is_dir() => break,
            Ok(_) => {
                return Err(socket_err(format!(
                    "{} is not a directory (socket path {})",
                    a.display(),
                    path.display()
                )))
            }
            // ENOTDIR: a component above is a file; the loop reaches it.
            Err(e)
                if e.kind() == ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                missing = true
            }
            Err(e) => return Err(socket_err(format!("cannot inspect {}: {e}", a.display()))),
        }
    }
    if missing {
        if !local.create_dir {
            return Err(socket_err(format!(
                "directory {} does not exist: create it, or set `local.create_dir = true`",
                dir.display()
            )));
        }
        return Ok(SocketPath::CreateDir(dir.to_path_buf()));
    }
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(SocketPath::Free),
        Err(e) => Err(socket_err(format!(
            "cannot inspect {}: {e}",
            path.display()
        ))),
        Ok(m) if m.file_type().is_socket() => Ok(SocketPath::Socket),
        Ok(m) => {
            let ft = m.file_type();
            let what = if ft.is_symlink() {
                "a symbolic link"
            } else if ft.is_dir() {
                "a directory"
            } else if ft.is_file() {
                "a regular file"
            } else {
                "not a socket"
            };
            Err(socket_err(format!(
                "{} exists and is {what}: only a stale socket is replaced; remove it or choose another path",
                path.display()
            )))
        }
    }
}

/// The gid of `[local] group`: a number is taken as it is; a name is
/// looked up in the system's group database (`getgrnam_r`, so NSS too),
/// and a name that is all digits and unknown is taken as a gid, as
/// chown(1) does.
pub(crate) fn resolve_group(g: &GroupSpec) -> Result<u32, ConfigError> {
    let err = |message: String| ConfigError::Invalid {
        key: "local.group".to_string(),
        message,
    };
    match g {
        GroupSpec::Id(id) => Ok(*id),
        GroupSpec::Name(name) => match group_by_name(name) {
            Ok(Some(gid)) => Ok(gid),
            Ok(None) => name
                .parse::<u32>()
                .map_err(|_| err(format!("no group named `{name}`"))),
            Err(e) => Err(err(format!("looking up group `{name}`: {e}"))),
        },
    }
}

/// `getgrnam_r`, growing its buffer on ERANGE up to 1 MiB.
fn group_by_name(name: &str) -> std::io::Result<Option<u32>> {
    let cname = CString::new(name).map_err(|_| std::io::Error::from(ErrorKind::InvalidInput))?;
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: `group` is plain old data that getgrnam_r fills in.
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::group = std::ptr::null_mut();
        // SAFETY: valid NUL-terminated name, a writable buffer of the
        // given length, and out-pointers that live across the call.
        let rc = unsafe {
            libc::getgrnam_r(
                cname.as_ptr(),
                &mut grp,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut found,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        return Ok((!found.is_null()).then_some(grp.gr_gid));
    }
}

/// Why the local socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("another sidecar is already serving {0}")]
    AlreadyRunning(PathBuf),
    #[error("a socket exists at {path} and cannot be probed; it is left alone")]
    Unprobed {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("local socket {path}: {what}")]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
}

/// Binds the filter's socket: re-inspects the path (it may have changed
/// since the preflight), replaces only a stale socket, creates the
/// directory only with `create_dir`, then applies `mode` and `group`.
pub(crate) fn bind_local(
    local: &LocalSection,
    gid: Option<u32>,
) -> Result<UnixDatagram, BindError> {
    let path = &local.socket;
    let io = |what: &'static str| {
        move |source| BindError::Io {
            path: path.to_path_buf(),
            what,
            source,
        }
    };
    match inspect_socket_path(local)? {
        SocketPath::Free => {}
        SocketPath::CreateDir(dir) => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&dir)
                .map_err(io("creating its directory"))?;
            info!(dir = %dir.display(), "created the local socket's directory (local.create_dir)");
        }
        SocketPath::Socket => match probe(path) {
            Probe::Live => return Err(BindError::AlreadyRunning(path.to_path_buf())),
            Probe::Stale => std::fs::remove_file(path).map_err(io("removing the stale socket"))?,
            Probe::Unknown(source) => {
                return Err(BindError::Unprobed {
                    path: path.to_path_buf(),
                    source,
                })
            }
        },
    }
    let mode = local.mode_bits();
    let sock = match mode {
        // Bound under a umask that leaves only the owner in, so nobody
        // connects in the moment before the chmod. The umask is the
        // process's: this runs at start, before any other thread.
        Some(_) => {
            // SAFETY: umask cannot fail.
            let old = unsafe { libc::umask(0o177) };
            let bound = UnixDatagram::bind(path);
            // SAFETY: as above.
            unsafe { libc::umask(old) };
            bound
        }
        None => UnixDatagram::bind(path),
    }
    .map_err(io("bind"))?;
    if let Some(gid) = gid {
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(io("setting its group"))?;
    }
    if let Some(m) = mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(m))
            .map_err(io("setting its mode"))?;
    }
    Ok(sock)
}

/// Identity (device, inode) of the file at `path`, not following links.
pub(crate) fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// Removes the socket this process bound at stop, and only that: if the
/// path now holds another file (replaced while running), it stays.
pub(crate) fn remove_if_same(path: &Path, bound: Option<(u64, u64)>) {
    if bound.is_some() && file_id(path) == bound {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(socket: &Path, create_dir: bool) -> LocalSection {
        LocalSection {
            socket: socket.to_path_buf(),
            create_dir,
            mode: None,
            group: None,
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("shoal-preflight-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("scratch dir");
        d
    }

    #[test]
    fn a_path_under_a_regular_file_is_not_a_directory() {
        let d = scratch("file");
        let file = d.join("plain");
        std::fs::write(&file, b"x").expect("write");
        for create_dir in [false, true] {
            for sock in [file.join("s.sock"), file.join("sub/s.sock")] {
                let e = inspect_socket_path(&local(&sock, create_dir))
                    .expect_err("refused")
                    .to_string();
                assert!(e.contains("is not a directory"), "{e}");
                assert!(e.contains(&file.display().to_string()), "{e}");
            }
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_missing_directory_is_created_only_when_asked() {
        let d = scratch("mkdir");
        let sock = d.join("a/b/s.sock");
        let e = inspect_socket_path(&local(&sock, false))
            .expect_err("refused")
            .to_string();
        assert!(e.contains("create_dir"), "{e}");
        assert!(!d.join("a").exists(), "inspection changed nothing");
        assert_eq!(
            inspect_socket_path(&local(&sock, true)).expect("ok"),
            SocketPath::CreateDir(d.join("a/b"))
        );
        let s = bind_local(&local(&sock, true), None).expect("bound");
        drop(s);
        assert!(d.join("a/b").is_dir());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn only_a_stale_socket_is_replaced() {
        let d = scratch("stale");
        let sock = d.join("s.sock");
        std::fs::write(&sock, b"precious").expect("write");
        let e = bind_local(&local(&sock, false), None)
            .expect_err("refused")
            .to_string();
        assert!(e.contains("regular file"), "{e}");
        assert_eq!(std::fs::read(&sock).expect("still there"), b"precious");
        std::fs::remove_file(&sock).expect("rm");

        let live = bind_local(&local(&sock, false), None).expect("bound");
        assert!(matches!(probe(&sock), Probe::Live));
        let e = bind_local(&local(&sock, false), None).expect_err("in use");
        assert!(matches!(e, BindError::AlreadyRunning(_)), "{e}");
        drop(live);
        assert!(matches!(probe(&sock), Probe::Stale));
        bind_local(&local(&sock, false), None).expect("stale socket replaced");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn groups_resolve_by_name_and_number() {
        assert_eq!(
            resolve_group(&GroupSpec::Name("root".into())).expect("root"),
            0
        );
        assert_eq!(resolve_group(&GroupSpec::Id(4242)).expect("id"), 4242);
        assert_eq!(
            resolve_group(&GroupSpec::Name("4243".into())).expect("digits"),
            4243
        );
        let e = resolve_group(&GroupSpec::Name("no-such-group-shoal".into()))
            .expect_err("unknown")
            .to_string();
        assert!(
            e.contains("local.group") && e.contains("no-such-group-shoal"),
            "{e}"
        );
    }

    #[test]
    fn stop_removes_only_the_socket_it_bound() {
        let d = scratch("stop");
        let sock = d.join("s.sock");
        let bound = bind_local(&local(&sock, false), None).expect("bound");
        let id = file_id(&sock);
        assert!(id.is_some());
        // Replaced while running: left alone.
        std::fs::remove_file(&sock).expect("rm");
        std::fs::write(&sock, b"someone else's").expect("write");
        remove_if_same(&sock, id);
        assert_eq!(std::fs::read(&sock).expect("kept"), b"someone else's");
        drop(bound);
        std::fs::remove_file(&sock).expect("rm");
        let _bound = bind_local(&local(&sock, false), None).expect("bound");
        remove_if_same(&sock, file_id(&sock));
        assert!(!sock.exists(), "its own socket is removed");
        let _ = std::fs::remove_dir_all(&d);
    }
}
