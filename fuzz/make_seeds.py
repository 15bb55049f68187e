#!/usr/bin/env python3
"""Writes the seed corpora in fuzz/seeds/ from real APDU sequences.

The ISO card sequence is the one the end-to-end test sends through pcscd
(crates/cli/tests/iso_vpcd.rs, every `x(&mut c, "...")` in order), plus
the PIN flows of the card tests; the CAC sequence follows what OpenSC's
cac driver sends (crates/cards/src/cac/tests.rs). Inputs are encoded the
way fuzz/src/lib.rs reads them (`encode_ops`). Run from anywhere:

    python3 fuzz/make_seeds.py
"""
import json
import pathlib
import re
import shutil
import struct

ROOT = pathlib.Path(__file__).resolve().parent.parent
SEEDS = ROOT / "fuzz" / "seeds"
MAX_OPS = 64  # fuzz/src/lib.rs MAX_OPS

TAG_APDU, TAG_RESET, TAG_LINK = 0, 4, 5


def h(s):
    return bytes.fromhex(s.replace(" ", ""))


def apdu_op(b):
    return bytes([TAG_APDU]) + struct.pack(">H", len(b)) + b


def ops(apdus, t0=False):
    out = bytes([TAG_LINK, 1]) if t0 else b""
    for a in apdus:
        out += bytes([TAG_RESET]) if a is None else apdu_op(a)
    return out


def write(target, name, data):
    d = SEEDS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def iso_test_sequence():
    text = (ROOT / "crates/cli/tests/iso_vpcd.rs").read_text()
    return [h(m) for m in re.findall(r'x\(\s*&mut c,\s*"([0-9A-F ]+)"', text)]


def verify(pin, ref=0x81):
    return bytes([0x00, 0x20, 0x00, ref, len(pin)]) + pin


ISO_PIN, ISO_PUK = b"123456", b"12345678"
ISO_PIN_FLOWS = [
    # Status, wrong PIN until blocked, then unblock with the PUK.
    [h("00200081"), verify(b"000000"), verify(b"111111"), verify(b"222222"),
     h("00200081"), verify(ISO_PIN),
     bytes([0x00, 0x2C, 0x00, 0x81, 14]) + ISO_PUK + b"654321",
     verify(b"654321")],
    # CHANGE REFERENCE DATA both forms, then RESET RETRY COUNTER P1=01.
    [verify(ISO_PIN),
     bytes([0x00, 0x24, 0x00, 0x81, 12]) + ISO_PIN + b"112233",
     bytes([0x00, 0x24, 0x01, 0x81, 6]) + b"445566",
     bytes([0x00, 0x2C, 0x01, 0x81, 8]) + ISO_PUK,
     verify(b"FFFF"), verify(b"445566\xff\xff")],
    # Wrong PUKs until the PUK blocks too.
    [bytes([0x00, 0x2C, 0x01, 0x81, 8]) + b"00000000"] * 6 + [h("00200081")],
    # Chained UPDATE BINARY, GET RESPONSE on a long READ BINARY, channels.
    [h("00A4020C025002"), h("10D6000002AABB"), h("00D6000202CCDD"),
     h("00B0000000"), h("00C0000000"), h("0070000001"), h("01A4080C025000"),
     h("00708001"), None, h("0084000008")],
]

CCC = h("A0000001 16DB00")
ACA = h("A0000000 790300")
PKI0 = h("A0000000 790100")
CAC_PIN = b"12345678"
CAC_SEQUENCES = [
    # OpenSC's cac driver: CCC, properties, buffers, then the PKI applet.
    [bytes([0, 0xA4, 4, 0, 7]) + CCC + b"\x00", h("80560100FF"), h("8052000002 0102"),
     h("80520000 020202"), h("8036000002"), bytes([0, 0xA4, 4, 0, 7]) + ACA,
     h("804C000000"), bytes([0, 0xA4, 4, 0, 7]) + PKI0 + b"\x00", h("80560100FF"),
     h("80520000020208"), h("8036000008"), bytes([0, 0x20, 0, 0, 8]) + CAC_PIN,
     h("80420000 80") + b"\x00\x01" + b"\xff" * 107 + b"\x00" + b"\x01" * 19,
     h("00C0000000")],
    # PIN counter: status, wrong PINs, CHANGE REFERENCE DATA both forms.
    [h("00200000"), bytes([0, 0x20, 0, 0, 8]) + b"0000\xff\xff\xff\xff",
     bytes([0, 0x20, 0, 0, 8]) + CAC_PIN,
     bytes([0, 0x24, 0, 0, 16]) + CAC_PIN + b"654321\xff\xff",
     bytes([0, 0x24, 1, 0, 8]) + b"123123\xff\xff", h("00200000"),
     bytes([0, 0x20, 0, 0, 8]) + b"1\xff\xff\xff\xff\xff\xff\xff",
     bytes([0, 0x20, 0, 0, 8]) + b"2\xff\xff\xff\xff\xff\xff\xff",
     bytes([0, 0x20, 0, 0, 8]) + b"3\xff\xff\xff\xff\xff\xff\xff",
     bytes([0, 0x20, 0, 0, 8]) + b"123123\xff\xff"],
    # GlobalPlatform and the Microsoft PnP applet, GET CHALLENGE.
    [h("00A4040007A0000000030000 00"), h("80CA9F7F00"), h("80CA006600"),
     h("00A404000BA000000397434944 5F0100 00"), h("00CA7F6800"), h("0084000008")],
]


PIV_AID = h("A000000308")
PIV_PIN, PIV_PUK = b"123456\xff\xff", b"12345678"
PIV_SEQUENCES = [
    # What yubico-piv-tool and OpenSC's piv driver start with.
    [bytes([0, 0xA4, 4, 0, 5]) + PIV_AID, h("00FD0000"), h("00F80000"),
     h("00CB3FFF055C035FC10200"), h("00CB3FFF055C035FC10500"), h("00F7008000"),
     h("00200080"), bytes([0, 0x20, 0, 0x80, 8]) + PIV_PIN, h("00200080"),
     h("0087039B047C02800000"), h("00CB3FFF035C017E00")],
    # PIN and PUK flows: change, block, unblock, block both, factory reset.
    [bytes([0, 0xA4, 4, 0, 5]) + PIV_AID,
     bytes([0, 0x24, 0, 0x80, 16]) + PIV_PIN + b"654321\xff\xff",
     bytes([0, 0x20, 0, 0x80, 8]) + b"000000\xff\xff",
     bytes([0, 0x20, 0, 0x80, 8]) + b"000000\xff\xff",
     bytes([0, 0x20, 0, 0x80, 8]) + b"000000\xff\xff",
     bytes([0, 0x2C, 0, 0x80, 16]) + PIV_PUK + b"111111\xff\xff",
     bytes([0, 0x20, 0, 0x80, 8]) + b"111111\xff\xff",
     bytes([0, 0x20, 0, 0x80, 8]) + b"999999\xff\xff",
     bytes([0, 0x20, 0, 0x80, 8]) + b"999999\xff\xff",
     bytes([0, 0x20, 0, 0x80, 8]) + b"999999\xff\xff",
     bytes([0, 0x24, 0, 0x81, 16]) + b"00000000" + b"11111111",
     bytes([0, 0x24, 0, 0x81, 16]) + b"00000000" + b"11111111",
     bytes([0, 0x24, 0, 0x81, 16]) + b"00000000" + b"11111111",
     h("00FB0000"), bytes([0, 0x20, 0, 0x80, 8]) + PIV_PIN],
]


def vpcd_frames(payloads):
    return b"".join(struct.pack(">H", len(p)) + p for p in payloads)


def vscard_frame(msg_type, reader, payload):
    return struct.pack(">III", msg_type, reader, len(payload)) + payload


def main():
    if SEEDS.exists():
        shutil.rmtree(SEEDS)
    iso = iso_test_sequence()
    assert len(iso) > 20, "iso_vpcd.rs no longer has x(&mut c, \"...\") calls"
    all_apdus = iso + [a for f in ISO_PIN_FLOWS for a in f if a] + \
        [a for s in CAC_SEQUENCES for a in s] + [a for s in PIV_SEQUENCES for a in s]
    for i, a in enumerate(dict.fromkeys(all_apdus)):
        write("apdu", f"{i:03}", a)

    for i in range(0, len(iso), MAX_OPS):
        write("card_iso7816", f"e2e-{i // MAX_OPS}", ops(iso[i:i + MAX_OPS]))
        write("card_iso7816", f"e2e-t0-{i // MAX_OPS}", ops(iso[i:i + MAX_OPS], t0=True))
    for i, flow in enumerate(ISO_PIN_FLOWS):
        write("card_iso7816", f"pin-{i}", ops(flow))
    for i, seq in enumerate(CAC_SEQUENCES):
        write("card_cac", f"opensc-{i}", ops(seq))
        write("card_cac", f"opensc-t0-{i}", ops(seq, t0=True))

    for i, seq in enumerate(PIV_SEQUENCES):
        write("card_piv", f"piv-{i}", ops(seq))
        write("card_piv", f"piv-t0-{i}", ops(seq, t0=True))

    write("vpcd", "session", b"\x00" + vpcd_frames(
        [b"\x04", b"\x01", b"\x04"] + iso[:30] + [b"\x02", b"\x00", b"\x01", verify(ISO_PIN)]))
    write("vpcd", "no-card", b"\x80" + vpcd_frames([b"\x04", b"\x01", iso[0]]))

    init = b"VSCD" + struct.pack(">II", 2, 0)
    qemu = (vscard_frame(0, 0, init) + vscard_frame(1, 0, struct.pack(">I", 0))
            + vscard_frame(1, 0, struct.pack(">I", 0)) + vscard_frame(1, 0, struct.pack(">I", 0))
            + b"".join(vscard_frame(6, 0, a) for a in iso[:10])
            + vscard_frame(7, 0, b"") + vscard_frame(3, 0, b""))
    write("vscard_frame", "qemu", b"\x00" + qemu)
    write("vscard_frame", "qemu-split", b"\x06" + qemu)

    sample = (ROOT / "cards/sample.toml").read_text()
    write("iso_description", "sample.toml", sample.encode())
    write("iso_description", "minimal.toml", b'name = "m"\n[[file]]\npath = "3F00"\ntype = "df"\n')

    # Patches of the sample's saved state: the PIN's tries_left digit and
    # nothing (the state as saved).
    write("saved_state", "iso-as-saved", b"\x02")
    write("saved_state", "cac", b"\x01" + json.dumps(
        {"version": 1, "pin": "12345678", "tries_left": 2}).encode())
    write("saved_state", "cac-blocked", b"\x01" + json.dumps(
        {"version": 1, "pin": "12345678", "tries_left": 0}).encode())

    write("atr", "cac", h("3B7A180000736674652063643134 34"))
    write("atr", "t1", h("3B8080010101"))
    write("atr", "t0-t1", h("3BDF18FF81F1FE43003F03834D494641524520506C75732053414D3B"))

    write("ber", "fcp", h("620C 8202 0101 8302 5501 8002 0020"))
    write("ber", "dir", h("6115 4F09 F07669727463617264 5008 7669727463617264"))
    write("ber", "long", h("7F49 8182") + b"\x5A" * 0x82)
    write("ber", "taglist", h("5C 03 5F2042 5C01 7E"))

    write("simpletlv", "ccc", h("F0 15 A0 00 00 01 16 FF 02 00 01 02 03 04 05 06 07 08 09 0A 0B 0C 0D 0E 0F F1 01 21"))
    write("simpletlv", "long", h("70 FF 0401") + b"\x30" * 0x104 + h("71 01 00"))

    # The daemon's configuration, control requests and relay rules, from the
    # sample configuration and the forms docs/CONTROL.md and docs/KEYSTORES.md
    # show.
    config = (ROOT / "packaging/virtcard.sample.toml").read_text()
    write("daemon_config", "sample.toml", config.encode())
    write("daemon_config", "readers.toml", b"""state_dir = "/tmp/vc"
[[reader]]
name = "vm1"
qemu = { tcp = "127.0.0.1:5901" }
card = { builtin = "sample" }
inserted = true
[[reader]]
name = "slot1"
vpcd = { slot = 1 }
card = { dir = "cards/alice" }
""")
    for i, line in enumerate(CONTROL_REQUESTS):
        write("control_request", f"req-{i:02}", line.encode())
    write("relay_rules", "doc", RELAY_RULES.encode() + b"\0" + h("80FE000000") + b"\0" + h("6D00"))
    write("relay_rules", "pin", RELAY_PIN_RULES.encode() + b"\0" + h("0020008000") + b"\0" + h("63C3"))


CONTROL_REQUESTS = [
    '{"op":"list"}',
    '{"op":"insert","reader":"desk"}',
    '{"op":"insert","reader":"desk","card":{"dir":"/srv/cards/alice"}}',
    '{"op":"remove","reader":"desk"}',
    '{"op":"swap","reader":"desk","card":{"description":"/srv/cards/iso.toml","state":"/srv/state/iso.json"}}',
    '{"op":"swap","reader":"desk","card":{"builtin":"sample"}}',
    '{"op":"add-reader","reader":{"name":"vm7","qemu":{"tcp":"127.0.0.1:5907"},"card":{"builtin":"sample"},"inserted":true}}',
    '{"op":"add-reader","reader":{"name":"slot1","vpcd":{"slot":1}}}',
    '{"op":"remove-reader","reader":"vm2"}',
    '{"op":"events"}',
]

RELAY_RULES = """[[rule]]
name = "answer an unknown instruction"
on = "response"
command = "^80FE0000"
find = "^6D00$"
replace = "CAFE9000"
times = 1
"""

RELAY_PIN_RULES = """[[rule]]
on = "response"
command = "^0020"
find = "^63C(.)$"
replace = "63C$1"

[[rule]]
on = "command"
find = "^(0020)00(80)"
replace = "${1}01${2}"
"""


if __name__ == "__main__":
    main()
