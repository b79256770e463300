# shellcheck shell=bash
# --base raspios: the Debian base plus the Raspberry Pi archive, for the Pi 5 and the vendor kernels and overlays
# (disable-bt, uart0-pi5).  A release step, run where that archive is reachable (see image/README.md):
#   RASPIOS_MIRROR=<archive URL> RASPIOS_KEYRING=<raspberrypi-archive-keyring .gpg> image/build --arch arm64 --base raspios
# Everything else (payload, units, first boot, firmware/ merge, assembly) is the Debian path's.

[ "$ARCH" = arm64 ] || die "--base raspios is arm64 only"
[ -n "${RASPIOS_MIRROR:-}" ] && [ -f "${RASPIOS_KEYRING:-}" ] \
    || die "--base raspios needs RASPIOS_MIRROR (the Raspberry Pi archive's URL) and RASPIOS_KEYRING (its keyring)"
# shellcheck source=image/bases/debian.sh
. "$REPO/image/bases/debian.sh"
# The vendor firmware and kernels replace Debian's (which lack the Pi 5 and the overlays).
PACKAGES=("${PACKAGES[@]/#linux-image-arm64/linux-image-rpi-v8}")
PACKAGES+=(linux-image-rpi-2712 raspberrypi-sys-mods raspi-config rpi-eeprom)
SOURCES+=("deb [signed-by=$RASPIOS_KEYRING] $RASPIOS_MIRROR $SUITE main")
MMDEBSTRAP_EXTRA=(--setup-hook="mkdir -p \"\$1/etc/apt/keyrings\" && cp $RASPIOS_KEYRING \"\$1/etc/apt/keyrings/\"")
