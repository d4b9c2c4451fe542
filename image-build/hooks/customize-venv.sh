#!/bin/sh
# mmdebstrap customize hook: install Nightbox into application slot A from the
# wheelhouse built on the host, with no index. "$1" is the root tree; the
# build sets NIGHTBOX_WHEELHOUSE (a folder of wheels) and
# NIGHTBOX_REQUIREMENT (for example nightbox==0.1.0). For a foreign
# architecture pip runs under qemu-user through binfmt_misc.
set -eu
root="$1"
slot=/var/lib/nightbox/app/slot-a
wheels=/tmp/nightbox-wheelhouse

mkdir -p "$root$wheels" "$root$slot"
cp "$NIGHTBOX_WHEELHOUSE"/*.whl "$root$wheels/"
# A clean environment: the host's pip settings (index URLs, find-links,
# certificate paths) name places that do not exist in the root tree.
run() {
    chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 PIP_DISABLE_PIP_VERSION_CHECK=1 "$@"
}
run /usr/bin/python3 -m venv "$slot/venv"
run "$slot/venv/bin/python" -m pip install --quiet --no-index --no-cache-dir \
    --find-links "$wheels" "$NIGHTBOX_REQUIREMENT"
rm -rf "$root$wheels"
