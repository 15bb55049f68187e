#!/usr/bin/env bash
# Builds (and caches) a minimal Linux guest for the VSCard end-to-end test:
# Debian's kernel with the USB modules, busybox-static as /init shell, pcscd,
# libccid, OpenSC's tools and its PKCS#11 module. Everything comes from Debian
# packages that are downloaded and unpacked, never installed on the host.
# What the guest runs is not part of the image: see init.sh.
#
# Usage: build.sh [CACHE_DIR]     (default: <repo>/target/qemu-guest)
# Prints the cache directory on success. Exit status 2 means a package could
# not be downloaded, so callers can skip instead of fail.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${1:-$repo/target/qemu-guest}"
mkdir -p "$cache"
cache="$(cd "$cache" && pwd)"

log() { echo "qemu-guest: $*" >&2; }

packages=(busybox-static pcscd libccid opensc opensc-pkcs11 libpcsclite1 libusb-1.0-0)
# Bumped whenever the image layout changes, so stale caches are rebuilt.
layout=4
stamp_input="$layout $(cat "$here/build.sh" "$here/init.sh" | sha256sum | cut -d' ' -f1)"

# Test binaries run in parallel and share the cache: one builds, the others
# wait and then find the fresh stamp.
if command -v flock >/dev/null; then
    exec 9>"$cache/.lock"
    flock 9
fi

if [[ -f "$cache/stamp" && "$(cat "$cache/stamp")" == "$stamp_input" \
      && -f "$cache/vmlinuz" && -f "$cache/initrd.img" ]]; then
    echo "$cache"
    exit 0
fi

apt_quiet=(-o APT::Sandbox::User=root -qq)

# QEMU and the unpack tools are needed on the host; install them only when absent.
need_install=()
command -v qemu-system-x86_64 >/dev/null || need_install+=(qemu-system-x86)
command -v dpkg-deb >/dev/null || need_install+=(dpkg)
command -v gzip >/dev/null || need_install+=(gzip)
apt_updated=0
apt_update() {
    if [[ $apt_updated == 0 ]]; then
        log "apt-get update"
        apt-get "${apt_quiet[@]}" update >&2 || true
        apt_updated=1
    fi
}
if ((${#need_install[@]})); then
    apt_update
    log "installing ${need_install[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get "${apt_quiet[@]}" install -y "${need_install[@]}" >&2
fi

# The meta package names the concrete kernel package of this release.
kernel_pkg() {
    apt-cache depends linux-image-amd64 2>/dev/null \
        | awk '/Depends: linux-image-[0-9]/ { print $2; exit }'
}
kpkg="$(kernel_pkg)"
if [[ -z "$kpkg" ]]; then
    apt_update
    kpkg="$(kernel_pkg)"
fi
if [[ -z "$kpkg" ]]; then
    log "SKIP: cannot resolve linux-image-amd64 to a kernel package"
    exit 2
fi

debs="$cache/debs"
mkdir -p "$debs"
download() {
    local pkg="$1"
    if compgen -G "$debs/${pkg}_*.deb" >/dev/null; then
        return 0
    fi
    (cd "$debs" && apt-get "${apt_quiet[@]}" download "$pkg" >&2) && return 0
    apt_update
    (cd "$debs" && apt-get "${apt_quiet[@]}" download "$pkg" >&2)
}
for pkg in "$kpkg" "${packages[@]}"; do
    if ! download "$pkg"; then
        log "SKIP: package $pkg is unavailable"
        exit 2
    fi
done

unpack="$cache/unpack"
rm -rf "$unpack"
mkdir -p "$unpack"
for deb in "$debs"/*.deb; do
    dpkg-deb -x "$deb" "$unpack"
done

root="$cache/root"
rm -rf "$root"
mkdir -p "$root"/{bin,sbin,dev,proc,sys,run,tmp,etc/reader.conf.d,etc/opensc,lib64,lib/modules,usr/lib/pcsc/drivers,usr/bin,usr/sbin}
mkdir -p "$root/var"
ln -s /run "$root/var/run"

bb="$unpack/bin/busybox"
cp "$bb" "$root/bin/busybox"
ln -s busybox "$root/bin/sh"

cp "$unpack/usr/sbin/pcscd" "$root/usr/sbin/"
cp "$unpack/usr/bin/opensc-tool" "$unpack/usr/bin/pkcs11-tool" "$root/usr/bin/"
# Same path as on Debian, so commands written for a host work in the guest.
mkdir -p "$root/usr/lib/x86_64-linux-gnu"
cp -L "$unpack/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so" "$root/usr/lib/x86_64-linux-gnu/"
# A cached file would let OpenSC answer without asking the card, which would
# hide exactly the traffic the tests are there to check.
cat > "$root/etc/opensc/opensc.conf" <<'CONF'
app default {
	framework pkcs15 {
		use_file_caching = no;
	}
}
CONF
cp -a "$unpack/usr/lib/pcsc/drivers/ifd-ccid.bundle" "$root/usr/lib/pcsc/drivers/"
# The package ships Info.plist as a link into /etc; the guest needs the file.
plist="$root/usr/lib/pcsc/drivers/ifd-ccid.bundle/Contents/Info.plist"
rm -f "$plist"
cp "$unpack/etc/libccid_Info.plist" "$plist"

# Shared libraries: unpacked packages first, the host (same release) second.
libdirs="$unpack/usr/lib/x86_64-linux-gnu:$unpack/lib/x86_64-linux-gnu"
libdest="$root/lib/x86_64-linux-gnu"
mkdir -p "$libdest"
copy_lib() {
    local name="$1" src=""
    for d in "$unpack/usr/lib/x86_64-linux-gnu" "$unpack/lib/x86_64-linux-gnu" \
             /usr/lib/x86_64-linux-gnu /lib/x86_64-linux-gnu; do
        if [[ -e "$d/$name" ]]; then src="$d/$name"; break; fi
    done
    if [[ -z "$src" ]]; then
        log "library $name not found in the packages or on the host"
        return 1
    fi
    cp -L "$src" "$libdest/$name"
}
bins=("$root/usr/sbin/pcscd" "$root/usr/bin/opensc-tool" "$root/usr/bin/pkcs11-tool"
      "$root/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so"
      "$root/usr/lib/pcsc/drivers/ifd-ccid.bundle/Contents/Linux/libccid.so"
      "$unpack/usr/lib/x86_64-linux-gnu/libpcsclite.so.1"
      "$unpack/usr/lib/x86_64-linux-gnu/libopensc.so.8")
libs="$(for b in "${bins[@]}"; do LD_LIBRARY_PATH="$libdirs" ldd "$b"; done \
        | awk '/=>/ { print $1 }' | sort -u)"
missing=0
# Both are loaded with dlopen, so ldd never lists them.
for l in $libs libgcc_s.so.1 libpcsclite.so.1 libopensc.so.8; do
    copy_lib "$l" || missing=1
done
if [[ $missing == 1 ]]; then
    exit 1
fi
cp -L /lib64/ld-linux-x86-64.so.2 "$root/lib64/"

# Kernel and the USB modules, in dependency order (there is no modules.dep).
kver="$(basename "$(ls -d "$unpack"/lib/modules/*/ | head -n1)")"
cp "$unpack/boot/vmlinuz-$kver" "$cache/vmlinuz.new"
moddir="$unpack/lib/modules/$kver/kernel"
declare -A seen=()
order=()
mod_path() {
    local name="${1//-/_}" f
    for f in $(find "$moddir" -name '*.ko'); do
        local base
        base="$(basename "$f" .ko)"
        if [[ "${base//-/_}" == "$name" ]]; then echo "$f"; return 0; fi
    done
    return 1
}
add_mod() {
    local name="${1//-/_}" path deps d
    [[ -n "${seen[$name]:-}" ]] && return 0
    seen[$name]=1
    path="$(mod_path "$name")" || { log "module $name not found"; return 1; }
    deps="$(tr '\0' '\n' < "$path" | sed -n 's/^depends=//p' | head -n1)"
    for d in ${deps//,/ }; do add_mod "$d"; done
    order+=("$path")
}
for m in usb-common usbcore xhci-hcd xhci-pci; do add_mod "$m"; done
: > "$root/lib/modules/order"
for p in "${order[@]}"; do
    cp "$p" "$root/lib/modules/"
    echo "/lib/modules/$(basename "$p")" >> "$root/lib/modules/order"
done

cp "$here/init.sh" "$root/init"
chmod 755 "$root/init"

(cd "$root" && find . | "$bb" cpio -o -H newc 2>/dev/null | gzip -1) > "$cache/initrd.img.new"
mv "$cache/vmlinuz.new" "$cache/vmlinuz"
mv "$cache/initrd.img.new" "$cache/initrd.img"
rm -rf "$unpack"
echo "$stamp_input" > "$cache/stamp"
log "guest ready in $cache (kernel $kver)"
echo "$cache"
