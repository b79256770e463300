# shellcheck shell=bash
# --base debian: Debian packages only (what CI reaches).  amd64: a QEMU/PC test image; arm64: boots on QEMU's
# virt machine (direct kernel boot) and, with Debian's raspi-firmware, on a Raspberry Pi 3, 4 or Zero 2 W.
# Sourced by image/build, which reads PACKAGES, COMPONENTS, SOURCES and MMDEBSTRAP_EXTRA.

PACKAGES=(
    systemd-sysv udev dbus kmod initramfs-tools zstd "linux-image-$KARCH"
    systemd-timesyncd systemd-resolved iproute2 iputils-ping wpasupplicant ca-certificates tzdata
    python3 python3-venv
    openssh-server openssh-client nmap
    fdisk e2fsprogs dosfstools procps less
    # teleinfo.local and the health port announced on the LAN (mDNS/DNS-SD)
    avahi-daemon
    # Debian's security updates, installed by themselves
    unattended-upgrades
    # custom.toml's [user] administrator account
    sudo
)
COMPONENTS=main
if [ "$ARCH" = arm64 ]; then
    # The Pi's boot firmware, and its Wi-Fi chip's firmware, are in non-free-firmware.
    PACKAGES+=(raspi-firmware firmware-brcm80211)
    COMPONENTS=main,non-free-firmware
fi
# The mirror: --mirror, else the one this host's apt uses (so the build goes where apt-get already goes).
if [ -z "$MIRROR" ]; then
    MIRROR=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | grep -v -- '-security' | head -n1)
    [ -n "$MIRROR" ] || MIRROR=$(awk '$1 == "deb" && $2 !~ /^\[/ && $3 == "'"$SUITE"'" {print $2; exit}' \
        /etc/apt/sources.list 2>/dev/null)
fi
[ -n "$MIRROR" ] || die "no Debian mirror found in /etc/apt: pass --mirror URL"
SOURCES=(
    "deb $MIRROR $SUITE ${COMPONENTS//,/ }"
    "deb $MIRROR $SUITE-updates ${COMPONENTS//,/ }"
    "deb ${MIRROR%/debian}/debian-security $SUITE-security ${COMPONENTS//,/ }"
)
MMDEBSTRAP_EXTRA=()
