//! The container runtime sources against a REAL containerd with its CRI
//! plugin and runc, started privately by `support::containerd`: every test
//! runs once per release, as `containerd_1_6::<test>` (the host's Debian 12
//! containerd 1.6, config version 2) and `containerd_2::<test>` (Debian
//! sid's containerd 2.x from `cargo xtask setup`, config version 3).
//! `IW_TEST_CONTAINERD=1.6|2|all` picks the releases (default all).
//!
//! Needs root and `containerd runc umoci busybox-static` (and `cargo xtask
//! setup` for containerd 2). Where that is missing the tests print a loud
//! SKIP, and fail under `CI=true`.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use imagewarden::sources::cgroup::{
    cgroup_id_of_dir, cgroup_id_of_pid, find_cgroup2_mount, resolve_proc_cgroup, unified_path,
    RuntimeKind,
};
use imagewarden::sources::containerd::ContainerdClient;
use imagewarden::sources::cri::{CriClient, CriError};
use imagewarden::sources::{ContainerInfo, ContainerKind, ContainerState, EventKind};
use support::containerd::{
    runtime_ready, Containerd, CriPod, Qos, Runtime, TestImages, ECR_NGINX, NGINX, PAUSE,
};

/// One test per containerd release: `containerd_1_6::NAME` and
/// `containerd_2::NAME`, each calling `NAME(test_name, release)`.
macro_rules! per_release {
    ($($name:ident),* $(,)?) => {
        mod containerd_1_6 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(concat!("containerd_1_6::", stringify!($name)), super::Runtime::V1_6).await
                }
            )*
        }
        mod containerd_2 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(concat!("containerd_2::", stringify!($name)), super::Runtime::V2).await
                }
            )*
        }
    };
}

per_release!(
    containerd_api_lists_ctr_containers_in_every_namespace,
    cri_lists_pod_containers_with_pod_metadata,
    containerd_events_report_start_and_exit,
    cri_container_events_by_release,
    one_image_two_names,
    cri_listing_described_by_containerd_needs_no_verbose_status,
);

/// Starts containerd of release `rt` and builds the images, or says why not.
fn setup(test: &str, rt: Runtime) -> Option<(Containerd, TestImages)> {
    if !runtime_ready(test, rt) {
        return None;
    }
    let images = TestImages::build();
    let ctd = Containerd::start_version(rt);
    eprintln!(
        "[timing] {test}: {}: images built in {:?}, containerd answered in {:?}",
        ctd.label(),
        images.build_time,
        ctd.start_time
    );
    Some((ctd, images))
}

fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let t0 = Instant::now();
    let r = f();
    eprintln!("[timing] {what}: {:?}", t0.elapsed());
    r
}

fn find<'a>(list: &'a [ContainerInfo], ns: &str, id: &str) -> &'a ContainerInfo {
    list.iter()
        .find(|c| c.namespace.as_deref() == Some(ns) && c.id == id)
        .unwrap_or_else(|| panic!("{ns}/{id} not listed; got {list:#?}"))
}

/// The container's cgroup2 directory from its spec equals the one of its
/// pid, and both have the same cgroup id; returns (id, /proc cgroup text).
fn check_cgroup(c: &ContainerInfo) -> (u64, String) {
    let mount = find_cgroup2_mount().expect("cgroup2 mount");
    let pid = c.pid.unwrap_or_else(|| panic!("no pid for {c:#?}"));
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/cgroup: {e}"));
    let from_pid = cgroup_id_of_pid(&mount, pid).expect("cgroup id of pid");
    let spec_path = c
        .cgroup_path
        .as_deref()
        .unwrap_or_else(|| panic!("no cgroup path for {c:#?}"));
    assert_eq!(unified_path(&text), Some(spec_path), "{c:#?}");
    let dir = mount.join(spec_path.trim_start_matches('/'));
    let from_dir = cgroup_id_of_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    assert_eq!(
        from_dir,
        from_pid,
        "cgroup id of {} vs pid {pid}",
        dir.display()
    );
    assert!(from_dir > 1, "a container is not in the root cgroup");
    (from_dir, text)
}

async fn containerd_api_lists_ctr_containers_in_every_namespace(test: &str, rt: Runtime) {
    let Some((ctd, images)) = setup(test, rt) else {
        return;
    };
    let other_ns = "iw-other";
    timed("image import (2 namespaces)", || {
        ctd.import("default", &images);
        ctd.import(other_ns, &images);
    });
    let web = ctd.id("web");
    let mirror = ctd.id("mirror");
    let idle = ctd.id("idle");
    timed("ctr run -d (nginx, default)", || {
        ctd.ctr_run("default", &web, NGINX, &[])
    });
    timed("ctr run -d (ecr, other ns)", || {
        ctd.ctr_run(other_ns, &mirror, ECR_NGINX, &[])
    });
    // A container without a task: created, never started.
    ctd.ctr("default", &["containers", "create", NGINX, &idle]);
    for id in [&web, &mirror] {
        let m = ctd
            .wait_marker(id, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("entrypoint of {id} wrote no marker"));
        assert!(m.starts_with("started"), "{m}");
    }
    assert!(std::fs::read_to_string(ctd.marker(&web))
        .unwrap()
        .contains("image=nginx"));
    assert!(std::fs::read_to_string(ctd.marker(&mirror))
        .unwrap()
        .contains("image=ecr-nginx"));

    let client = ContainerdClient::connect(&ctd.endpoint())
        .await
        .expect("connect");
    let nss = client.namespaces().await.expect("namespaces");
    assert!(
        nss.contains(&"default".to_string()) && nss.contains(&other_ns.to_string()),
        "{nss:?}"
    );
    let all = client.list_all().await.expect("list_all");

    for (ns, id, image) in [("default", &web, NGINX), (other_ns, &mirror, ECR_NGINX)] {
        let c = find(&all, ns, id);
        assert_eq!(c.runtime, "containerd");
        assert_eq!(c.image_as_written.as_deref(), Some(image));
        let repo = image.rsplit_once(':').unwrap().0;
        assert_eq!(
            c.image_ref.as_deref(),
            Some(format!("{repo}@{}", images.digest(image)).as_str()),
            "{c:#?}"
        );
        assert!(
            c.image_id
                .as_deref()
                .is_some_and(|i| i.starts_with("sha256:")),
            "{c:#?}"
        );
        assert_eq!(c.state, ContainerState::Running);
        assert_eq!(
            c.cgroup_path.as_deref(),
            Some(format!("/{ns}/{id}").as_str())
        );
        let (cg_id, text) = check_cgroup(c);
        // The /proc text resolves back to this very container.
        let r = resolve_proc_cgroup(&text).expect("resolves");
        assert_eq!(
            (r.runtime, r.namespace.as_deref(), r.id.as_str()),
            (RuntimeKind::Containerd, Some(ns), id.as_str())
        );
        eprintln!("{ns}/{id}: pid {:?} cgroup id {cg_id}", c.pid);
    }
    assert_ne!(images.digest(NGINX), images.digest(ECR_NGINX));
    let i = find(&all, "default", &idle);
    assert_eq!((i.state, i.pid), (ContainerState::Created, None));
    assert_eq!(i.image_as_written.as_deref(), Some(NGINX));

    // exec helper: runs inside the container's filesystem.
    let out = ctd.ctr_exec(
        "default",
        &web,
        "iw-exec-1",
        &["cat", "/iw-marker/../entrypoint.sh"],
    );
    assert!(out.contains("IW_MARKER_NAME"), "{out}");
}

async fn cri_lists_pod_containers_with_pod_metadata(test: &str, rt: Runtime) {
    let Some((ctd, images)) = setup(test, rt) else {
        return;
    };
    timed("image import (k8s.io)", || ctd.import("k8s.io", &images));
    let cri = CriClient::connect(&ctd.endpoint())
        .await
        .expect("CRI connect");
    assert_eq!(cri.runtime_name(), "containerd");
    assert_eq!(cri.runtime_namespace().as_deref(), Some("k8s.io"));
    // CRI's Version reports the release the harness started.
    assert!(
        cri.runtime_version()
            .trim_start_matches('v')
            .starts_with(&format!("{}.", ctd.version.split('.').next().unwrap())),
        "CRI says {} for {}",
        cri.runtime_version(),
        ctd.label()
    );
    let uid = "0b1c2d3e-4f50-4a6b-8c7d-9e0f1a2b3c4d";
    let t0 = Instant::now();
    let pod = CriPod {
        container_name: "nginx",
        ..CriPod::new("web-0", "prod", uid, NGINX, "cri-web")
    };
    let (sandbox, cid) = ctd.cri_run(&cri, &pod).await;
    eprintln!(
        "[timing] CRI RunPodSandbox+CreateContainer+StartContainer: {:?}",
        t0.elapsed()
    );
    ctd.wait_marker("cri-web", Duration::from_secs(10))
        .expect("CRI container's entrypoint wrote no marker");

    let list = cri.list_all().await.expect("CRI list");
    let c = list
        .iter()
        .find(|c| c.id == cid)
        .unwrap_or_else(|| panic!("{cid} not listed: {list:#?}"));
    assert_eq!(c.runtime, "cri");
    assert_eq!(c.namespace.as_deref(), Some("k8s.io"));
    assert_eq!(c.kind, Some(ContainerKind::Container));
    assert_eq!(c.sandbox_id.as_deref(), Some(sandbox.as_str()));
    assert_eq!(c.pod_name.as_deref(), Some("web-0"));
    assert_eq!(c.pod_namespace.as_deref(), Some("prod"));
    assert_eq!(c.pod_uid.as_deref(), Some(uid));
    assert_eq!(c.container_name.as_deref(), Some("nginx"));
    assert_eq!(c.image_as_written.as_deref(), Some(NGINX));
    assert_eq!(
        c.image_ref.as_deref(),
        Some(format!("docker.io/library/nginx@{}", images.digest(NGINX)).as_str()),
        "{c:#?}"
    );
    assert!(
        c.image_id
            .as_deref()
            .is_some_and(|i| i.starts_with("sha256:")),
        "{c:#?}"
    );
    assert_eq!(c.state, ContainerState::Running);
    assert_eq!(
        c.labels.get("io.kubernetes.pod.uid").map(String::as_str),
        Some(uid)
    );
    assert_eq!(
        c.cgroup_path.as_deref(),
        Some(format!("{}/{cid}", Qos::Burstable.cgroup_parent(uid)).as_str())
    );
    let (_, text) = check_cgroup(c);
    let r = resolve_proc_cgroup(&text).expect("resolves");
    assert_eq!(
        (r.runtime, r.id.as_str(), r.pod_uid.as_deref()),
        (RuntimeKind::Cri, cid.as_str(), Some(uid))
    );

    let sb = list
        .iter()
        .find(|c| c.id == sandbox)
        .unwrap_or_else(|| panic!("sandbox not listed: {list:#?}"));
    assert_eq!(sb.kind, Some(ContainerKind::Sandbox));
    assert_eq!(sb.pod_uid.as_deref(), Some(uid));
    assert_eq!(sb.image_as_written.as_deref(), Some(PAUSE));
    assert_eq!(
        sb.image_ref.as_deref(),
        Some(format!("registry.k8s.io/pause@{}", images.digest(PAUSE)).as_str())
    );
    check_cgroup(sb);

    // A second pod, guaranteed QoS, its container created by image name
    // (as crictl does) rather than by id (as the kubelet does, above).
    let uid2 = "1c2d3e4f-5061-4b7c-8d9e-0f1a2b3c4d5e";
    let pod2 = CriPod {
        qos: Qos::Guaranteed,
        image_by_id: false,
        ..CriPod::new("mirror-0", "prod", uid2, ECR_NGINX, "cri-mirror")
    };
    let (sandbox2, cid2) = ctd.cri_run(&cri, &pod2).await;
    ctd.wait_marker("cri-mirror", Duration::from_secs(10))
        .expect("second CRI container's entrypoint wrote no marker");
    let c2 = cri.container_status(&cid2).await.expect("ContainerStatus");
    assert_eq!(c2.image_as_written.as_deref(), Some(ECR_NGINX), "{c2:#?}");
    assert_eq!(
        c2.image_ref.as_deref(),
        Some(format!("public.ecr.aws/nginx/nginx@{}", images.digest(ECR_NGINX)).as_str()),
        "{c2:#?}"
    );
    assert_eq!(
        c2.cgroup_path.as_deref(),
        Some(format!("/kubepods/pod{uid2}/{cid2}").as_str())
    );
    check_cgroup(&c2);
    cri.stop_container(&cid2, 0).await.expect("StopContainer");
    cri.remove_pod_sandbox(&sandbox2)
        .await
        .expect("remove sandbox");

    // ImageStatus resolves names to digests.
    let img = cri
        .image_status(ECR_NGINX)
        .await
        .expect("ImageStatus")
        .expect("image known");
    assert!(
        img.repo_digests.contains(&format!(
            "public.ecr.aws/nginx/nginx@{}",
            images.digest(ECR_NGINX)
        )),
        "{img:?}"
    );
    assert_eq!(
        cri.image_status("docker.io/library/absent:1")
            .await
            .expect("ImageStatus"),
        None
    );

    // ExecSync runs in the container.
    let out = cri
        .exec_sync(&cid, &["cat", "/iw-marker/cri-web"], Duration::from_secs(5))
        .await
        .expect("ExecSync");
    assert_eq!(out.exit_code, 0);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("started"));

    // The containerd API sees the same container in k8s.io, with the pod
    // labels the kubelet (here: we) set, but takes no identity from them
    // (anyone with containerd's API sets labels: issue 13, case 6): the
    // kind and the Pod are CRI's word alone.
    let native = ContainerdClient::connect(&ctd.endpoint())
        .await
        .expect("connect");
    let all = native.list_all().await.expect("list_all");
    let n = find(&all, "k8s.io", &cid);
    assert_eq!(
        n.labels.get("io.kubernetes.pod.uid").map(String::as_str),
        Some(uid)
    );
    assert_eq!((n.pod_uid.as_deref(), n.kind), (None, None), "{n:#?}");
    // CRI's word on one id (how the agent confirms a k8s.io container
    // containerd announced before CRI listed it): the container with its
    // Pod, the sandbox as a sandbox, an id CRI does not know as nothing.
    let one = cri
        .lookup(&cid)
        .await
        .expect("lookup")
        .expect("CRI knows it");
    assert_eq!(one.kind, Some(ContainerKind::Container), "{one:#?}");
    assert_eq!(one.pod_uid.as_deref(), Some(uid), "{one:#?}");
    assert_eq!(one.pod_name, c.pod_name, "{one:#?}");
    let sb = cri
        .lookup(&sandbox)
        .await
        .expect("lookup")
        .expect("CRI knows it");
    assert_eq!(sb.kind, Some(ContainerKind::Sandbox), "{sb:#?}");
    assert_eq!(sb.pod_uid.as_deref(), Some(uid), "{sb:#?}");
    assert!(cri.lookup(&"0".repeat(64)).await.expect("lookup").is_none());
    // containerd resolves id prefixes; an id that is only a prefix of a
    // real container's or sandbox's is still unknown.
    for prefix in [&cid[..12], &sandbox[..12]] {
        let got = cri.lookup(prefix).await.expect("lookup");
        assert!(got.is_none(), "{prefix}: {got:#?}");
    }
    assert_eq!(n.pid, c.pid);
    assert_eq!(n.image_ref, c.image_ref);

    // Clean CRI teardown.
    cri.stop_container(&cid, 0).await.expect("StopContainer");
    cri.remove_pod_sandbox(&sandbox)
        .await
        .expect("remove sandbox");
}

async fn containerd_events_report_start_and_exit(test: &str, rt: Runtime) {
    let Some((ctd, images)) = setup(test, rt) else {
        return;
    };
    ctd.import("default", &images);
    let client = ContainerdClient::connect(&ctd.endpoint())
        .await
        .expect("connect");
    let mut events = client.subscribe().await.expect("subscribe");
    let id = ctd.id("ev");
    ctd.ctr_run("default", &id, NGINX, &[]);
    ctd.wait_marker(&id, Duration::from_secs(10))
        .expect("marker");
    ctd.ctr_kill("default", &id);

    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !seen.iter().any(|k| matches!(k, EventKind::Exited { .. })) {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = tokio::time::timeout(left, events.next())
            .await
            .unwrap_or_else(|_| panic!("no exit event within 15 s; saw {seen:?}"))
            .expect("event stream")
            .expect("stream open");
        if ev.container_id == id {
            assert_eq!(ev.namespace.as_deref(), Some("default"));
            seen.push(ev.kind);
        }
    }
    assert_eq!(seen.first(), Some(&EventKind::Created), "{seen:?}");
    let started_pid = seen.iter().find_map(|k| match k {
        EventKind::Started { pid } => *pid,
        _ => None,
    });
    assert!(started_pid.is_some(), "no start event with pid: {seen:?}");
    assert!(
        seen.contains(&EventKind::Exited {
            pid: started_pid,
            exit_status: Some(137)
        }),
        "{seen:?}"
    );

    assert!(Path::new(&ctd.socket).exists());
}

/// CRI `GetContainerEvents`: containerd 1.6 answers `Unimplemented`
/// ([`CriError::Unsupported`]); containerd 2 streams the lifecycle of CRI
/// containers (and of sandboxes), which [`CriClient::container_events`]
/// decodes. The agent keeps containerd's own event service on both: it
/// covers every namespace and carries the task's pid, CRI's events neither.
async fn cri_container_events_by_release(test: &str, rt: Runtime) {
    let Some((ctd, images)) = setup(test, rt) else {
        return;
    };
    ctd.import("k8s.io", &images);
    let cri = CriClient::connect(&ctd.endpoint())
        .await
        .expect("CRI connect");
    let stream = cri.container_events().await;
    let mut events = match (rt, stream) {
        (Runtime::V1_6, Err(CriError::Unsupported { call })) => {
            assert_eq!(call, "GetContainerEvents");
            eprintln!(
                "{}: CRI GetContainerEvents unimplemented, as expected",
                ctd.label()
            );
            return;
        }
        (Runtime::V1_6, Ok(_)) => panic!(
            "{} implements GetContainerEvents: update the docs",
            ctd.label()
        ),
        (_, Err(e)) => panic!("{}: GetContainerEvents: {e}", ctd.label()),
        (Runtime::V2, Ok(s)) => s,
    };
    let uid = "7a1c2d3e-4f50-4a6b-8c7d-9e0f1a2b3c4d";
    let (sandbox, cid) = ctd
        .cri_run(&cri, &CriPod::new("ev-0", "prod", uid, ECR_NGINX, "cri-ev"))
        .await;
    ctd.wait_marker("cri-ev", Duration::from_secs(10))
        .expect("CRI container's entrypoint wrote no marker");
    cri.stop_container(&cid, 0).await.expect("StopContainer");

    let mut seen = Vec::new();
    let mut sandbox_seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !seen.iter().any(|k| matches!(k, EventKind::Exited { .. })) {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = tokio::time::timeout(left, events.next())
            .await
            .unwrap_or_else(|_| {
                panic!("no CRI stop event within 15 s; saw {seen:?} (sandbox: {sandbox_seen:?})")
            })
            .expect("CRI event stream")
            .expect("stream open");
        eprintln!("CRI event: {ev:?}");
        assert_eq!(ev.runtime, "cri");
        assert_eq!(ev.namespace.as_deref(), Some("k8s.io"));
        if ev.container_id == cid {
            seen.push(ev.kind);
        } else if ev.container_id == sandbox {
            sandbox_seen.push(ev.kind);
        }
    }
    assert_eq!(
        seen.iter().take(2).cloned().collect::<Vec<_>>(),
        vec![EventKind::Created, EventKind::Started { pid: None }],
        "{seen:?}"
    );
    assert!(
        seen.contains(&EventKind::Exited {
            pid: None,
            exit_status: Some(137)
        }),
        "{seen:?}"
    );
    assert!(
        sandbox_seen.contains(&EventKind::Started { pid: None }),
        "{sandbox_seen:?}"
    );
    cri.remove_pod_sandbox(&sandbox)
        .await
        .expect("remove sandbox");
}

/// One image under two names (Docker Hub's nginx and its byte-identical
/// mirror on ECR public), two pods created the kubelet's way (by image id,
/// the name in `user_specified_image`), one per name. containerd names the
/// image of both by one reference (`Container.image`, ContainerStatus's
/// first repo tag); containerd 2 keeps what each pod wrote, and CRI must
/// report that (containerd's own record names one of the two). containerd 1.6 drops `user_specified_image`:
/// there both pods carry the same name (a known limit, printed).
async fn one_image_two_names(test: &str, rt: Runtime) {
    let Some((ctd, images)) = setup(test, rt) else {
        return;
    };
    ctd.import("k8s.io", &images);
    const MIRROR: &str = "public.ecr.aws/docker/library/nginx:latest";
    let digest = images.digest(NGINX);
    ctd.ctr("k8s.io", &["images", "tag", NGINX, MIRROR]);
    let mirror_by_digest = format!("public.ecr.aws/docker/library/nginx@{digest}");
    ctd.ctr("k8s.io", &["images", "tag", NGINX, &mirror_by_digest]);
    let cri = CriClient::connect(&ctd.endpoint())
        .await
        .expect("CRI connect");
    // The CRI plugin learns of the new name from containerd's image events.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cri
        .image_status(MIRROR)
        .await
        .expect("ImageStatus")
        .is_some_and(|i| {
            i.repo_tags.iter().any(|t| t == MIRROR) && i.repo_tags.iter().any(|t| t == NGINX)
        })
    {
        assert!(
            Instant::now() < deadline,
            "CRI never learnt the name {MIRROR}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let native = ContainerdClient::connect(&ctd.endpoint())
        .await
        .expect("connect");
    for (written, repo, uid, marker) in [
        (
            MIRROR,
            "public.ecr.aws/docker/library/nginx",
            "2c2d3e4f-5061-4b7c-8d9e-0f1a2b3c4d5e",
            "two-names-mirror",
        ),
        (
            NGINX,
            "docker.io/library/nginx",
            "3c2d3e4f-5061-4b7c-8d9e-0f1a2b3c4d5e",
            "two-names-hub",
        ),
    ] {
        let (_sb, cid) = ctd
            .cri_run(&cri, &CriPod::new(marker, "prod", uid, written, marker))
            .await;
        let status = cri.container_status(&cid).await.expect("ContainerStatus");
        let listed = cri.list_containers().await.expect("ListContainers");
        let listed = listed.iter().find(|i| i.id == cid).expect("CRI lists it");
        let n = native
            .list_containers("k8s.io")
            .await
            .expect("containerd list");
        let n = n.iter().find(|i| i.id == cid).expect("containerd lists it");
        let want_ref = format!("{repo}@{digest}");
        let got = [
            (
                "CRI ContainerStatus",
                &status.image_as_written,
                &status.image_ref,
            ),
            (
                "CRI ListContainers",
                &listed.image_as_written,
                &listed.image_ref,
            ),
            ("containerd Containers", &n.image_as_written, &n.image_ref),
        ];
        for (source, image, image_ref) in got {
            eprintln!(
                "{}: pod wrote {written}: {source} says {image:?} ({image_ref:?})",
                ctd.label()
            );
            match rt {
                // containerd's own record names the image by the reference
                // it was created from; what the pod wrote is CRI's word
                // (the CRI metadata extension is as forgeable as a label,
                // so it is not read: issue 13, case 6).
                Runtime::V2 if source == "containerd Containers" => {
                    assert!(
                        matches!(image.as_deref(), Some(NGINX) | Some(MIRROR)),
                        "{}: {source} says {image:?}",
                        ctd.label()
                    );
                    assert!(
                        image_ref.as_deref().is_some_and(|r| r.ends_with(digest)),
                        "{}: {source} says {image_ref:?}",
                        ctd.label()
                    );
                }
                Runtime::V2 => {
                    assert_eq!(image.as_deref(), Some(written), "{}: {source}", ctd.label());
                    assert_eq!(
                        image_ref.as_deref(),
                        Some(want_ref.as_str()),
                        "{}: {source}",
                        ctd.label()
                    );
                }
                Runtime::V1_6 => {
                    // One of the image's two names; the same for both pods.
                    assert!(
                        matches!(image.as_deref(), Some(NGINX) | Some(MIRROR)),
                        "{}: {source} says {image:?}",
                        ctd.label()
                    );
                    if image.as_deref() != Some(written) {
                        eprintln!(
                            "{}: limit: {source} names {image:?}, the pod wrote {written}",
                            ctd.label()
                        );
                    }
                }
            }
        }
    }
}

/// The resync's CRI listing (issue 16): where containerd's own listing
/// describes a CRI object, the verbose status call is skipped, and the
/// fields the agent judges and cross-checks with (pid, cgroups path, image,
/// image id, Pod name/namespace/uid, kind) are those the verbose path
/// gives. Pods: one created the kubelet's way (by image id) of a one-name
/// image, one by name as crictl does, and one whose image has two names,
/// the Pod writing the mirror's (containerd 2 reports what the Pod wrote
/// from ListContainers' `user_specified_image`; 1.6 drops it), plus a
/// stopped container (no pid).
async fn cri_listing_described_by_containerd_needs_no_verbose_status(test: &str, rt: Runtime) {
    let Some((ctd, images)) = setup(test, rt) else {
        return;
    };
    ctd.import("k8s.io", &images);
    const MIRROR: &str = "public.ecr.aws/docker/library/nginx:latest";
    let digest = images.digest(NGINX);
    let cri = CriClient::connect(&ctd.endpoint())
        .await
        .expect("CRI connect");
    let (sb1, c1) = ctd
        .cri_run(
            &cri,
            &CriPod::new(
                "web-0",
                "prod",
                "4c2d3e4f-5061-4b7c-8d9e-0f1a2b3c4d5e",
                NGINX,
                "nv-web",
            ),
        )
        .await;
    let (_sb2, c2) = ctd
        .cri_run(
            &cri,
            &CriPod {
                image_by_id: false,
                ..CriPod::new(
                    "ecr-0",
                    "prod",
                    "5c2d3e4f-5061-4b7c-8d9e-0f1a2b3c4d5e",
                    ECR_NGINX,
                    "nv-ecr",
                )
            },
        )
        .await;
    // The Docker Hub image under a second name: CRI learns it from
    // containerd's image events.
    ctd.ctr("k8s.io", &["images", "tag", NGINX, MIRROR]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cri
        .image_status(MIRROR)
        .await
        .expect("ImageStatus")
        .is_some_and(|i| i.repo_tags.iter().any(|t| t == MIRROR))
    {
        assert!(Instant::now() < deadline, "CRI never learnt {MIRROR}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_sb3, c3) = ctd
        .cri_run(
            &cri,
            &CriPod::new(
                "mirror-0",
                "prod",
                "6c2d3e4f-5061-4b7c-8d9e-0f1a2b3c4d5e",
                MIRROR,
                "nv-mirror",
            ),
        )
        .await;
    for m in ["nv-web", "nv-ecr", "nv-mirror"] {
        ctd.wait_marker(m, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("{m}: no marker"));
    }
    // A stopped container: CRI says exited, containerd has no live task.
    let (_sb4, c4) = ctd
        .cri_run(
            &cri,
            &CriPod::new(
                "done-0",
                "prod",
                "7c2d3e4f-5061-4b7c-8d9e-0f1a2b3c4d5e",
                ECR_NGINX,
                "nv-done",
            ),
        )
        .await;
    ctd.wait_marker("nv-done", Duration::from_secs(10))
        .expect("nv-done: no marker");
    cri.stop_container(&c4, 0).await.expect("StopContainer");

    let verbose = cri.list_all().await.expect("CRI list_all (verbose)");
    let native = ContainerdClient::connect(&ctd.endpoint())
        .await
        .expect("connect")
        .list_all()
        .await
        .expect("containerd list_all");
    let by_id: std::collections::HashMap<String, ContainerInfo> = native
        .into_iter()
        .filter(|n| n.namespace.as_deref() == Some("k8s.io"))
        .map(|n| (n.id.clone(), n))
        .collect();
    let before = cri.verbose_calls();
    let fast = cri
        .list_all_described(|id| by_id.get(id))
        .await
        .expect("CRI list_all_described");
    assert_eq!(
        cri.verbose_calls() - before,
        0,
        "{}: every object containerd describes is listed without a verbose status call",
        ctd.label()
    );
    assert_eq!(fast.len(), verbose.len(), "{fast:#?} vs {verbose:#?}");
    assert!(
        verbose.len() >= 8,
        "4 sandboxes, 4 containers: {verbose:#?}"
    );
    for v in &verbose {
        let f = fast
            .iter()
            .find(|f| f.id == v.id)
            .unwrap_or_else(|| panic!("{} not in the fast listing", v.id));
        let what = format!("{}: {} ({:?})", ctd.label(), v.id, v.pod_name);
        assert_eq!(f.runtime, "cri", "{what}");
        assert_eq!(f.kind, v.kind, "{what}");
        assert!(f.kind.is_some(), "{what}");
        assert_eq!(f.sandbox_id, v.sandbox_id, "{what}");
        assert_eq!(f.pod_name, v.pod_name, "{what}");
        assert_eq!(f.pod_namespace, v.pod_namespace, "{what}");
        assert_eq!(f.pod_uid, v.pod_uid, "{what}");
        assert!(f.pod_uid.is_some(), "{what}");
        assert_eq!(f.container_name, v.container_name, "{what}");
        assert_eq!(f.state, v.state, "{what}");
        assert_eq!(f.pid, v.pid, "{what}");
        assert_eq!(f.cgroup_path, v.cgroup_path, "{what}");
        assert_eq!(f.image_id, v.image_id, "{what}");
        if f.state == ContainerState::Running {
            check_cgroup(f);
        }
        if v.id == c3 && rt == Runtime::V1_6 {
            // 1.6 drops what the Pod wrote: each path names one of the
            // image's two names (the verbose status its first repo tag,
            // containerd's record the one it was created from).
            assert!(
                matches!(f.image_as_written.as_deref(), Some(NGINX) | Some(MIRROR)),
                "{what}: {f:#?}"
            );
            assert!(
                f.image_ref.as_deref().is_some_and(|r| r.ends_with(digest)),
                "{what}: {f:#?}"
            );
        } else {
            assert_eq!(f.image_as_written, v.image_as_written, "{what}");
            assert_eq!(f.image_ref, v.image_ref, "{what}");
        }
    }
    let get = |id: &str| fast.iter().find(|f| f.id == id).expect("listed");
    let web = get(&c1);
    assert_eq!(
        (web.pod_name.as_deref(), web.pod_namespace.as_deref()),
        (Some("web-0"), Some("prod"))
    );
    assert_eq!(web.sandbox_id.as_deref(), Some(sb1.as_str()));
    assert_eq!(web.image_as_written.as_deref(), Some(NGINX));
    assert_eq!(
        web.image_ref.as_deref(),
        Some(format!("docker.io/library/nginx@{digest}").as_str())
    );
    assert!(web.pid.is_some(), "{web:#?}");
    let sb = get(&sb1);
    assert_eq!(sb.kind, Some(ContainerKind::Sandbox));
    assert_eq!(sb.image_as_written.as_deref(), Some(PAUSE), "{sb:#?}");
    assert_eq!(
        sb.image_ref.as_deref(),
        Some(format!("registry.k8s.io/pause@{}", images.digest(PAUSE)).as_str())
    );
    assert!(sb.pid.is_some(), "{sb:#?}");
    let ecr = get(&c2);
    assert_eq!(ecr.image_as_written.as_deref(), Some(ECR_NGINX));
    assert_eq!(
        ecr.image_ref.as_deref(),
        Some(format!("public.ecr.aws/nginx/nginx@{}", images.digest(ECR_NGINX)).as_str())
    );
    if rt == Runtime::V2 {
        let m = get(&c3);
        assert_eq!(m.image_as_written.as_deref(), Some(MIRROR), "{m:#?}");
        assert_eq!(
            m.image_ref.as_deref(),
            Some(format!("public.ecr.aws/docker/library/nginx@{digest}").as_str()),
            "{m:#?}"
        );
    }
    let done = get(&c4);
    assert_eq!((done.state, done.pid), (ContainerState::Exited, None));
    assert!(done.cgroup_path.is_some(), "{done:#?}");

    // Without containerd's word (a CRI-O node, or objects containerd did
    // not list yet) every object gets its verbose status, as before.
    let before = cri.verbose_calls();
    let slow = cri
        .list_all_described(|_| None)
        .await
        .expect("CRI list_all_described, nothing described");
    assert_eq!(cri.verbose_calls() - before, slow.len() as u64);
    // containerd 2 lists sandboxes in no fixed order.
    let by_id = |mut l: Vec<ContainerInfo>| {
        l.sort_by(|a, b| a.id.cmp(&b.id));
        l
    };
    assert_eq!(by_id(slow), by_id(verbose));
}
