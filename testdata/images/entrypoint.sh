#!/bin/sh
# Entrypoint of imagewarden's test images (agent/tests/support/containerd.rs
# packs it with a busybox-static root filesystem).
#
# FIRST act: write a marker file into a host-visible directory, so a test
# can prove this entrypoint ran (or, when a container was killed at exec,
# that it did not). The directory is bind-mounted at $IW_MARKER_DIR
# (default /iw-marker); the file is named $IW_MARKER_NAME (default: the
# hostname). Then sleep ($IW_SLEEP seconds, default one hour), as PID 1.
d="${IW_MARKER_DIR:-/iw-marker}"
n="${IW_MARKER_NAME:-$(hostname)}"
echo "started pid=$$ image=${IW_IMAGE:-unknown}" > "$d/$n" 2>/dev/null
exec sleep "${IW_SLEEP:-3600}"
