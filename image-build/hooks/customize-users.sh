#!/bin/sh
# mmdebstrap customize hook: create the system user the box's services run as
# and lock root. "$1" is the root tree. The image has no password anywhere:
# root is locked, no user has a password, and no SSH server is installed.
set -eu
root="$1"

if ! chroot "$root" getent passwd nightbox >/dev/null; then
    chroot "$root" useradd --system --user-group --home-dir /var/lib/nightbox \
        --no-create-home --shell /usr/sbin/nologin \
        --comment "Nightbox box services" nightbox
fi
# BLE scanning through BlueZ, USB serial readers, the camera and its sound.
for group in bluetooth dialout video audio; do
    if chroot "$root" getent group "$group" >/dev/null; then
        chroot "$root" usermod --append --groups "$group" nightbox
    fi
done
chroot "$root" usermod --lock root
