//! containerd 2.x for the end-to-end tests, next to the host's containerd
//! 1.6 (Debian 12's `containerd` package, which stays).
//!
//! Debian 12 has no containerd 2; Debian's unstable suite (sid) does, and
//! its `containerd`, `containerd-shim-runc-v2` and `ctr` binaries run on
//! Debian 12's glibc (sid's `runc` does not: the tests keep Debian 12's
//! `runc`). Setup fetches sid's `containerd` package from the same Debian
//! archive the machine's apt sources already name, through a private apt
//! configuration (its own sources list, state and cache under
//! [`PREFIX_ROOT`]/.apt; the host's apt configuration and dpkg database are
//! not touched), and unpacks it with `dpkg-deb -x` into
//! `PREFIX_ROOT/<debian version>/`, with `PREFIX_ROOT/current` pointing at
//! it. Nothing is installed into the host's `/usr`.
//!
//! Idempotent: when `current` holds a containerd 2 that runs, setup is
//! quiet and offline. `IW_CONTAINERD2_REFRESH=1` fetches sid's newest again.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Everything lives under here (outside the repository).
pub const PREFIX_ROOT: &str = "/opt/imagewarden/containerd2";
/// The Debian suite that packages containerd 2.
const SUITE: &str = "sid";
/// Keyring that signs Debian's suites (package `debian-archive-keyring`).
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// The archive used when the machine's apt sources name no Debian archive.
const FALLBACK_ARCHIVE: &str = "http://deb.debian.org/debian";
/// Binaries the tests need from the package.
const BINARIES: &[&str] = &["containerd", "containerd-shim-runc-v2", "ctr"];

/// `PREFIX_ROOT/current/usr/bin`: where the tests find containerd 2.
pub fn bin_dir() -> PathBuf {
    Path::new(PREFIX_ROOT).join("current/usr/bin")
}

/// `containerd --version` of the binary in `dir`, if it runs and is 2.x or
/// newer.
fn version_of(dir: &Path) -> Option<String> {
    let out = Command::new(dir.join("containerd"))
        .arg("--version")
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // "containerd github.com/containerd/containerd/v2 2.1.9+unknown "
    let v = text.split_whitespace().nth(2)?.trim_start_matches('v');
    let major: u32 = v.split('.').next()?.parse().ok()?;
    (major >= 2).then_some(text)
}

/// Whether every binary is there and `ctr` runs too.
fn complete(dir: &Path) -> bool {
    BINARIES.iter().all(|b| dir.join(b).is_file())
        && Command::new(dir.join("ctr"))
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
}

/// The Debian archive the machine's apt sources name (deb822 `.sources`
/// files and one-line `.list` files): the first URI ending in `/debian`.
fn host_archive() -> String {
    let mut files: Vec<PathBuf> = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(rd) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "sources" || e == "list"))
            .collect();
        more.sort();
        files.extend(more);
    }
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        if let Some(uri) = debian_archive_in(&text) {
            return uri;
        }
    }
    FALLBACK_ARCHIVE.to_string()
}

/// The first Debian archive URI in an apt sources file of either format.
fn debian_archive_in(text: &str) -> Option<String> {
    let is_archive = |u: &str| {
        let u = u.trim_end_matches('/');
        (u.starts_with("http://") || u.starts_with("https://")) && u.ends_with("/debian")
    };
    for line in text.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
        // deb822: "URIs: a b"
        if let Some(rest) = line.strip_prefix("URIs:") {
            if let Some(u) = rest.split_whitespace().find(|u| is_archive(u)) {
                return Some(u.trim_end_matches('/').to_string());
            }
        }
        // one-line: "deb [opts] uri suite comps"
        if let Some(rest) = line.strip_prefix("deb ") {
            let mut words = rest.split_whitespace();
            let mut w = words.next();
            if w.is_some_and(|x| x.starts_with('[')) {
                while w.is_some_and(|x| !x.ends_with(']')) {
                    w = words.next();
                }
                w = words.next();
            }
            if let Some(u) = w.filter(|u| is_archive(u)) {
                return Some(u.trim_end_matches('/').to_string());
            }
        }
    }
    None
}

/// `apt-get`/`apt-cache` with the private configuration: its own sources
/// list (only sid), no host sources.list.d or preferences, its own state and
/// cache directories.
fn private_apt(tool: &str, apt_dir: &Path) -> Command {
    let mut c = Command::new(tool);
    let d = apt_dir.display();
    for o in [
        format!("Dir::Etc::SourceList={d}/sources.list"),
        format!("Dir::Etc::SourceParts={d}/sources.list.d"),
        format!("Dir::Etc::Preferences={d}/preferences"),
        format!("Dir::Etc::PreferencesParts={d}/preferences.d"),
        format!("Dir::State={d}/state"),
        format!("Dir::Cache={d}/cache"),
        // Only the package lists: no translations, no AppStream metadata.
        "Acquire::Languages=none".to_string(),
        "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".to_string(),
        "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false".to_string(),
        "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false".to_string(),
        "Acquire::IndexTargets::deb::CNF::DefaultEnabled=false".to_string(),
        // The private directories belong to root; do not drop to _apt.
        "APT::Sandbox::User=root".to_string(),
    ] {
        c.arg("-o").arg(o);
    }
    c.env("DEBIAN_FRONTEND", "noninteractive");
    c
}

fn run_step(what: &str, cmd: &mut Command) -> Result<()> {
    eprintln!("setup: containerd 2: {what}");
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "setup: containerd 2: {what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Makes sure `PREFIX_ROOT/current` holds a working containerd 2.
pub fn setup() -> Result<()> {
    let refresh = std::env::var("IW_CONTAINERD2_REFRESH").is_ok_and(|v| v == "1");
    if !refresh && version_of(&bin_dir()).is_some() && complete(&bin_dir()) {
        return Ok(());
    }
    if refresh {
        eprintln!(
            "setup: containerd 2: IW_CONTAINERD2_REFRESH=1: fetching the unstable suite's newest into {PREFIX_ROOT}"
        );
    } else {
        eprintln!(
            "setup: containerd 2 missing under {PREFIX_ROOT} (the end-to-end tests run against containerd 1.6 and 2.x)"
        );
    }
    if !super::setup::is_root() {
        bail!("setup: fetching containerd 2 into {PREFIX_ROOT} needs root: run `sudo cargo xtask setup`");
    }
    if !Path::new(KEYRING).is_file() {
        bail!(
            "setup: containerd 2: {KEYRING} is missing: `apt-get install debian-archive-keyring`"
        );
    }
    let root = Path::new(PREFIX_ROOT);
    let apt_dir = root.join(".apt");
    for d in [
        "sources.list.d",
        "preferences.d",
        "state/lists/partial",
        "cache/archives/partial",
        "debs",
    ] {
        std::fs::create_dir_all(apt_dir.join(d))
            .with_context(|| format!("creating {}", apt_dir.join(d).display()))?;
    }
    let archive = host_archive();
    std::fs::write(
        apt_dir.join("sources.list"),
        format!("deb [signed-by={KEYRING}] {archive} {SUITE} main\n"),
    )
    .context("writing the private sources list")?;
    run_step(
        &format!(
            "apt-get update (private configuration in {}, suite {SUITE} of {archive})",
            apt_dir.display()
        ),
        private_apt("apt-get", &apt_dir).args(["update", "-q"]),
    )?;
    let debs = apt_dir.join("debs");
    for e in std::fs::read_dir(&debs)?.flatten() {
        let _ = std::fs::remove_file(e.path());
    }
    run_step(
        &format!(
            "apt-get download containerd (from {SUITE}, into {})",
            debs.display()
        ),
        private_apt("apt-get", &apt_dir)
            .current_dir(&debs)
            .args(["download", "-q", "containerd"]),
    )?;
    let deb = std::fs::read_dir(&debs)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("setup: containerd 2: apt-get download left no .deb")?;
    let version = Command::new("dpkg-deb")
        .args(["-f"])
        .arg(&deb)
        .arg("Version")
        .output()?;
    let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
    if version.is_empty() || version.contains('/') || version.starts_with('.') {
        bail!(
            "setup: containerd 2: cannot read a version from {}",
            deb.display()
        );
    }
    let major = version
        .split('.')
        .next()
        .and_then(|m| m.split(':').next_back()?.parse::<u32>().ok());
    if major.is_none_or(|m| m < 2) {
        bail!("setup: containerd 2: {SUITE}'s containerd is {version}, not 2.x");
    }
    let dest = root.join(&version);
    let tmp = root.join(format!(".{version}.partial"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    run_step(
        &format!("dpkg-deb -x {} {}", deb.display(), dest.display()),
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp),
    )?;
    let tmp_bin = tmp.join("usr/bin");
    let Some(v) = version_of(&tmp_bin) else {
        bail!(
            "setup: containerd 2: {} does not run here or is not 2.x (`containerd --version` failed)",
            tmp_bin.join("containerd").display()
        );
    };
    if !complete(&tmp_bin) {
        bail!(
            "setup: containerd 2: the package lacks one of {BINARIES:?}, or its ctr does not run"
        );
    }
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::rename(&tmp, &dest)?;
    // Atomic switch of `current`.
    let link_tmp = root.join(".current.new");
    let _ = std::fs::remove_file(&link_tmp);
    std::os::unix::fs::symlink(&version, &link_tmp)?;
    std::fs::rename(&link_tmp, root.join("current"))?;
    eprintln!(
        "setup: containerd 2: {v} in {} (with its ctr and containerd-shim-runc-v2; runc stays Debian 12's)",
        dest.join("usr/bin").display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_debian_archive_in_either_format() {
        let deb822 =
            "Types: deb\n# http://snapshot.debian.org/archive/debian/2025\nURIs: http://deb.debian.org/debian\n\
                      Suites: bookworm\n\nTypes: deb\nURIs: http://deb.debian.org/debian-security\n";
        assert_eq!(
            debian_archive_in(deb822).as_deref(),
            Some("http://deb.debian.org/debian")
        );
        let one = "# deb http://x/debian sid main\ndeb [arch=amd64 signed-by=/k.gpg] https://mirror.example/debian/ bookworm main\n";
        assert_eq!(
            debian_archive_in(one).as_deref(),
            Some("https://mirror.example/debian")
        );
        assert_eq!(
            debian_archive_in("deb https://packages.example/apt stable main\n"),
            None
        );
        assert_eq!(
            debian_archive_in("URIs: http://deb.debian.org/debian-security\n"),
            None
        );
    }
}
