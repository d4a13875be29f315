#!/usr/bin/env bash
# `make fresh-check`: the README's two commands on a bare Debian 12, as a newcomer runs them.
#
# Builds a minimal Debian 12 with debootstrap under var/fresh/ (kept, so a second run
# skips it), clones this repository into a fresh copy of it, lays the work tree's
# uncommitted changes over the clone (FRESH_COMMITTED=1: the last commit only), runs
# `make deps` with the network, then `make demo` and `make test` in a network namespace
# with only loopback (`unshare -n`). Debian's own PostgreSQL cluster is started in that
# namespace first, as a newcomer's machine has it (127.0.0.1 asks for a password), so
# the embedded services must take over. Prints the demo's summary line and the tests'
# last line. Needs root (debootstrap, chroot, mounts).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
fresh="${FRESH_DIR:-$here/var/fresh}"
base="$fresh/base"
root="$fresh/rootfs"
# Under /srv, not /root: as root, the private servers run as their system users, who
# must be able to enter the checkout's .dev/services/.
repo=/srv/hocba-signer
# Extra pytest options for the run inside, e.g. FRESH_PYTEST="-m 'not chaos'"; and the
# test command (default `make test`).
pytest_addopts="${FRESH_PYTEST:-}"
test_cmd="${FRESH_TEST_CMD:-make test}"

[ "$(id -u)" -eq 0 ] || { echo "fresh-check needs root (debootstrap, chroot, mounts)" >&2; exit 2; }
mirror() {
  local uri
  # Debian's own archive among the enabled sources (not a third party's, not security).
  uri="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
    2>/dev/null | grep -hoE '^(URIs:|deb) +http[^ ]+/debian/?$' | head -1 | awk '{print $2}')"
  echo "${uri:-http://deb.debian.org/debian}"
}
started=$(date +%s)
mkdir -p "$fresh"
step() { echo "fresh-check [$(( $(date +%s) - started ))s]: $*" >&2; }

if [ ! -e "$base/.bootstrapped" ]; then
  command -v debootstrap >/dev/null || { apt-get update -qq; apt-get install -y -qq debootstrap >/dev/null; }
  step "debootstrap bookworm from $(mirror) into $base"
  rm -rf "$base"
  debootstrap --variant=minbase --include=python3,python3-venv,git,make,ca-certificates \
    bookworm "$base" "$(mirror)" >"$fresh.debootstrap.log" 2>&1 \
    || { tail -20 "$fresh.debootstrap.log" >&2; exit 1; }
  touch "$base/.bootstrapped"
fi

mounted=()
cleanup() {
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[i]}" 2>/dev/null || true; done
}
trap cleanup EXIT
bind() { mkdir -p "$root$2"; mount "${@:3}" "$1" "$root$2"; mounted+=("$root$2"); }

step "a fresh copy of the bare system in $root"
rm -rf "$root"
cp -a "$base" "$root"
# A container's rule: packages do not start their daemons at install time (on a real
# machine systemd would, and `make deps` itself starts nothing either way).
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod +x "$root/usr/sbin/policy-rc.d"
cp /etc/resolv.conf "$root/etc/resolv.conf"
# The host's mirrors (security updates included) in place of debootstrap's one line.
if [ -d /etc/apt/sources.list.d ] && ls /etc/apt/sources.list.d/*.sources >/dev/null 2>&1; then
  rm -f "$root/etc/apt/sources.list"
fi
cp -a /etc/apt/sources.list* "$root/etc/apt/" 2>/dev/null || true

step "git clone into $repo"
git clone -q "$here" "$root$repo"
if [ -z "${FRESH_COMMITTED:-}" ]; then
  # The work tree's uncommitted state: changed and new files copied, deleted ones removed.
  cd "$here"
  git ls-files -z -m -d -o --exclude-standard | while IFS= read -r -d '' f; do
    if [ -e "$f" ]; then cp -a --parents "$f" "$root$repo"; else rm -f "$root$repo/$f"; fi
  done
  cd - >/dev/null
fi

bind proc /proc -t proc
bind sysfs /sys -t sysfs
bind /dev /dev --bind
bind devpts /dev/pts -t devpts
bind tmpfs /dev/shm -t tmpfs
bind tmpfs /tmp -t tmpfs

inside() { chroot "$root" /usr/bin/env -i HOME=/root PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }

# A network that intercepts TLS (as this one does for PyPI) needs its CA, as any machine
# on it would: the host's local CAs, added to the new system's store.
if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
  inside update-ca-certificates >/dev/null 2>&1
fi

step "make deps (with the network)"
inside bash -c "cd $repo && make deps" >"$fresh/deps.log" 2>&1 || { tail -30 "$fresh/deps.log" >&2; exit 1; }

step "make demo and make test, loopback only (unshare -n)"
set +e
unshare -n bash -c '
  ip link set lo up
  chroot "$1" /usr/bin/env -i HOME=/root PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
    PYTEST_ADDOPTS="$3" bash -c "
      cd $2
      pg_ctlcluster --skip-systemctl-redirect \$(ls /etc/postgresql | head -1) main start || true
      make demo >/var/tmp/demo.out 2>/var/tmp/demo.err; echo \$? >/var/tmp/demo.rc
      $4 >/var/tmp/test.out 2>&1; echo \$? >/var/tmp/test.rc
      pg_ctlcluster --skip-systemctl-redirect \$(ls /etc/postgresql | head -1) main stop || true
    "
' fresh "$root" "$repo" "$pytest_addopts" "$test_cmd"
set -e
demo_rc=$(cat "$root/var/tmp/demo.rc" 2>/dev/null || echo "?")
test_rc=$(cat "$root/var/tmp/test.rc" 2>/dev/null || echo "?")
step "done (demo exit $demo_rc, test exit $test_rc); logs in $root/var/tmp/"
echo "demo: $(grep '^{' "$root/var/tmp/demo.out" | tail -1 || tail -1 "$root/var/tmp/demo.err")"
echo "test: $(grep -v '^\s*$' "$root/var/tmp/test.out" | tail -1)"
echo "elapsed_s: $(( $(date +%s) - started ))"
[ "$demo_rc" = 0 ] && [ "$test_rc" = 0 ]
