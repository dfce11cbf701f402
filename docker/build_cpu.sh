#!/usr/bin/env bash
# Builds the CPU image (docker/Dockerfile.cpu) on a Debian 12 machine that has no image registry, only Debian and
# PyPI mirrors: the base image is a debootstrap rootfs imported into podman. Run as root from anywhere:
#   bash docker/build_cpu.sh            # engine + base + image + smoke test
#   bash docker/build_cpu.sh engine|base|image|smoke|test   # one step
# This is what made localhost/debian-bookworm-py311:base and sidgr:cpu on the project's CPU machine (a Firecracker
# VM: kernel 6.18, cgroup v1 + a hugetlb-only cgroup2 "hybrid" mount, no CAP_SYS_RESOURCE, nofile hard limit 20000).
# Those quirks explain the engine flags below; on an ordinary host plain `podman build` / `podman run` are enough.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE=${BASE:-localhost/debian-bookworm-py311:base}
IMAGE=${IMAGE:-localhost/sidgr:cpu}
WORK=${WORK:-}                              # debootstrap rootfs and its tarball (default: a new /tmp directory)
WHEELS=${WHEELS:-/opt/wheels}               # holds torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl
MIRROR=${MIRROR:-http://deb.debian.org/debian}
# The host's CA bundle, mounted read-only into the build's RUN steps so pip trusts what this host trusts
# (here PyPI is reached through a TLS-intercepting egress proxy); it never lands in an image layer.
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}

# crun 1.8 refuses the hybrid cgroup layout ("cgroups in hybrid mode not supported"): use runc. podman's default
# rlimits (nofile 1048576, and run's nproc) exceed this VM's hard limits ("setrlimit RLIMIT_NOFILE/NPROC: Operation
# not permitted"): ask for what the host allows. --network host: no bridge/iptables setup needed.
PODMAN=(podman --runtime runc)
LIMITS=(--ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit nproc=32768:32768)

engine() {
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman runc debootstrap
  podman --version
}

base() {
  WORK=${WORK:-$(mktemp -d /tmp/sidgr-base.XXXXXX)}
  if [ -e "$WORK/rootfs" ]; then  # never delete what this script did not make
    echo "build_cpu.sh: $WORK/rootfs exists: set WORK to a new directory" >&2
    exit 1
  fi
  mkdir -p "$WORK"
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$WORK/rootfs" "$MIRROR"
  cat > "$WORK/rootfs/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb ${MIRROR%/debian}/debian-security bookworm-security main
EOF
  mount --bind /proc "$WORK/rootfs/proc"
  chroot "$WORK/rootfs" sh -c 'apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get -y -q upgrade && apt-get clean' \
    || { umount "$WORK/rootfs/proc"; exit 1; }
  umount "$WORK/rootfs/proc"
  rm -rf "$WORK"/rootfs/var/lib/apt/lists/* "$WORK"/rootfs/var/cache/apt/archives/*.deb "$WORK"/rootfs/var/log/*.log
  tar --numeric-owner -C "$WORK/rootfs" -cf "$WORK/base.tar" .
  podman import --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' \
    --message 'debootstrap minbase bookworm + python3 python3-venv python3-pip ca-certificates' \
    "$WORK/base.tar" "$BASE"
}

image() {
  ls "$WHEELS"/torch-2.13.0+cpu-*.whl >/dev/null
  # --format docker: the OCI format has no SHELL field, and podman would run the RUN steps with /bin/sh.
  "${PODMAN[@]}" build --format docker --network host "${LIMITS[@]}" \
    --volume "$CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro" \
    --build-context wheels="$WHEELS" --build-arg BASE_IMAGE="$BASE" \
    -f docker/Dockerfile.cpu -t "$IMAGE" .
  podman image ls "$IMAGE"
}

smoke() {
  "${PODMAN[@]}" run --rm --network none "${LIMITS[@]}" "$IMAGE" sidgr --version
  "${PODMAN[@]}" run --rm --network none "${LIMITS[@]}" "$IMAGE" \
    python -c 'import sys, torch, megatron.core; print(sys.version.split()[0], torch.__version__, megatron.core.__version__)'
}

# The README's test command minus install.sh (already run by the build). --shm-size: torch's worker processes
# share tensors through /dev/shm, and podman's default is 64 MB. No network: the suite needs none.
# SHARED_DATA=/path/to/shared/data mounts the benchmark files read-only where the tests look for them
# (../shared/data from the repository); without it the 4 tests in test_prepare_benchmarks_real.py skip.
test() {
  local data=()
  [ -n "${SHARED_DATA:-}" ] && data=(-v "$SHARED_DATA:/workspace/shared/data:ro")
  "${PODMAN[@]}" run --rm --network none --shm-size 2g "${LIMITS[@]}" "${data[@]}" "$IMAGE" python -m pytest -q tests "$@"
}

case "${1:-all}" in
  all) engine; base; image; smoke ;;
  engine|base|image|smoke) "$1" ;;
  test) shift; test "$@" ;;
  *) echo "usage: $0 [all|engine|base|image|smoke|test [pytest args]]" >&2; exit 2 ;;
esac
