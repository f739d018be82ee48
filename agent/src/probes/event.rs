//! Decoding of kernel ring-buffer records into typed records: by the kind
//! in their header ([`RecordHeader`]), one arm per kind.
use agent_common::{
    flags, hook, record_kind, verdict, ExecEvent, RecordHeader, COMM_LEN, FILENAME_LEN,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes, shorter than its header")]
    Header(usize),
    #[error("record of unknown kind {0}")]
    UnknownKind(u16),
    #[error("exec event of unknown hook {0}")]
    UnknownHook(u16),
    #[error("exec event of {got} bytes, expected {want}")]
    Size { got: usize, want: usize },
    #[error("exec event with file name length {0} > {FILENAME_LEN}")]
    NameLength(usize),
}

/// One decoded ring-buffer record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Exec(ExecRecord),
}

/// The kernel's verdict for the exec'ing cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelVerdict {
    Unknown,
    Allow,
    Deny,
    Hold,
    /// Denied by a rule in Audit mode: reported, never killed.
    Audit,
}

impl KernelVerdict {
    pub fn from_raw(v: u32) -> Self {
        match v {
            verdict::ALLOW => Self::Allow,
            verdict::DENY => Self::Deny,
            verdict::HOLD => Self::Hold,
            verdict::AUDIT => Self::Audit,
            _ => Self::Unknown,
        }
    }
    /// The value in the kernel's verdict maps (`agent_common::verdict`).
    pub const fn raw(self) -> u32 {
        match self {
            Self::Unknown => verdict::UNKNOWN,
            Self::Allow => verdict::ALLOW,
            Self::Deny => verdict::DENY,
            Self::Hold => verdict::HOLD,
            Self::Audit => verdict::AUDIT,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Hold => "hold",
            Self::Audit => "audit",
        }
    }
}

/// Which kernel program saw an exec (`agent_common::hook` on the wire):
/// in records, findings (`hook`), metrics (`exec_hook`) and the program
/// table (`probes::attach::PROGRAMS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Hook {
    /// `tp_btf/sched_process_exec`.
    TpBtf,
    /// The classic `sched:sched_process_exec` tracepoint.
    Tracepoint,
    /// `lsm/bprm_check_security` (a denial before the exec happens).
    Lsm,
}

impl Hook {
    /// The wire and label name (`tp_btf`, `tracepoint`, `lsm`).
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::TpBtf => "tp_btf",
            Hook::Tracepoint => "tracepoint",
            Hook::Lsm => "lsm",
        }
    }

    /// The hook of a kernel id; `None` for an id this agent does not know.
    pub fn from_id(id: u32) -> Option<Self> {
        match id {
            hook::TP_BTF => Some(Hook::TpBtf),
            hook::TRACEPOINT => Some(Hook::Tracepoint),
            hook::LSM => Some(Hook::Lsm),
            _ => None,
        }
    }
}

/// One exec, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRecord {
    pub boot_ns: u64,
    pub cgroup_id: u64,
    pub pid: u32,
    pub tgid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub verdict: KernelVerdict,
    pub hook: Hook,
    pub comm: Vec<u8>,
    /// Raw bytes of the file name as the kernel saw it (not necessarily UTF-8).
    pub filename: Vec<u8>,
    pub truncated: bool,
    /// No name on disk (memfd or unlinked file): link count 0, or an
    /// unlinked dentry.
    pub fileless: bool,
    /// The executed file is in the container's overlayfs upper (writable)
    /// layer: written or modified after the container started.
    pub drift: bool,
    /// The exec ran in a container's cgroup (as the kernel classified it).
    pub in_container: bool,
    /// Refused (LSM) or killed (signal) because it was fileless or drift in
    /// a container whose policy denies that.
    pub drift_denied: bool,
    /// The executed file's own name (its dentry), for fileless and drift
    /// execs: `memfd:<name>` for a memfd.
    pub file_name: Vec<u8>,
    pub killed: bool,
    pub held: bool,
    pub lsm_denied: bool,
    pub name_unreadable: bool,
    pub nlink_unreadable: bool,
}

impl ExecRecord {
    /// File name for display and JSON: invalid UTF-8 becomes U+FFFD.
    pub fn filename_lossy(&self) -> String {
        String::from_utf8_lossy(&self.filename).into_owned()
    }
    pub fn comm_lossy(&self) -> String {
        String::from_utf8_lossy(&self.comm).into_owned()
    }
}

fn until_nul(b: &[u8]) -> &[u8] {
    &b[..b.iter().position(|&c| c == 0).unwrap_or(b.len())]
}

/// Decodes one ring-buffer record by its kind. Never panics, whatever the
/// bytes; an unknown kind is an error (counted by the reader).
pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
    if bytes.len() < std::mem::size_of::<RecordHeader>() {
        return Err(DecodeError::Header(bytes.len()));
    }
    // SAFETY: length checked; RecordHeader is plain old data.
    let header: RecordHeader = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    match header.kind {
        record_kind::EXEC => decode_exec(bytes).map(Record::Exec),
        k => Err(DecodeError::UnknownKind(k)),
    }
}

fn decode_exec(bytes: &[u8]) -> Result<ExecRecord, DecodeError> {
    let want = std::mem::size_of::<ExecEvent>();
    if bytes.len() != want {
        return Err(DecodeError::Size {
            got: bytes.len(),
            want,
        });
    }
    // SAFETY: length checked; ExecEvent is plain old data (any bit pattern is
    // valid) and read_unaligned copes with the ring buffer's alignment.
    let ev: ExecEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let len = ev.filename_len as usize;
    if len >= FILENAME_LEN {
        return Err(DecodeError::NameLength(len));
    }
    let f = ev.flags;
    Ok(ExecRecord {
        boot_ns: ev.boot_ns,
        cgroup_id: ev.cgroup_id,
        pid: ev.pid,
        tgid: ev.tgid,
        ppid: ev.ppid,
        uid: ev.uid,
        gid: ev.gid,
        verdict: KernelVerdict::from_raw(ev.verdict),
        hook: Hook::from_id(ev.header.hook as u32)
            .ok_or(DecodeError::UnknownHook(ev.header.hook))?,
        comm: until_nul(&ev.comm[..COMM_LEN]).to_vec(),
        filename: until_nul(&ev.filename[..len]).to_vec(),
        truncated: f & flags::TRUNCATED != 0,
        fileless: f & flags::FILELESS != 0,
        drift: f & flags::DRIFT != 0,
        in_container: f & flags::IN_CONTAINER != 0,
        drift_denied: f & flags::DRIFT_DENIED != 0,
        file_name: until_nul(&ev.file_name).to_vec(),
        killed: f & flags::KILLED != 0,
        held: f & flags::HELD != 0,
        lsm_denied: f & flags::LSM_DENIED != 0,
        name_unreadable: f & flags::NAME_UNREADABLE != 0,
        nlink_unreadable: f & flags::NLINK_UNREADABLE != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_verdicts_round_trip_through_their_raw_value() {
        for v in [
            KernelVerdict::Unknown,
            KernelVerdict::Allow,
            KernelVerdict::Deny,
            KernelVerdict::Hold,
            KernelVerdict::Audit,
        ] {
            assert_eq!(KernelVerdict::from_raw(v.raw()), v);
        }
    }
    use std::mem::{offset_of, size_of};

    fn raw(ev: &ExecEvent) -> Vec<u8> {
        // SAFETY: ExecEvent is repr(C) plain data.
        unsafe {
            std::slice::from_raw_parts(
                (ev as *const ExecEvent).cast::<u8>(),
                size_of::<ExecEvent>(),
            )
        }
        .to_vec()
    }

    fn sample() -> ExecEvent {
        let mut ev = ExecEvent {
            header: RecordHeader {
                kind: record_kind::EXEC,
                hook: hook::TRACEPOINT as u16,
                _reserved: 0,
            },
            boot_ns: 123,
            cgroup_id: 0xdead_beef_0000_0001,
            pid: 42,
            tgid: 42,
            ppid: 7,
            uid: 1000,
            gid: 100,
            flags: flags::FILELESS | flags::KILLED | flags::IN_CONTAINER | flags::DRIFT_DENIED,
            verdict: verdict::DENY,
            filename_len: 8,
            _pad: 0,
            comm: [0; COMM_LEN],
            filename: [0; FILENAME_LEN],
            file_name: [0; agent_common::FILE_NAME_LEN],
        };
        ev.file_name[..9].copy_from_slice(b"memfd:run");
        ev.comm[..4].copy_from_slice(b"true");
        ev.filename[..8].copy_from_slice(b"/bin/tru");
        ev
    }

    #[test]
    fn layout_matches_the_kernel_side() {
        assert_eq!(size_of::<RecordHeader>(), 8);
        assert_eq!(offset_of!(RecordHeader, kind), 0);
        assert_eq!(offset_of!(RecordHeader, hook), 2);
        assert_eq!(size_of::<ExecEvent>(), 392);
        assert_eq!(offset_of!(ExecEvent, header), 0);
        assert_eq!(offset_of!(ExecEvent, boot_ns), 8);
        assert_eq!(offset_of!(ExecEvent, cgroup_id), 16);
        assert_eq!(offset_of!(ExecEvent, pid), 24);
        assert_eq!(offset_of!(ExecEvent, tgid), 28);
        assert_eq!(offset_of!(ExecEvent, ppid), 32);
        assert_eq!(offset_of!(ExecEvent, uid), 36);
        assert_eq!(offset_of!(ExecEvent, gid), 40);
        assert_eq!(offset_of!(ExecEvent, flags), 44);
        assert_eq!(offset_of!(ExecEvent, verdict), 48);
        assert_eq!(offset_of!(ExecEvent, filename_len), 52);
        assert_eq!(offset_of!(ExecEvent, comm), 56);
        assert_eq!(offset_of!(ExecEvent, filename), 72);
        assert_eq!(offset_of!(ExecEvent, file_name), 328);
        assert_eq!(size_of::<agent_common::Config>(), 120);
        assert_eq!(size_of::<agent_common::CgroupKey>(), 192);
    }

    fn exec(bytes: &[u8]) -> Result<ExecRecord, DecodeError> {
        decode(bytes).map(|Record::Exec(r)| r)
    }

    #[test]
    fn decodes_every_field() {
        let r = exec(&raw(&sample())).expect("decode");
        assert_eq!(r.cgroup_id, 0xdead_beef_0000_0001);
        assert_eq!(
            (r.pid, r.tgid, r.ppid, r.uid, r.gid),
            (42, 42, 7, 1000, 100)
        );
        assert_eq!(r.verdict, KernelVerdict::Deny);
        assert_eq!(r.hook, Hook::Tracepoint);
        assert_eq!(r.comm, b"true");
        assert_eq!(r.filename, b"/bin/tru");
        assert!(r.fileless && r.killed && !r.truncated && !r.held && !r.lsm_denied);
        assert!(r.in_container && r.drift_denied && !r.drift);
        assert_eq!(r.file_name, b"memfd:run");
    }

    #[test]
    fn rejects_wrong_sizes_and_lengths() {
        let b = raw(&sample());
        assert_eq!(
            exec(&b[..100]),
            Err(DecodeError::Size {
                got: 100,
                want: 392
            })
        );
        assert_eq!(exec(&[]), Err(DecodeError::Header(0)));
        assert_eq!(exec(&b[..7]), Err(DecodeError::Header(7)));
        let mut ev = sample();
        ev.filename_len = FILENAME_LEN as u16;
        assert_eq!(exec(&raw(&ev)), Err(DecodeError::NameLength(FILENAME_LEN)));
    }

    #[test]
    fn records_of_an_unknown_kind_are_refused() {
        for kind in [0, record_kind::EXEC + 1, u16::MAX] {
            let mut ev = sample();
            ev.header.kind = kind;
            assert_eq!(decode(&raw(&ev)), Err(DecodeError::UnknownKind(kind)));
        }
    }

    #[test]
    fn invalid_utf8_is_kept_raw_and_shown_lossy() {
        let mut ev = sample();
        ev.filename[..4].copy_from_slice(&[b'/', 0xff, 0xfe, b'x']);
        ev.filename_len = 4;
        let r = exec(&raw(&ev)).unwrap();
        assert_eq!(r.filename, vec![b'/', 0xff, 0xfe, b'x']);
        assert_eq!(r.filename_lossy(), "/\u{fffd}\u{fffd}x");
    }

    #[test]
    fn unknown_verdicts_and_hooks_do_not_panic() {
        let mut ev = sample();
        ev.verdict = 77;
        let r = exec(&raw(&ev)).unwrap();
        assert_eq!(r.verdict, KernelVerdict::Unknown);
        // A hook id this agent has no program for: refused, counted.
        ev.header.hook = 9;
        assert!(matches!(
            decode(&raw(&ev)),
            Err(DecodeError::UnknownHook(9))
        ));
    }
}
