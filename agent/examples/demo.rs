//! `cargo xtask demo`: the seed's lab on your own machine, in a minute.
//!
//! Starts a private containerd (Debian's, with runc), builds two images
//! locally (no registry needed) named `docker.io/library/nginx:latest` and
//! `public.ecr.aws/nginx/nginx:latest`, starts imagewarden in enforce mode
//! with the seed's Kyverno policy (only `public.ecr.aws/*`), then runs one
//! container of each and shows what happened. Needs root.
#![allow(dead_code)]

#[path = "../tests/support/containerd.rs"]
mod containerd;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use containerd::{Containerd, TestImages, ECR_NGINX, NGINX};

fn say(s: &str) {
    println!("\n\x1b[1m==> {s}\x1b[0m");
}

fn main() {
    if let Err(why) = containerd::preflight() {
        eprintln!("demo cannot run here: {why}\n(run `cargo xtask setup` as root first)");
        std::process::exit(2);
    }
    let agent_bin = std::env::args()
        .nth(1)
        .expect("usage: demo PATH-TO-imagewarden");
    say("building two images locally (busybox-static + an entrypoint that writes a marker file first)");
    let images = TestImages::build();
    for (name, digest) in &images.digests {
        println!("    {name}  {digest}");
    }
    say("starting a private containerd + runc");
    let ctd = Containerd::start();
    ctd.import("default", &images);
    println!("    socket {}", ctd.socket.display());

    say("starting imagewarden: enforce mode, policy = the seed's Kyverno ClusterPolicy (public.ecr.aws/* only)");
    let t0 = Instant::now();
    let mut agent = Command::new(&agent_bin)
        .args([
            "run",
            "--standalone",
            "--mode",
            "enforce",
            "--runtime-endpoint",
        ])
        .arg(ctd.endpoint())
        .env("IMAGEWARDEN_LOG", "warn,imagewarden::cmd_run=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start imagewarden");
    let (tx, rx) = mpsc::channel::<String>();
    let out = agent.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let (rtx, rrx) = mpsc::channel();
    let err = agent.stderr.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            eprintln!("    [agent] {l}");
            if l.contains("agent running") {
                let _ = rtx.send(());
            }
        }
    });
    if rrx.recv_timeout(Duration::from_secs(30)).is_err() {
        let _ = agent.kill();
        panic!("imagewarden did not start");
    }
    println!("    agent enforcing after {:?}", t0.elapsed());

    let t = &ctd.token;
    let bad = format!("nginx-dockerhub-{t}");
    let good = format!("nginx-ecr-{t}");
    say(&format!("ctr run {NGINX}  (not allowed by the policy)"));
    // The kernel may kill it while runc is still creating it (its `runc
    // init` exec lands in the denied cgroup): then ctr itself reports the
    // failure, which is as good — nothing of the image ran.
    let out = ctd.try_ctr_run("default", &bad, NGINX, &[]);
    if !out.status.success() {
        println!("    ctr: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    say(&format!("ctr run {ECR_NGINX}  (allowed)"));
    ctd.ctr_run("default", &good, ECR_NGINX, &[]);
    std::thread::sleep(Duration::from_secs(2));

    say("what imagewarden printed (JSON findings on stdout)");
    while let Ok(l) = rx.try_recv() {
        println!("    {l}");
    }
    say("what actually ran");
    for id in [&bad, &good] {
        let ran = ctd.marker(id).exists();
        println!(
            "    {id}: entrypoint {}",
            if ran {
                "RAN"
            } else {
                "never ran (killed at exec)"
            }
        );
    }
    let tasks = ctd.ctr("default", &["tasks", "ls"]);
    for l in tasks.lines() {
        println!("    {l}");
    }
    let exec = ctd.ctr_raw(
        "default",
        &[
            "tasks",
            "exec",
            "--exec-id",
            "demo",
            &good,
            "/bin/sh",
            "-c",
            "echo hello from the allowed container",
        ],
    );
    println!(
        "    exec into {good}: {}",
        String::from_utf8_lossy(&exec.stdout).trim()
    );

    say("stopping");
    // SAFETY: plain syscall on our child.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let _ = agent.wait();
    drop(ctd);
    drop(images);
}
