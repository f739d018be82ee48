//! Hostile input to the `imagewarden` binary (issue 8, item 5): 64 KiB
//! image strings and non-UTF-8 arguments to `check`, hostile policy files,
//! and a non-UTF-8 exec file name and comm seen by `run` (its finding line
//! must be valid JSON). Clear errors and exit codes, never a panic.
//!
//! The `check` cases need nothing; the `run` case needs root (SKIPPED
//! without, fails under `CI=true`).
use std::{
    ffi::OsStr,
    fs,
    os::unix::{
        ffi::OsStrExt,
        fs::{MetadataExt, PermissionsExt},
        process::{CommandExt, ExitStatusExt},
    },
    path::PathBuf,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

#[path = "support/agent.rs"]
mod agent;
#[path = "support/host.rs"]
mod host;

use agent::AgentProcess;
use host::{cgroup2_root, privileged};

const SEED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/policies/restrict-registries.yaml"
);

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("iw-input-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

fn imagewarden(args: &[&OsStr]) -> Output {
    let t0 = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_imagewarden"))
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .output()
        .expect("run imagewarden");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked"),
        "imagewarden panicked: {stderr}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "imagewarden took {:?}",
        t0.elapsed()
    );
    out
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

fn big(head: &str, fill: &str) -> String {
    let mut s = head.to_string();
    while s.len() < 64 << 10 {
        s.push_str(fill);
    }
    s
}

#[test]
fn check_refuses_64_kib_images_one_json_line_each() {
    let images = [
        big("public.ecr.aws/", "a"),
        big("public.ecr.aws/x:", "t"),
        big("", "/"),
        big("public.ecr.aws/x@sha256:", "0"),
        "public.ecr.aws/nginx/nginx:1".to_string(),
    ];
    let mut args: Vec<&OsStr> = vec![os("check"), os("--policy"), os(SEED)];
    args.extend(images.iter().map(|s| os(s)));
    let out = imagewarden(&args);
    assert_eq!(out.status.code(), Some(1), "some image denied: {out:?}");
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .expect("UTF-8 output")
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {}", &l[..l.len().min(200)]))
        })
        .collect();
    assert_eq!(lines.len(), images.len());
    for (img, rec) in images.iter().zip(&lines) {
        assert_eq!(
            rec["image"].as_str(),
            Some(img.as_str()),
            "the record names its image"
        );
        if img.len() > 1024 {
            assert_eq!(
                rec["valid"], false,
                "a 64 KiB reference is not valid: {}",
                &rec["reason"]
            );
            assert_eq!(rec["allowed"], false, "an invalid reference must be denied");
        }
    }
    assert_eq!(lines[4]["allowed"], true, "{}", lines[4]);

    // Thirty of them at once (~2 MB of arguments), in bounded time.
    let many: Vec<String> = (0..30)
        .map(|i| big(&format!("r{i}.example.com/"), "b"))
        .collect();
    let mut args: Vec<&OsStr> = vec![os("check"), os("--policy"), os(SEED)];
    args.extend(many.iter().map(|s| os(s)));
    let out = imagewarden(&args);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 30);

    // In a manifest.
    let dir = tempdir("manifest");
    let m = dir.join("pod.yaml");
    fs::write(
        &m,
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n  containers:\n  - name: c\n    image: \"{}\"\n", images[0]),
    )
    .unwrap();
    let out = imagewarden(&[
        os("check"),
        os("--policy"),
        os(SEED),
        os("--manifest"),
        m.as_os_str(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn check_with_non_utf8_arguments_is_a_usage_error() {
    let bad = OsStr::from_bytes(b"public.ecr.aws/\xff\xfe:1");
    let out = imagewarden(&[os("check"), os("--policy"), os(SEED), bad]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "usage error: {stderr}");
    assert!(
        stderr.to_lowercase().contains("utf-8") || stderr.contains("UTF"),
        "{stderr}"
    );
    let out = imagewarden(&[
        os("check"),
        os("--policy"),
        OsStr::from_bytes(b"/tmp/\xff.yaml"),
        os("nginx"),
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_with_hostile_policy_files_exits_2_with_a_message() {
    let dir = tempdir("policies");
    let mut bomb = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for (p, c) in ["a", "b", "c", "d", "e", "f", "g", "h"]
        .iter()
        .zip(["b", "c", "d", "e", "f", "g", "h", "i"])
    {
        bomb.push_str(&format!(
            "{c}: &{c} [{}]\n",
            vec![format!("*{p}"); 9].join(",")
        ));
    }
    let mut not_utf8 = fs::read(SEED).unwrap();
    not_utf8.extend_from_slice(b"# \xff\xfe\n");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("bomb.yaml", bomb.into_bytes()),
        ("not-utf8.yaml", not_utf8),
        (
            "deep.yaml",
            format!("{}{}", "[".repeat(5000), "]".repeat(5000)).into_bytes(),
        ),
        ("empty.yaml", Vec::new()),
        ("binary.yaml", (0..=255u8).cycle().take(1 << 20).collect()),
    ];
    for (name, bytes) in cases {
        let p = dir.join(name);
        fs::write(&p, bytes).unwrap();
        let out = imagewarden(&[os("check"), os("--policy"), p.as_os_str(), os("nginx")]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(
            stderr.contains(name),
            "{name}: the message must name the file: {stderr}"
        );
        assert!(
            stderr.len() < 8192,
            "{name}: {} bytes of error",
            stderr.len()
        );
        assert!(
            out.stdout.is_empty(),
            "{name}: no verdict printed on a policy error"
        );
        eprintln!("{name}: {}", stderr.trim());
    }
    let _ = fs::remove_dir_all(dir);
}

/// `run` sees a binary whose path and comm are not UTF-8 exec in a denied
/// cgroup: killed, and the finding line is valid JSON with the names
/// decoded lossily (U+FFFD).
#[test]
fn run_prints_valid_json_for_non_utf8_exec_names() {
    if !privileged() {
        return;
    }
    let cg = cgroup2_root().join(format!("imagewarden-input-utf8-{}", std::process::id()));
    let _ = fs::remove_dir(&cg);
    fs::create_dir(&cg).unwrap();
    let cg_id = fs::metadata(&cg).unwrap().ino();
    let dir = tempdir("utf8-run");
    let bin = dir.join(OsStr::from_bytes(b"iw-\xff\xfe-\xc3("));
    fs::copy("/bin/true", &bin).unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();

    let cg_arg = cg.to_str().expect("utf-8 cgroup path");
    let agent = AgentProcess::start(&[
        "run",
        "--standalone",
        "--fail-mode",
        "open",
        "--mode",
        "enforce",
        "--runtime-endpoint",
        "unix:///nonexistent.sock",
        "--deny-cgroup",
        cg_arg,
    ]);

    let procs = fs::OpenOptions::new()
        .write(true)
        .open(cg.join("cgroup.procs"))
        .unwrap();
    let mut c = Command::new(&bin);
    // SAFETY: only write(2) between fork and exec.
    unsafe {
        c.pre_exec(move || {
            use std::os::fd::AsRawFd;
            if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let st = c.status().unwrap();
    assert_eq!(st.signal(), Some(libc::SIGKILL), "{st:?}");

    // Each stdout line must be UTF-8 and JSON: the helper reads raw bytes
    // and fails the test on a line that is not.
    let finding = agent.wait_for_finding(|v| v["cgroup_id"] == cg_id, Duration::from_secs(5));
    let f = finding.expect("no finding for the non-UTF-8 exec");
    assert_eq!(f["action"], "killed", "{f}");
    let name = f["filename"].as_str().unwrap();
    assert!(name.ends_with("/iw-\u{fffd}\u{fffd}-\u{fffd}("), "{name}");
    assert_eq!(f["comm"], "iw-\u{fffd}\u{fffd}-\u{fffd}(", "{f}");
    // SIGTERM: a clean exit.
    agent.stop();
    let _ = fs::remove_dir(&cg);
    let _ = fs::remove_dir_all(dir);
}
