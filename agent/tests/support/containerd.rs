//! A private, real containerd for tests.
//!
//! [`Containerd::start_version`] runs one of two containerd releases as a
//! child with its own root, state, socket and config in a temporary
//! directory (CRI plugin on, runc v2 shim, `native` snapshotter — or
//! `overlayfs` through [`Containerd::start_with`], as production nodes
//! use it — no CNI:
//! pods use the host network namespace), and [`Drop`] kills every task it
//! ran, stops it, unmounts what it left and removes the directory:
//!
//! | [`Runtime`] | binaries | config |
//! |---|---|---|
//! | `V1_6` | the host's Debian 12 `containerd` package (1.6) on `PATH` | version 2 (`io.containerd.grpc.v1.cri`) |
//! | `V2` | Debian sid's `containerd` 2.x, unpacked by `cargo xtask setup` into [`CONTAINERD2_BIN`] (override: `IW_CONTAINERD2_BIN`) | version 3 (`io.containerd.cri.v1.runtime`, `io.containerd.cri.v1.images`) |
//!
//! Both use Debian 12's `runc` (sid's needs a newer glibc). Each uses the
//! `ctr` and `containerd-shim-runc-v2` of its own release. [`Containerd::start`]
//! is `start_version(Runtime::V1_6)`. Which releases a test run covers:
//! `IW_TEST_CONTAINERD=all|1.6|2` (default `all`; see [`Runtime::selected`]).
//!
//! [`TestImages::build`] makes OCI images without any network: a
//! busybox-static root filesystem with `testdata/images/entrypoint.sh`
//! (first act: write a marker file into a bind-mounted host directory, then
//! sleep), packed with `umoci`, named through the
//! `io.containerd.image.name` annotation and imported with `ctr images
//! import`. Images:
//!
//! | name | entrypoint |
//! |---|---|
//! | [`NGINX`] `docker.io/library/nginx:latest` | marker + sleep |
//! | [`ECR_NGINX`] `public.ecr.aws/nginx/nginx:latest` | marker + sleep (other digest) |
//! | [`PAUSE`] `registry.k8s.io/pause:3.6` | `sleep` (the CRI sandbox image) |
//!
//! Needs root and the Debian packages `containerd runc umoci busybox-static`.

/// One test per containerd release: `containerd_1_6::NAME` and
/// `containerd_2::NAME`, each calling `NAME(test_name, release)` of the
/// calling module (which imports [`Runtime`]). Use:
/// `crate::per_containerd_release!(test_a, test_b);`
#[macro_export]
macro_rules! per_containerd_release {
    ($($name:ident),* $(,)?) => {
        mod containerd_1_6 {
            $(
                #[test]
                fn $name() {
                    super::$name(concat!("containerd_1_6::", stringify!($name)), super::Runtime::V1_6)
                }
            )*
        }
        mod containerd_2 {
            $(
                #[test]
                fn $name() {
                    super::$name(concat!("containerd_2::", stringify!($name)), super::Runtime::V2)
                }
            )*
        }
    };
}

// Also included by containerd.rs (which examples include alone): one
// source, compiled into each self-contained helper that needs it.
#[allow(clippy::duplicate_mod)]
#[path = "skip.rs"]
mod skip;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use imagewarden::sources::cri::CriClient;
use k8s_cri::v1 as cri;

/// Docker Hub nginx, as a pod spec would write it fully qualified.
pub const NGINX: &str = "docker.io/library/nginx:latest";
/// The ECR public mirror of nginx (a different image digest here).
pub const ECR_NGINX: &str = "public.ecr.aws/nginx/nginx:latest";
/// The CRI sandbox image (`sandbox_image` in the config).
pub const PAUSE: &str = "registry.k8s.io/pause:3.6";

/// Where the image entrypoint writes its marker, inside the container.
pub const MARKER_MOUNT: &str = "/iw-marker";

const ENTRYPOINT: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../testdata/images/entrypoint.sh"
));

/// Where `cargo xtask setup` unpacks containerd 2 (`containerd`, `ctr`,
/// `containerd-shim-runc-v2`).
pub const CONTAINERD2_BIN: &str = "/opt/imagewarden/containerd2/current/usr/bin";
/// Environment variable that picks the containerd releases the tests run
/// against: `all` (default), `1.6`, `2`, or a comma-separated list.
pub const SELECT_ENV: &str = "IW_TEST_CONTAINERD";

/// A containerd release the harness can start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Runtime {
    /// The host's containerd 1.6 (Debian 12), config version 2.
    V1_6,
    /// containerd 2.x (Debian sid, private prefix), config version 3.
    V2,
}

/// Every release, in matrix order.
pub const RUNTIMES: [Runtime; 2] = [Runtime::V1_6, Runtime::V2];

impl Runtime {
    /// `containerd 1.6` / `containerd 2`, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Runtime::V1_6 => "containerd 1.6",
            Runtime::V2 => "containerd 2",
        }
    }

    /// `1.6` / `2`: the value [`SELECT_ENV`] names it by.
    pub fn short(self) -> &'static str {
        match self {
            Runtime::V1_6 => "1.6",
            Runtime::V2 => "2",
        }
    }

    /// The major version `containerd --version` must report.
    fn major(self) -> u32 {
        match self {
            Runtime::V1_6 => 1,
            Runtime::V2 => 2,
        }
    }

    /// Whether [`SELECT_ENV`] includes this release (unset: all). Panics
    /// on a value it does not know, naming it.
    pub fn selected(self) -> bool {
        let raw = std::env::var(SELECT_ENV).unwrap_or_default();
        let mut any = false;
        for w in raw.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            any = true;
            match w {
                "all" => return true,
                "1.6" | "1" => {
                    if self == Runtime::V1_6 {
                        return true;
                    }
                }
                "2" | "2.x" => {
                    if self == Runtime::V2 {
                        return true;
                    }
                }
                other => {
                    panic!("{SELECT_ENV}={raw:?}: unknown release {other:?} (use all, 1.6 or 2)")
                }
            }
        }
        !any
    }

    /// Directory holding this release's `containerd`, `ctr` and shim.
    pub fn bin_dir(self) -> Option<PathBuf> {
        match self {
            Runtime::V1_6 => which("containerd").and_then(|p| p.parent().map(Path::to_path_buf)),
            Runtime::V2 => Some(
                std::env::var_os("IW_CONTAINERD2_BIN")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from(CONTAINERD2_BIN)),
            ),
        }
    }

    /// `containerd --version` of this release, checked against its major
    /// version; why it cannot run otherwise.
    pub fn version(self) -> Result<String, String> {
        let dir = self
            .bin_dir()
            .ok_or_else(|| format!("{}: `containerd` not on PATH", self.name()))?;
        let setup_hint = match self {
            Runtime::V1_6 => "apt-get install containerd",
            Runtime::V2 => "run `cargo xtask setup`",
        };
        for b in ["containerd", "ctr", "containerd-shim-runc-v2"] {
            if !dir.join(b).is_file() {
                return Err(format!(
                    "{}: {} missing ({setup_hint})",
                    self.name(),
                    dir.join(b).display()
                ));
            }
        }
        let out = Command::new(dir.join("containerd"))
            .arg("--version")
            .output()
            .map_err(|e| {
                format!(
                    "{}: cannot run {}: {e}",
                    self.name(),
                    dir.join("containerd").display()
                )
            })?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let v = text
            .split_whitespace()
            .nth(2)
            .unwrap_or("")
            .trim_start_matches('v');
        let major = v.split('.').next().and_then(|m| m.parse::<u32>().ok());
        if !out.status.success() || major != Some(self.major()) {
            return Err(format!(
                "{}: {} reports {text:?}, not {}.x ({setup_hint})",
                self.name(),
                dir.join("containerd").display(),
                self.major()
            ));
        }
        Ok(v.to_string())
    }

    /// Why the harness cannot run this release here, if it cannot.
    pub fn preflight(self) -> Result<(), String> {
        preflight_with(COMMON_BINARIES)?;
        self.version().map(|_| ())
    }
}

/// Whether a test should run against `rt`: not when [`SELECT_ENV`] leaves
/// it out (printed), nor when it cannot run here (a loud SKIP, a failure
/// under `CI=true`).
pub fn runtime_ready(test: &str, rt: Runtime) -> bool {
    if !rt.selected() {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "{test}: {} not selected by {SELECT_ENV}={:?}: not run",
            rt.name(),
            std::env::var(SELECT_ENV).unwrap_or_default()
        );
        return false;
    }
    if let Err(why) = rt.preflight() {
        skip::skip_or_fail(test, &why);
        return false;
    }
    true
}

/// Binaries the harness runs.
pub const REQUIRED_BINARIES: &[&str] = &[
    "containerd",
    "ctr",
    "runc",
    "containerd-shim-runc-v2",
    "umoci",
    "tar",
];
/// The static busybox copied into the images.
pub const BUSYBOX: &str = "/bin/busybox";

/// Why the harness cannot run here with the host's containerd (1.6), if
/// it cannot.
pub fn preflight() -> Result<(), String> {
    preflight_with(REQUIRED_BINARIES)
}

/// What every release needs besides its own containerd, ctr and shim.
const COMMON_BINARIES: &[&str] = &["runc", "umoci", "tar"];

fn preflight_with(binaries: &[&str]) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root (containerd and runc need root)".into());
    }
    for b in binaries {
        if which(b).is_none() {
            return Err(format!(
                "`{b}` not found on PATH (apt-get install containerd runc umoci busybox-static)"
            ));
        }
    }
    let bb = std::fs::read(BUSYBOX).map_err(|e| format!("{BUSYBOX}: {e}"))?;
    if has_interpreter(&bb) {
        return Err(format!(
            "{BUSYBOX} is dynamically linked (install busybox-static)"
        ));
    }
    if imagewarden::sources::cgroup::find_cgroup2_mount().is_none() {
        return Err("no cgroup2 hierarchy mounted".into());
    }
    Ok(())
}

/// Whether a 64-bit little-endian ELF has a `PT_INTERP` program header
/// (is dynamically linked). Anything unparsable counts as dynamic.
fn has_interpreter(elf: &[u8]) -> bool {
    let rd16 = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let rd32 = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let rd64 = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(|b| u64::from_le_bytes(b) as usize)
    };
    if elf.get(..5) != Some(b"\x7fELF\x02".as_slice()) {
        return true;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (rd64(0x20), rd16(0x36), rd16(0x38)) else {
        return true;
    };
    (0..phnum.min(256)).any(|i| rd32(phoff + i * phentsize) == Some(3))
}

/// First match of `name` on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Runs a command, panicking with its output when it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

fn unique_dir(prefix: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!("{prefix}-{}-{n}-{nanos:x}", std::process::id()))
}

/// The test images, as one OCI archive naming all of them.
#[derive(Debug)]
pub struct TestImages {
    /// Work directory (layout, bundle, archive); removed on drop.
    pub dir: PathBuf,
    /// `ctr images import`-able archive holding every image.
    pub archive: PathBuf,
    /// Image name -> manifest digest (the repo digest).
    pub digests: BTreeMap<String, String>,
    /// Time taken to build.
    pub build_time: Duration,
}

impl TestImages {
    /// Builds the images into a fresh temporary directory.
    pub fn build() -> TestImages {
        TestImages::build_with(&[])
    }

    /// [`TestImages::build`] with extra executable files in every image
    /// (path relative to the root, contents): part of the image's layer.
    pub fn build_with(extra: &[(&str, &[u8])]) -> TestImages {
        let t0 = Instant::now();
        let dir = unique_dir("iw-images");
        std::fs::create_dir_all(&dir).expect("image work dir");
        let layout = dir.join("oci");
        let bundle = dir.join("bundle");
        let img = |tag: &str| format!("{}:{tag}", layout.display());
        run(Command::new("umoci")
            .args(["init", "--layout"])
            .arg(&layout));
        run(Command::new("umoci").args(["new", "--image", &img("base")]));
        run(Command::new("umoci")
            .args(["unpack", "--image", &img("base")])
            .arg(&bundle));
        let rootfs = bundle.join("rootfs");
        for d in ["bin", "tmp", "proc", "sys", "dev", "etc", "iw-marker"] {
            std::fs::create_dir_all(rootfs.join(d)).expect("rootfs dir");
        }
        std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).expect("copy busybox");
        for applet in [
            "sh", "sleep", "echo", "cat", "date", "touch", "mkdir", "ls", "id", "hostname", "true",
            "false", "env", "kill", "ps", "grep",
        ] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))
                .expect("applet symlink");
        }
        // The exec-drift helper (memfd and unlinked execs), static like busybox.
        run(Command::new("cc")
            .args(["-static", "-O2", "-o"])
            .arg(rootfs.join("bin/iw-drift"))
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../testdata/images/iw-drift.c"
            )));
        for (path, bytes) in extra {
            use std::os::unix::fs::PermissionsExt;
            let p = rootfs.join(path);
            std::fs::write(&p, bytes).expect("extra image file");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n").expect("passwd");
        std::fs::write(rootfs.join("etc/group"), "root:x:0:\n").expect("group");
        let ep = rootfs.join("entrypoint.sh");
        std::fs::write(&ep, ENTRYPOINT).expect("entrypoint");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&ep, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        run(Command::new("umoci")
            .args(["repack", "--image", &img("base")])
            .arg(&bundle));
        // One tag per image; the label makes the two nginx digests differ.
        let configs: [(&str, &str, Vec<&str>); 3] = [
            (
                "nginx",
                NGINX,
                vec![
                    "--config.entrypoint",
                    "/entrypoint.sh",
                    "--config.env",
                    "IW_IMAGE=nginx",
                ],
            ),
            (
                "ecr",
                ECR_NGINX,
                vec![
                    "--config.entrypoint",
                    "/entrypoint.sh",
                    "--config.env",
                    "IW_IMAGE=ecr-nginx",
                ],
            ),
            (
                "pause",
                PAUSE,
                vec![
                    "--config.entrypoint",
                    "/bin/sleep",
                    "--config.cmd",
                    "2147483647",
                ],
            ),
        ];
        for (tag, name, args) in &configs {
            run(Command::new("umoci")
                .args(["config", "--image", &img("base"), "--tag", tag])
                .args(["--config.env", "PATH=/bin"])
                .args([
                    "--config.label",
                    &format!("org.imagewarden.test.image={name}"),
                ])
                .args(args));
        }
        run(Command::new("umoci").args(["gc", "--layout"]).arg(&layout));
        // Rewrite the index: one entry per image, fully named.
        let index: serde_json::Value = serde_json::from_slice(
            &std::fs::read(layout.join("index.json")).expect("read index.json"),
        )
        .expect("parse index.json");
        let manifests = index["manifests"].as_array().expect("manifests");
        let mut entries = Vec::new();
        let mut digests = BTreeMap::new();
        for (tag, name, _) in &configs {
            let m = manifests
                .iter()
                .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == *tag)
                .unwrap_or_else(|| panic!("tag {tag} missing from {index}"));
            let mut e = m.clone();
            let short_tag = name.rsplit_once(':').map_or("latest", |(_, t)| t);
            e["annotations"] = serde_json::json!({
                "org.opencontainers.image.ref.name": short_tag,
                "io.containerd.image.name": name,
            });
            digests.insert(
                name.to_string(),
                m["digest"].as_str().expect("digest").to_string(),
            );
            entries.push(e);
        }
        let stage = dir.join("stage");
        std::fs::create_dir_all(&stage).expect("stage");
        std::fs::copy(layout.join("oci-layout"), stage.join("oci-layout")).expect("oci-layout");
        std::fs::write(
            stage.join("index.json"),
            serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": entries}))
                .expect("json"),
        )
        .expect("write index");
        std::os::unix::fs::symlink(layout.join("blobs"), stage.join("blobs")).expect("blobs link");
        let archive = dir.join("images.tar");
        run(Command::new("tar")
            .arg("-h")
            .arg("-C")
            .arg(&stage)
            .arg("-cf")
            .arg(&archive)
            .arg("."));
        TestImages {
            dir,
            archive,
            digests,
            build_time: t0.elapsed(),
        }
    }

    /// Manifest digest of one of the images.
    pub fn digest(&self, name: &str) -> &str {
        self.digests
            .get(name)
            .unwrap_or_else(|| panic!("no test image {name}"))
    }
}

impl Drop for TestImages {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private containerd child process.
#[derive(Debug)]
pub struct Containerd {
    /// Which release runs.
    pub runtime: Runtime,
    /// Its version (`1.6.20~ds1`, `2.1.9+unknown`).
    pub version: String,
    /// Directory of its `containerd`, `ctr` and shim.
    bin_dir: PathBuf,
    /// Everything of this instance lives here.
    pub dir: PathBuf,
    /// The gRPC socket (CRI and containerd API).
    pub socket: PathBuf,
    /// Host directory bind-mounted at [`MARKER_MOUNT`] in test containers.
    pub marker_dir: PathBuf,
    /// Time from spawn to a socket that answers.
    pub start_time: Duration,
    /// Short token unique to this instance, for container ids.
    pub token: String,
    child: Option<Child>,
    /// cgroup dirs (relative) this instance's containers may leave behind,
    /// removed (if empty) at drop. Only this instance's own: never a parent
    /// that other tests' containers share (a containerd namespace's cgroup,
    /// `kubepods`, `kubepods/burstable`), which an rmdir here could remove
    /// between another runc's mkdir of the parent and of its child (seen:
    /// RunPodSandbox failed with `mkdir /sys/fs/cgroup/blkio/kubepods/
    /// burstable: no such file or directory`). Those stay, as on a node.
    cgroup_leftovers: std::sync::Mutex<Vec<String>>,
    /// `native` or `overlayfs`.
    pub snapshotter: &'static str,
}

impl Containerd {
    /// Starts the host's containerd (1.6): `start_version(Runtime::V1_6)`.
    pub fn start() -> Containerd {
        Containerd::start_version(Runtime::V1_6)
    }

    /// Starts containerd of release `rt` with the config its version
    /// reads; panics with its log when it does not come up within 20 s, or
    /// when the release is not there ([`Runtime::preflight`] says why first).
    pub fn start_version(rt: Runtime) -> Containerd {
        Containerd::start_with(rt, "native")
    }

    /// [`Containerd::start_version`] with another snapshotter (`overlayfs`:
    /// each container's root is an overlay of the image's layers and its
    /// own writable upper layer).
    pub fn start_with(rt: Runtime, snapshotter: &'static str) -> Containerd {
        let version = rt.version().unwrap_or_else(|e| panic!("{e}"));
        let bin_dir = rt.bin_dir().expect("checked by version()");
        let dir = unique_dir("iw-ctd");
        for d in [
            "root", "state", "opt", "tmp", "cni/bin", "cni/conf", "marker", "pods",
        ] {
            std::fs::create_dir_all(dir.join(d)).expect("containerd dirs");
        }
        let socket = dir.join("containerd.sock");
        let runc = std::env::var("IW_TEST_RUNC").unwrap_or_else(|_| "runc".into());
        let config = config_toml(rt, &dir, &bin_dir, &runc).replace(
            "snapshotter = \"native\"",
            &format!("snapshotter = \"{snapshotter}\""),
        );
        let cfg = dir.join("config.toml");
        std::fs::write(&cfg, config).expect("write config");
        let log = std::fs::File::create(dir.join("containerd.log")).expect("log file");
        // containerd finds its shim on PATH: this release's first. runc is
        // not in the containerd 2 prefix, so Debian 12's is found after it.
        let path = std::env::join_paths(
            std::iter::once(bin_dir.clone()).chain(
                std::env::var_os("PATH")
                    .iter()
                    .flat_map(std::env::split_paths),
            ),
        )
        .expect("PATH");
        let t0 = Instant::now();
        let child = Command::new(bin_dir.join("containerd"))
            .arg("--config")
            .arg(&cfg)
            .env("PATH", path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn containerd");
        // Unique per instance (pid, counter, clock): container ids and so
        // cgroup paths never collide with a concurrent test or run.
        let token = dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("iw-ctd-"))
            .unwrap_or("x")
            .to_string();
        let mut me = Containerd {
            runtime: rt,
            version,
            bin_dir,
            marker_dir: dir.join("marker"),
            dir,
            socket,
            start_time: Duration::ZERO,
            token,
            child: Some(child),
            cgroup_leftovers: std::sync::Mutex::new(Vec::new()),
            snapshotter,
        };
        let deadline = t0 + Duration::from_secs(20);
        loop {
            if me.socket.exists() {
                let ok = me.ctr_raw("default", &["version"]).status.success();
                if ok {
                    break;
                }
            }
            if let Some(Ok(Some(st))) = me.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "{} exited ({st}) at start:\n{}",
                    me.runtime.name(),
                    me.log()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not answer within 20 s:\n{}",
                    me.runtime.name(),
                    me.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        me.start_time = t0.elapsed();
        me
    }

    /// containerd's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// `containerd 2 (2.1.9+unknown)`: release and version, for messages.
    pub fn label(&self) -> String {
        format!("{} ({})", self.runtime.name(), self.version)
    }

    /// Directory of this release's `containerd`, `ctr` and shim.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// `unix://` endpoint of the socket.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    fn ctr_cmd(&self, ns: &str) -> Command {
        let mut c = Command::new(self.bin_dir.join("ctr"));
        c.arg("-a")
            .arg(&self.socket)
            .args(["-n", ns])
            .env("CONTAINERD_SNAPSHOTTER", self.snapshotter)
            .stdin(Stdio::null());
        c
    }

    /// Runs `ctr` in a namespace; returns its output whatever the status.
    pub fn ctr_raw(&self, ns: &str, args: &[&str]) -> Output {
        self.ctr_cmd(ns)
            .args(args)
            .output()
            .expect("cannot run ctr")
    }

    /// Runs `ctr` in a namespace; panics (with containerd's log) on failure.
    pub fn ctr(&self, ns: &str, args: &[&str]) -> String {
        let out = self.ctr_raw(ns, args);
        if !out.status.success() {
            panic!(
                "ctr -n {ns} {args:?} failed: {}\n--- containerd log ---\n{}",
                String::from_utf8_lossy(&out.stderr),
                tail(&self.log(), 40)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Imports the test images into a namespace (unpacked for the snapshotter).
    pub fn import(&self, ns: &str, images: &TestImages) {
        let archive = images.archive.to_str().expect("utf-8 path");
        self.ctr(ns, &["images", "import", archive]);
        // A pull also creates `repo@sha256:...` references, from which the
        // CRI plugin reports repo digests; make them too.
        for (name, digest) in &images.digests {
            let repo = name.rsplit_once(':').map_or(name.as_str(), |(r, _)| r);
            let by_digest = format!("{repo}@{digest}");
            self.ctr(ns, &["images", "tag", "--force", name, &by_digest]);
        }
    }

    /// A container id unique to this instance.
    pub fn id(&self, name: &str) -> String {
        format!("iw-{}-{name}", self.token)
    }

    /// `ctr run -d`: starts a container of `image` with the marker
    /// directory bind-mounted; its marker file is named after `id`.
    pub fn ctr_run(&self, ns: &str, id: &str, image: &str, env: &[(&str, &str)]) {
        let out = self.try_ctr_run(ns, id, image, env);
        if !out.status.success() {
            panic!(
                "ctr -n {ns} run {id} failed: {}\n--- containerd log ---\n{}",
                String::from_utf8_lossy(&out.stderr),
                tail(&self.log(), 40)
            );
        }
    }

    /// `ctr run -d` whatever its outcome (a denied container may be killed
    /// while runc is still creating it).
    pub fn try_ctr_run(&self, ns: &str, id: &str, image: &str, env: &[(&str, &str)]) -> Output {
        let mount = format!(
            "type=bind,src={},dst={MARKER_MOUNT},options=rbind:rw",
            self.marker_dir.display()
        );
        let marker_env = format!("IW_MARKER_NAME={id}");
        let mut args: Vec<String> = vec![
            "run".into(),
            "-d".into(),
            "--mount".into(),
            mount,
            "--env".into(),
            marker_env,
        ];
        for (k, v) in env {
            args.push("--env".into());
            args.push(format!("{k}={v}"));
        }
        args.push(image.into());
        args.push(id.into());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        // Only this container's own cgroup: the namespace's (`/<ns>`) is
        // shared with the other tests running at the same time (see
        // `cgroup_leftovers`).
        self.remember_cgroup(format!("{ns}/{id}"));
        self.ctr_raw(ns, &refs)
    }

    /// `ctr tasks exec`: runs `cmd` in a running container, returns stdout.
    pub fn ctr_exec(&self, ns: &str, id: &str, exec_id: &str, cmd: &[&str]) -> String {
        let mut args = vec!["tasks", "exec", "--exec-id", exec_id, id];
        args.extend_from_slice(cmd);
        self.ctr(ns, &args)
    }

    /// `ctr tasks kill -s SIGKILL`.
    pub fn ctr_kill(&self, ns: &str, id: &str) {
        self.ctr(ns, &["tasks", "kill", "-s", "SIGKILL", id]);
    }

    /// Whether `ctr tasks ls` lists the task as RUNNING.
    pub fn task_running(&self, ns: &str, id: &str) -> bool {
        let out = self.ctr_raw(ns, &["tasks", "ls"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.split_whitespace().next() == Some(id) && l.contains("RUNNING"))
    }

    /// The task's status in `ctr tasks ls` (`RUNNING`, `STOPPED`, ...).
    pub fn task_status(&self, ns: &str, id: &str) -> Option<String> {
        let out = self.ctr_raw(ns, &["tasks", "ls"]);
        String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&id)).then(|| f.last().unwrap_or(&"").to_string())
        })
    }

    /// The positive signal that a denied `ctr run` container was stopped: `ctr
    /// run` failed in runc (killed while runc created it: nothing of the image
    /// ran), or its task stopped — waited for until `timeout` — with SIGKILL's
    /// exit status 137, as `ctr tasks rm` reports it (the task is removed).
    pub fn assert_ctr_denied(&self, ns: &str, id: &str, run: &Output, timeout: Duration) {
        if !run.status.success() {
            let err = String::from_utf8_lossy(&run.stderr);
            assert!(
                err.contains("runc create failed") || err.contains("init"),
                "unexpected ctr failure: {err}"
            );
            return;
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.task_status(ns, id).as_deref() {
                Some("RUNNING" | "CREATED") => {
                    assert!(
                        Instant::now() < deadline,
                        "the denied task {ns}/{id} still runs after {timeout:?}"
                    )
                }
                Some(_) => break,
                None => panic!("the denied task {ns}/{id} vanished: no exit status to check"),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // `ctr tasks rm` reports a non-zero exit status on stderr ("task ID exit
        // with non-zero exit code N", containerd 1.6 and 2) and exits 0.
        let rm = self.ctr_raw(ns, &["tasks", "rm", id]);
        let err = String::from_utf8_lossy(&rm.stderr);
        let code = err
            .split("exit code ")
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse::<i32>().ok());
        assert_eq!(
            code,
            Some(128 + libc::SIGKILL),
            "the denied task {ns}/{id} did not die by SIGKILL: `ctr tasks rm` exited {:?} and said {err:?}",
            rm.status.code()
        );
    }

    /// Path of the marker file a container with this marker name writes.
    pub fn marker(&self, name: &str) -> PathBuf {
        self.marker_dir.join(name)
    }

    /// Waits (bounded) for a container's marker file; its content if it came.
    pub fn wait_marker(&self, name: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(s) = std::fs::read_to_string(self.marker(name)) {
                if !s.is_empty() {
                    return Some(s);
                }
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn remember_cgroup(&self, rel: String) {
        if let Ok(mut v) = self.cgroup_leftovers.lock() {
            v.push(rel);
        }
    }

    /// Creates a pod sandbox (host network, cgroup parent
    /// `/kubepods/besteffort/pod<uid>` as the kubelet's cgroupfs driver
    /// would) and one container of `image` in it through CRI; returns
    /// (sandbox id, container id). The container's marker file is named
    /// `marker_name`.
    #[allow(clippy::too_many_arguments)]
    pub async fn cri_run_pod(
        &self,
        cri: &CriClient,
        pod_name: &str,
        pod_namespace: &str,
        pod_uid: &str,
        container_name: &str,
        image: &str,
        marker_name: &str,
    ) -> (String, String) {
        self.cri_run_pod_opt(
            cri,
            pod_name,
            pod_namespace,
            pod_uid,
            container_name,
            image,
            marker_name,
            false,
        )
        .await
    }

    /// [`Self::cri_run_pod`]; with `tolerate_start_failure`, a failed
    /// StartContainer is not a panic (a denied container may be killed while
    /// runc is still creating it).
    #[allow(clippy::too_many_arguments)]
    pub async fn cri_run_pod_opt(
        &self,
        cri: &CriClient,
        pod_name: &str,
        pod_namespace: &str,
        pod_uid: &str,
        container_name: &str,
        image: &str,
        marker_name: &str,
        tolerate_start_failure: bool,
    ) -> (String, String) {
        let pod = CriPod {
            name: pod_name,
            namespace: pod_namespace,
            uid: pod_uid,
            container_name,
            image,
            marker_name,
            qos: Qos::BestEffort,
            tolerate_start_failure,
            image_by_id: false,
            config_source: "api",
        };
        self.cri_run(cri, &pod).await
    }

    /// Runs `pod` through CRI as the kubelet does: `RunPodSandbox` with the
    /// pod's QoS cgroup parent ([`Qos::cgroup_parent`], cgroupfs driver),
    /// then `CreateContainer` and `StartContainer`; returns (sandbox id,
    /// container id).
    pub async fn cri_run(&self, cri: &CriClient, pod: &CriPod<'_>) -> (String, String) {
        let CriPod {
            name: pod_name,
            namespace: pod_namespace,
            uid: pod_uid,
            container_name,
            image,
            marker_name,
            qos,
            tolerate_start_failure,
            image_by_id,
            config_source,
        } = *pod;
        let image_spec = if image_by_id {
            // The kubelet resolves the pod's image first (ImageStatus) and
            // creates the container with the image id, the name as written
            // only in `user_specified_image` (ignored by containerd 1.6).
            let st = cri
                .image_status(image)
                .await
                .unwrap_or_else(|e| panic!("ImageStatus {image}: {e}"))
                .unwrap_or_else(|| panic!("ImageStatus: {} does not know {image}", self.label()));
            cri::ImageSpec {
                image: st.id,
                user_specified_image: image.into(),
                ..Default::default()
            }
        } else {
            cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }
        };
        let cgroup_parent = qos.cgroup_parent(pod_uid);
        // The pod's own cgroup, not the QoS parents (`kubepods`,
        // `kubepods/burstable`) every test's pods share (see
        // `cgroup_leftovers`).
        self.remember_cgroup(cgroup_parent.trim_start_matches('/').to_string());
        let log_dir = self.dir.join("pods").join(pod_uid);
        std::fs::create_dir_all(&log_dir).expect("pod log dir");
        let ns_opts = Some(cri::NamespaceOption {
            network: cri::NamespaceMode::Node as i32,
            pid: cri::NamespaceMode::Container as i32,
            ipc: cri::NamespaceMode::Pod as i32,
            ..Default::default()
        });
        let kube_labels = |extra: &[(&str, &str)]| {
            let mut m: std::collections::HashMap<String, String> = [
                ("io.kubernetes.pod.name", pod_name),
                ("io.kubernetes.pod.namespace", pod_namespace),
                ("io.kubernetes.pod.uid", pod_uid),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
            for (k, v) in extra {
                m.insert(k.to_string(), v.to_string());
            }
            m
        };
        let sandbox_config = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: pod_name.into(),
                uid: pod_uid.into(),
                namespace: pod_namespace.into(),
                attempt: 0,
            }),
            // No hostname: a host-network pod shares the host's UTS
            // namespace, where runc refuses to set one.
            log_directory: log_dir.display().to_string(),
            labels: kube_labels(&[]),
            annotations: [(
                "kubernetes.io/config.source".to_string(),
                config_source.to_string(),
            )]
            .into_iter()
            .collect(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: cgroup_parent.clone(),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: ns_opts.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let sandbox_id = cri
            .run_pod_sandbox(sandbox_config.clone())
            .await
            .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", tail(&self.log(), 40)));
        self.remember_cgroup(format!(
            "{}/{sandbox_id}",
            cgroup_parent.trim_start_matches('/')
        ));
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: container_name.into(),
                attempt: 0,
            }),
            image: Some(image_spec),
            envs: vec![cri::KeyValue {
                key: "IW_MARKER_NAME".into(),
                value: marker_name.into(),
            }],
            mounts: vec![cri::Mount {
                container_path: MARKER_MOUNT.into(),
                host_path: self.marker_dir.display().to_string(),
                ..Default::default()
            }],
            labels: kube_labels(&[("io.kubernetes.container.name", container_name)]),
            log_path: format!("{container_name}.log"),
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(cri::LinuxContainerSecurityContext {
                    namespace_options: ns_opts,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let container_id = cri
            .create_container(&sandbox_id, config, sandbox_config)
            .await
            .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", tail(&self.log(), 40)));
        self.remember_cgroup(format!(
            "{}/{container_id}",
            cgroup_parent.trim_start_matches('/')
        ));
        if let Err(e) = cri.start_container(&container_id).await {
            if !tolerate_start_failure {
                panic!("StartContainer: {e}\n{}", tail(&self.log(), 40));
            }
            eprintln!("StartContainer {container_id} failed (tolerated): {e}");
        }
        (sandbox_id, container_id)
    }

    /// Kills and deletes every task and container of every namespace.
    /// Tears down every task and container this instance runs. Each `ctr`
    /// call is bounded ([`TEARDOWN_CALL`]): a test that failed may leave a
    /// process the kernel holds (SIGSTOP) with no agent to release it, and
    /// teardown must not hang on it (the shims are killed after it).
    fn kill_everything(&self) {
        // After one call that does not return, containerd is wedged: the
        // rest is left to killing the shims.
        let wedged = std::cell::Cell::new(false);
        let ctr = |ns: &str, args: &[&str]| {
            if wedged.get() {
                return String::new();
            }
            self.ctr_bounded(ns, args).unwrap_or_else(|| {
                wedged.set(true);
                String::new()
            })
        };
        let nss = ctr("default", &["namespaces", "ls", "-q"]);
        for ns in nss.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let tasks = ctr(ns, &["tasks", "ls", "-q"]);
            for id in tasks.lines() {
                ctr(ns, &["tasks", "kill", "-a", "-s", "SIGKILL", id]);
            }
            for id in tasks.lines() {
                ctr(ns, &["tasks", "rm", "-f", id]);
            }
            let ctrs = ctr(ns, &["containers", "ls", "-q"]);
            for id in ctrs.lines() {
                ctr(ns, &["containers", "rm", id]);
            }
        }
    }

    /// Runs `ctr` for teardown: its stdout (empty if it failed), or `None`
    /// if it did not return within [`TEARDOWN_CALL`] (then it is killed,
    /// and said).
    fn ctr_bounded(&self, ns: &str, args: &[&str]) -> Option<String> {
        let Ok(mut child) = self
            .ctr_cmd(ns)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
        else {
            return Some(String::new());
        };
        let mut out = child.stdout.take().expect("piped");
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut out, &mut s);
            s
        });
        let deadline = Instant::now() + TEARDOWN_CALL;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return Some(reader.join().unwrap_or_default()),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    eprintln!("teardown: ctr -n {ns} {args:?} did not return within {TEARDOWN_CALL:?}: killed; the rest is left to killing the shims");
                    let _ = child.kill();
                    let _ = child.wait();
                    let _ = reader.join();
                    return None;
                }
            }
        }
    }

    /// Shims serving this instance (their command line names our socket).
    fn shim_pids(&self) -> Vec<i32> {
        let needle = self.socket.display().to_string();
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir("/proc") else {
            return out;
        };
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
                let cmd = String::from_utf8_lossy(&cmd);
                if cmd.contains("containerd-shim") && cmd.contains(&needle) {
                    out.push(pid);
                }
            }
        }
        out
    }
}

/// The config file of release `rt` for an instance living in `d`.
fn config_toml(rt: Runtime, d: &Path, bin_dir: &Path, runc: &str) -> String {
    let d = d.display();
    match rt {
        Runtime::V1_6 => format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.internal.v1.tracing", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[debug]
  address = ""
  level = "info"
[metrics]
  address = ""
[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "{d}/opt"
  [plugins."io.containerd.grpc.v1.cri"]
    disable_tcp_service = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    sandbox_image = "{PAUSE}"
    enable_selinux = false
    disable_apparmor = true
    restrict_oom_score_adj = true
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "native"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = false
          BinaryName = "{runc}"
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "{d}/cni/bin"
      conf_dir = "{d}/cni/conf"
"#
        ),
        // containerd 2 reads version 3: the CRI plugin is split into
        // `io.containerd.cri.v1.images` (snapshotter, the sandbox image as
        // `pinned_images.sandbox`) and `io.containerd.cri.v1.runtime`
        // (runtimes, CNI); `io.containerd.grpc.v1.cri` keeps only the
        // streaming server. NRI (on by default in 2.x) would listen on the
        // host's /var/run/nri/nri.sock: off. `ctr images import` goes
        // through the transfer service, which unpacks only for the
        // platform/snapshotter pairs of its `unpack_config`.
        Runtime::V2 => format!(
            r#"version = 3
root = "{d}/root"
state = "{d}/state"
temp = "{d}/tmp"
disabled_plugins = ["io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.blockfile", "io.containerd.snapshotter.v1.erofs"]
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[debug]
  address = ""
  level = "info"
[metrics]
  address = ""
[plugins]
  [plugins.'io.containerd.internal.v1.opt']
    path = "{d}/opt"
  [plugins.'io.containerd.nri.v1.nri']
    disable = true
  [plugins.'io.containerd.transfer.v1.local']
    [[plugins.'io.containerd.transfer.v1.local'.unpack_config]]
      platform = "linux/{arch}"
      snapshotter = "native"
  [plugins.'io.containerd.grpc.v1.cri']
    disable_tcp_service = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = "native"
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = "{PAUSE}"
  [plugins.'io.containerd.cri.v1.runtime']
    enable_selinux = false
    disable_apparmor = true
    restrict_oom_score_adj = true
    enable_cdi = false
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = "runc"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        runtime_path = "{shim}"
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          SystemdCgroup = false
          BinaryName = "{runc}"
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ["{d}/cni/bin"]
      conf_dir = "{d}/cni/conf"
"#,
            shim = bin_dir.join("containerd-shim-runc-v2").display(),
            arch = match std::env::consts::ARCH {
                "x86_64" => "amd64",
                "aarch64" => "arm64",
                other => other,
            },
        ),
    }
}

/// A pod's QoS class: where the kubelet puts its cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    /// `/kubepods/pod<uid>`
    Guaranteed,
    /// `/kubepods/burstable/pod<uid>`
    Burstable,
    /// `/kubepods/besteffort/pod<uid>`
    BestEffort,
}

impl Qos {
    /// The pod's cgroup parent as the kubelet's cgroupfs driver passes it
    /// to `RunPodSandbox` (containers go in `<parent>/<container id>`).
    pub fn cgroup_parent(self, pod_uid: &str) -> String {
        match self {
            Qos::Guaranteed => format!("/kubepods/pod{pod_uid}"),
            Qos::Burstable => format!("/kubepods/burstable/pod{pod_uid}"),
            Qos::BestEffort => format!("/kubepods/besteffort/pod{pod_uid}"),
        }
    }
}

/// One pod with one container, for [`Containerd::cri_run`].
#[derive(Debug, Clone, Copy)]
pub struct CriPod<'a> {
    /// Pod name.
    pub name: &'a str,
    /// Pod namespace.
    pub namespace: &'a str,
    /// Pod uid.
    pub uid: &'a str,
    /// The container's name.
    pub container_name: &'a str,
    /// Its image, by name.
    pub image: &'a str,
    /// Name of the marker file its entrypoint writes.
    pub marker_name: &'a str,
    /// QoS class (cgroup parent).
    pub qos: Qos,
    /// A failed StartContainer is not a panic (a denied container may be
    /// killed while runc is still creating it).
    pub tolerate_start_failure: bool,
    /// Create the container as the kubelet does: `ImageSpec.image` is the
    /// image id (`sha256:<config>`, from `ImageStatus`) and the name as
    /// written goes in `user_specified_image`. Off: the name in `image`
    /// (what `crictl` and other direct CRI clients do).
    pub image_by_id: bool,
    /// The sandbox annotation `kubernetes.io/config.source` the kubelet
    /// stamps on every Pod it runs: `api` (the API server's), `file` or
    /// `http` (a static Pod from the kubelet's own manifests).
    pub config_source: &'a str,
}

impl<'a> CriPod<'a> {
    /// A burstable pod (the kubelet's usual class) whose container must
    /// start, created as the kubelet creates it (image by id).
    pub fn new(
        name: &'a str,
        namespace: &'a str,
        uid: &'a str,
        image: &'a str,
        marker_name: &'a str,
    ) -> Self {
        CriPod {
            name,
            namespace,
            uid,
            container_name: "main",
            image,
            marker_name,
            qos: Qos::Burstable,
            tolerate_start_failure: false,
            image_by_id: true,
            config_source: "api",
        }
    }
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Bound on one `ctr` call while tearing an instance down.
const TEARDOWN_CALL: Duration = Duration::from_secs(20);

impl Drop for Containerd {
    fn drop(&mut self) {
        if std::env::var_os("IW_KEEP_CONTAINERD").is_some() {
            eprintln!("IW_KEEP_CONTAINERD set: leaving {}", self.dir.display());
            return;
        }
        self.kill_everything();
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        for pid in self.shim_pids() {
            // SAFETY: a shim of our own containerd, found by its socket.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        // What the shims leave (a process the kernel held with no agent
        // left to decide it): containers of this instance, whose ids carry
        // its token, killed through their cgroup v2 (`<namespace>/<id>`).
        for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
            for ns in std::fs::read_dir(root).into_iter().flatten().flatten() {
                for c in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
                    if c.file_name()
                        .to_string_lossy()
                        .contains(self.token.as_str())
                    {
                        let _ = std::fs::write(c.path().join("cgroup.kill"), b"1");
                    }
                }
            }
        }
        unmount_under(&self.dir);
        // cgroups that runc leaves behind (parents, pod cgroups): innermost
        // first; rmdir only removes empty ones.
        let mut rels = self
            .cgroup_leftovers
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default();
        rels.sort_by_key(|r| std::cmp::Reverse(r.matches('/').count()));
        if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
            let mut roots: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
            roots.push(PathBuf::from("/sys/fs/cgroup"));
            for rel in &rels {
                for root in &roots {
                    let _ = std::fs::remove_dir(root.join(rel));
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Lazily unmounts every mount point under `dir`, deepest first.
pub fn unmount_under(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = dir.display().to_string();
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| p.replace("\\040", " "))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        if let Ok(c) = std::ffi::CString::new(p) {
            // SAFETY: valid NUL-terminated path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}
