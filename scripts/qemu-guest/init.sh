#!/bin/sh
# /init of the VSCard test guest. Runs as PID 1, starts pcscd once the
# emulated CCID reader holds a card, runs the test's commands, prints marker
# lines on the serial console and powers off.
#
# The commands come in /vc/commands, one shell command line per line, from a
# second cpio archive that the test appends to the image (the kernel unpacks
# concatenated archives in order). Each runs with stdin from /dev/null, its
# output between "VC-CMD-BEGIN n" and "VC-CMD-END n rc=STATUS".
# Kernel command line:
#   vc_timeout=SECONDS      how long to wait for the reader and the card,
#                           and for each command
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
echo 1 > /proc/sys/kernel/printk

timeout=60
for word in $(cat /proc/cmdline); do
    case "$word" in
        vc_timeout=*) timeout="${word#vc_timeout=}" ;;
    esac
done

finish() {
    echo "VC-DONE"
    sync
    poweroff -f
}

fail() {
    echo "VC-FAIL: $*"
    if [ -f /tmp/pcscd.log ]; then
        echo "VC-PCSCD-LOG-BEGIN"
        tail -n 60 /tmp/pcscd.log
        echo "VC-PCSCD-LOG-END"
    fi
    finish
}

echo "VC-INIT: $(cut -d' ' -f1 /proc/uptime)"
while read -r mod; do
    insmod "$mod" || echo "VC-WARN: insmod $mod failed"
done < /lib/modules/order

# No udev in the guest: pcscd only sees readers present when it starts.
ticks=$((timeout * 10))
i=0
found=""
while [ $i -lt $ticks ]; do
    for dev in /sys/bus/usb/devices/*; do
        if [ "$(cat "$dev/idVendor" 2>/dev/null)" = "08e6" ] \
           && [ "$(cat "$dev/idProduct" 2>/dev/null)" = "4433" ]; then
            found=1
        fi
    done
    [ -n "$found" ] && break
    sleep 0.1
    i=$((i + 1))
done
[ -n "$found" ] || fail "no CCID reader 08e6:4433 appeared"
echo "VC-READER: $(cut -d' ' -f1 /proc/uptime)"

pcscd --foreground --debug --apdu > /tmp/pcscd.log 2>&1 &

ticks=$((timeout * 5))
i=0
card=""
while [ $i -lt $ticks ]; do
    if opensc-tool -l 2>/dev/null | grep -q '^0 *Yes'; then
        card=1
        break
    fi
    sleep 0.2
    i=$((i + 1))
done
[ -n "$card" ] || fail "no card in the reader"
echo "VC-CARD: $(cut -d' ' -f1 /proc/uptime)"

echo "VC-ATR: $(opensc-tool -r 0 -c default -a 2>&1)"
[ -f /vc/commands ] || fail "no /vc/commands in the image"
n=0
while IFS= read -r cmd; do
    echo "VC-CMD-BEGIN $n"
    timeout "$timeout" sh -c "$cmd" < /dev/null 2>&1
    echo "VC-CMD-END $n rc=$?"
    n=$((n + 1))
done < /vc/commands
echo "VC-END: $(cut -d' ' -f1 /proc/uptime)"
finish
