//! Events in the systemd journal, over journald's native protocol
//! (<https://systemd.io/JOURNAL_NATIVE_PROTOCOL/>): one datagram of `KEY=value\n` fields
//! (`KEY\n<u64 LE length><value>\n` when the value holds a newline) to
//! `/run/systemd/journal/socket`; a payload too large for a datagram goes in a sealed memfd
//! whose descriptor is sent instead (SCM_RIGHTS), as sd_journal_sendv() does.
//!
//! Fields: `MESSAGE` (the event's body and verdict), `PRIORITY` (3, err; 4 for a victim that was
//! already exiting), `SYSLOG_IDENTIFIER=memtrace`, `MESSAGE_ID` = [`MESSAGE_ID`] (pre-OOM
//! warnings: [`WARNING_MESSAGE_ID`], PRIORITY 4), and every key
//! of the JSON event upper-cased with other characters as `_` (`k8s.pod.name` ->
//! `K8S_POD_NAME`, `memtrace.cgroup.path` -> `MEMTRACE_CGROUP_PATH`).
//!
//! No crate fitted: `systemd-journal-logger` and `tracing-journald` send log records, and
//! `libsystemd` has a fixed socket path and no way to test against a private journald.

use std::{
    io::Write as _,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::{ffi::OsStrExt as _, net::UnixDatagram},
    },
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use super::{Event, Sink, SinkError};

/// `MESSAGE_ID` of every memtrace OOM kill entry: `journalctl MESSAGE_ID=8b5f2c4e1d7a4e0f9c3b6a2d5e8f1a47`.
pub const MESSAGE_ID: &str = "8b5f2c4e1d7a4e0f9c3b6a2d5e8f1a47";
/// `MESSAGE_ID` of pre-OOM warnings (PRIORITY 4).
pub const WARNING_MESSAGE_ID: &str = "3c9d7e1f5a2b4c6d8e0f1a3b5c7d9e2f";
pub const SYSLOG_IDENTIFIER: &str = "memtrace";
/// A journald that does not read its socket must not hold the sink forever.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// A journald field name: `A-Z`, `0-9`, `_`, not starting with a digit or `_` (those are the
/// journal's trusted fields), at most 64 characters. `None` when nothing valid is left.
pub fn field_name(key: &str) -> Option<String> {
    let mut n: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    let lead = n.len()
        - n.trim_start_matches(['_', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9'])
            .len();
    n.drain(..lead);
    n.truncate(64);
    (!n.is_empty()).then_some(n)
}

/// The entry for one event, in field order.
pub fn fields(ev: &Event) -> Vec<(String, String)> {
    let prio = if ev.is_warning() { "4" } else { "3" };
    let id = if ev.kill().is_some() {
        MESSAGE_ID
    } else {
        WARNING_MESSAGE_ID
    };
    let mut out = vec![
        ("MESSAGE".to_owned(), ev.message()),
        ("PRIORITY".into(), prio.into()),
        ("SYSLOG_IDENTIFIER".into(), SYSLOG_IDENTIFIER.into()),
        ("MESSAGE_ID".into(), id.into()),
    ];
    if let Some(obj) = ev.json().as_object() {
        for (k, v) in obj {
            if matches!(k.as_str(), "body" | "severity_text") {
                continue; // MESSAGE and PRIORITY
            }
            let Some(name) = field_name(k) else { continue };
            let value = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            out.push((name, value));
        }
    }
    out
}

/// The datagram: `KEY=value\n`, or the length-prefixed form for values with a newline.
pub fn encode<K: AsRef<str>, V: AsRef<str>>(fields: &[(K, V)]) -> Vec<u8> {
    let mut b = Vec::with_capacity(2048);
    for (k, v) in fields {
        let (k, v) = (k.as_ref().as_bytes(), v.as_ref().as_bytes());
        b.extend_from_slice(k);
        if v.contains(&b'\n') {
            b.push(b'\n');
            b.extend_from_slice(&(v.len() as u64).to_le_bytes());
        } else {
            b.push(b'=');
        }
        b.extend_from_slice(v);
        b.push(b'\n');
    }
    b
}

/// A client of one journald socket.
#[derive(Debug)]
pub struct Journal {
    sock: UnixDatagram,
    path: PathBuf,
}

impl Journal {
    pub fn new(path: &Path) -> std::io::Result<Self> {
        let sock = UnixDatagram::unbound()?;
        sock.set_write_timeout(Some(SEND_TIMEOUT))?;
        Ok(Self {
            sock,
            path: path.to_owned(),
        })
    }

    /// Sends one entry (blocking, at most [`SEND_TIMEOUT`]). Large entries go through a memfd.
    pub fn send<K: AsRef<str>, V: AsRef<str>>(&self, fields: &[(K, V)]) -> std::io::Result<()> {
        let payload = encode(fields);
        match self.sock.send_to(&payload, &self.path) {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMSGSIZE | libc::ENOBUFS)) => {
                self.send_memfd(&payload)
            }
            Err(e) => Err(e),
        }
    }

    fn send_memfd(&self, payload: &[u8]) -> std::io::Result<()> {
        // SAFETY: a NUL-terminated name and valid flags; the result is checked.
        let raw = unsafe {
            libc::memfd_create(
                c"memtrace-journal".as_ptr(),
                libc::MFD_ALLOW_SEALING | libc::MFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a descriptor we just created and own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut f = std::fs::File::from(fd);
        f.write_all(payload)?;
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;
        // SAFETY: fcntl on our own descriptor.
        if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        send_fd(self.sock.as_raw_fd(), &self.path, f.as_raw_fd())
    }
}

/// sendmsg(2) of an empty datagram carrying one descriptor (SCM_RIGHTS) to `path`.
fn send_fd(sock: i32, path: &Path, fd: i32) -> std::io::Result<()> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; zeroed is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(std::io::Error::other("journal socket path too long"));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let addr_len = (std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
    let fd_size = std::mem::size_of::<i32>() as u32;
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(fd_size) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: msghdr is plain data; every pointer set below outlives the sendmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&raw mut addr).cast();
    msg.msg_namelen = addr_len;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: msg_control points at a buffer of CMSG_SPACE(sizeof(int)) bytes, so the first
    // header and its data fit.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(fd_size) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>(), fd);
    }
    // SAFETY: a valid socket and a fully initialised msghdr.
    if unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

pub struct JournaldSink {
    journal: Arc<Journal>,
}

impl JournaldSink {
    pub fn new(socket: &Path) -> Result<Self, SinkError> {
        let journal = Journal::new(socket).map_err(|e| SinkError::io("creating the journald socket", e))?;
        Ok(Self {
            journal: Arc::new(journal),
        })
    }
}

impl Sink for JournaldSink {
    async fn deliver(&mut self, ev: &Event) -> Result<(), SinkError> {
        let fields = fields(ev);
        let j = self.journal.clone();
        let what = format!("sending to journald at {}", j.path.display());
        tokio::task::spawn_blocking(move || j.send(&fields))
            .await?
            .map_err(|e| SinkError::io(what, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::tests::event;

    #[test]
    fn field_names_follow_journald_rules() {
        assert_eq!(field_name("k8s.pod.name").as_deref(), Some("K8S_POD_NAME"));
        assert_eq!(
            field_name("memtrace.victim.anon_rss_bytes").as_deref(),
            Some("MEMTRACE_VICTIM_ANON_RSS_BYTES")
        );
        assert_eq!(field_name("_hidden").as_deref(), Some("HIDDEN"));
        assert_eq!(field_name("9lives").as_deref(), Some("LIVES"));
        assert_eq!(field_name("..."), None);
        assert_eq!(field_name(&"a".repeat(100)).map(|s| s.len()), Some(64));
    }

    #[test]
    fn entry_has_the_fixed_fields_and_the_event() {
        let f = fields(&event());
        let get = |k: &str| f.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("SYSLOG_IDENTIFIER"), Some("memtrace"));
        assert_eq!(get("MESSAGE_ID"), Some(MESSAGE_ID));
        assert_eq!(get("PRIORITY"), Some("3"));
        assert!(get("MESSAGE").is_some_and(|m| m.starts_with("OOM kill: pid 10 (python3)")));
        assert_eq!(get("PROCESS_PID"), Some("10"));
        assert_eq!(get("MEMTRACE_CGROUP_PATH"), Some("/kubepods.slice/x"));
        assert_eq!(get("BODY"), None);
        assert_eq!(MESSAGE_ID.len(), 32);
    }

    #[test]
    fn newlines_use_the_length_prefixed_form() {
        let b = encode(&[("A", "x"), ("B", "1\n2")]);
        let mut want = b"A=x\nB\n".to_vec();
        want.extend_from_slice(&3u64.to_le_bytes());
        want.extend_from_slice(b"1\n2\n");
        assert_eq!(b, want);
    }

    #[test]
    fn memfd_payloads_arrive_sealed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("socket");
        let rx = UnixDatagram::bind(&path).expect("bind");
        rx.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let j = Journal::new(&path).expect("journal");
        let big = "x".repeat(400_000); // above the default socket send buffer
        j.send(&[("MESSAGE", "big"), ("BLOB", big.as_str())])
            .expect("send");
        let fd = recv_fd(rx.as_raw_fd());
        // SAFETY: a descriptor received for us by the kernel.
        let mut f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        // The descriptor shares the sender's file offset (at the end): read from the start.
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(0)).expect("seek");
        let mut got = vec![];
        std::io::Read::read_to_end(&mut f, &mut got).expect("read memfd");
        let want = encode(&[("MESSAGE", "big"), ("BLOB", big.as_str())]);
        assert!(
            got == want,
            "memfd holds {} bytes, want {}",
            got.len(),
            want.len()
        );
        // SAFETY: fcntl on a descriptor we own.
        let seals = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GET_SEALS) };
        assert_ne!(seals & libc::F_SEAL_WRITE, 0, "sealed");
    }

    fn recv_fd(sock: i32) -> i32 {
        let mut buf = [0u8; 16];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut control = [0u8; 64];
        // SAFETY: plain recvmsg with buffers that outlive the call.
        unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &raw mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = control.len() as _;
            assert!(libc::recvmsg(sock, &mut msg, 0) >= 0, "recvmsg");
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            assert!(!cmsg.is_null(), "a descriptor was sent");
            assert_eq!((*cmsg).cmsg_type, libc::SCM_RIGHTS);
            std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>())
        }
    }
}
