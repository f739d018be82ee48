//! The kernel filesystems the agent needs: tracefs (tracepoint ids and
//! formats), bpffs (pinning) and securityfs (the LSM list). Mounted at their
//! standard places when missing; nothing else is touched.
use std::{
    ffi::CString,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum KernelFsError {
    #[error("cannot mount {fstype} at {target}: {source}")]
    Mount {
        fstype: &'static str,
        target: String,
        source: std::io::Error,
    },
    #[error("cannot read /proc/self/mounts: {0}")]
    Mounts(std::io::Error),
}

/// (mount point, fstype) pairs of /proc/self/mounts.
pub fn mounts() -> Result<Vec<(PathBuf, String)>, KernelFsError> {
    let text = std::fs::read_to_string("/proc/self/mounts").map_err(KernelFsError::Mounts)?;
    Ok(parse_mounts(&text))
}

pub fn parse_mounts(text: &str) -> Vec<(PathBuf, String)> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let _src = it.next()?;
            let target = it.next()?.replace("\\040", " ");
            let fstype = it.next()?;
            Some((PathBuf::from(target), fstype.to_string()))
        })
        .collect()
}

fn mount(fstype: &'static str, target: &Path) -> Result<(), KernelFsError> {
    let err = |source| KernelFsError::Mount {
        fstype,
        target: target.display().to_string(),
        source,
    };
    std::fs::create_dir_all(target).map_err(err)?;
    let src = CString::new(fstype).expect("static name");
    let tgt = CString::new(target.as_os_str().as_encoded_bytes()).map_err(|_| {
        err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "NUL in path",
        ))
    })?;
    // SAFETY: valid NUL-terminated strings; null data is allowed.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            src.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    tracing::info!(fstype, target = %target.display(), "mounted");
    Ok(())
}

/// Mounts tracefs, bpffs and securityfs where missing; returns the tracefs
/// directory to read tracepoint formats from.
pub fn ensure_kernel_filesystems() -> Result<PathBuf, KernelFsError> {
    let m = mounts()?;
    let has = |fstype: &str, at: &str| m.iter().any(|(p, t)| t == fstype && p == Path::new(at));
    let tracefs = if has("tracefs", "/sys/kernel/tracing") {
        PathBuf::from("/sys/kernel/tracing")
    } else if has("tracefs", "/sys/kernel/debug/tracing") {
        PathBuf::from("/sys/kernel/debug/tracing")
    } else {
        mount("tracefs", Path::new("/sys/kernel/tracing"))?;
        PathBuf::from("/sys/kernel/tracing")
    };
    if !has("bpf", "/sys/fs/bpf") {
        mount("bpf", Path::new("/sys/fs/bpf"))?;
    }
    if !has("securityfs", "/sys/kernel/security") {
        // Only informative (the LSM list): not fatal when it cannot be mounted.
        if let Err(e) = mount("securityfs", Path::new("/sys/kernel/security")) {
            tracing::warn!("{e}");
        }
    }
    Ok(tracefs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_mounts() {
        let m = parse_mounts(
            "tracefs /sys/kernel/tracing tracefs rw,nosuid 0 0\n\
             cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n\
             /dev/x /mnt/a\\040b ext4 rw 0 0\n\
             garbage\n",
        );
        assert_eq!(m.len(), 3);
        assert_eq!(
            m[0],
            (PathBuf::from("/sys/kernel/tracing"), "tracefs".to_string())
        );
        assert_eq!(m[2].0, PathBuf::from("/mnt/a b"));
    }
}
