#!/usr/bin/env python3
"""Writes the golden KV-channel control frames (tests/vectors/frames/*.bin)
from the layouts in docs/internals/proto.md, with Python's struct module: an
encoder independent of proto/frame.c. tests/unit/test_proto.c decodes each
file, checks every field against the same fixed values, and re-encodes it
byte for byte. Standard library only; run from the repository root:

    python3 tests/vectors/make_frames.py           # (re)write the files
    python3 tests/vectors/make_frames.py --check   # exit 1 if a file differs

Each file is a plaintext frame: the 24-byte header then the body, as
pd_frame_encode writes it before sealing. The frames double as seeds for
tests/fuzz/corpus/frame/.
"""
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "frames")
CORPUS = os.path.join(HERE, "..", "fuzz", "corpus", "frame")

MAJOR, MINOR = 1, 2
T = dict(PREFILL=16, CHUNK=17, ACK=18, DONE=19, ABORT=20, ABORT_ACK=21, CANCEL=22,
         HEARTBEAT=23, ERROR=24, PROGRESS=27, PROMPT_LP=28)
REQ = 0x0123456789ABCDEF
EPOCH = 2


def header(ftype, body, seq):
    # magic, major, minor, type, flags, body length, reserved, seq
    return b"PDKV" + struct.pack("<BBBBIIQ", MAJOR, MINOR, ftype, 0, len(body), 0, seq) + body


def prefill():
    tokens = [1, 9906, 1917, 30, 128000]
    xrid = b"req-7f3a9c"
    body = struct.pack("<QIIII", REQ, EPOCH, len(tokens), 1, 16)
    body += struct.pack("<fffIfffIQ", 0.7, 0.9, 0.05, 40, 0.5, -0.25, 1.1, 5, 0xFEEDFACE12345678)
    body += struct.pack("<HH", len(xrid), 0x0001)  # flags: PD_PREFILL_F_NO_EOS
    body += struct.pack("<%dI" % len(tokens), *tokens) + xrid
    return header(T["PREFILL"], body, 1)


def prefill_prefix():
    # minor 1: PD_PREFILL_F_PREFIX, 2 cached blocks of 16 of a 40-token prompt;
    # the one granted block holds tokens 32..39 (ceil(40 / 16) - 2 = 1)
    tokens = [(i * 7919 + 3) % 128256 for i in range(40)]
    xrid = b"req-prefix-2"
    salt = bytes(0x20 + i for i in range(32))
    name = bytes(0xA0 + i for i in range(32))
    body = struct.pack("<QIIII", REQ, EPOCH, len(tokens), 1, 16)
    body += struct.pack("<fffIfffIQ", 0.0, 1.0, 0.0, 0, 0.0, 0.0, 1.0, 0, 7)
    body += struct.pack("<HH", len(xrid), 0x0002)  # flags: PD_PREFILL_F_PREFIX
    body += salt + struct.pack("<I4x", 2) + name  # the prefix part: n_cached 2, 4 zero
    body += struct.pack("<%dI" % len(tokens), *tokens) + xrid
    return header(T["PREFILL"], body, 10)


def prefill_bias():
    # minor 2: PD_PREFILL_F_PREFIX | PD_PREFILL_F_BIAS, no cached blocks; the
    # bias part (n_bias 3, 4 zero, then token/bias pairs) follows the prefix part
    tokens = [5, 6, 7]
    xrid = b"req-bias-3"
    bias = [(42, -100.0), (7, 2.5), (128000, 100.0)]
    body = struct.pack("<QIIII", REQ, EPOCH, len(tokens), 1, 16)
    body += struct.pack("<fffIfffIQ", 0.0, 1.0, 0.0, 0, 0.0, 0.0, 1.0, 2, 9)
    body += struct.pack("<HH", len(xrid), 0x0006)  # flags: PD_PREFILL_F_PREFIX | BIAS
    body += bytes(32) + struct.pack("<I4x", 0) + bytes(32)  # the prefix part: nothing cached
    body += struct.pack("<I4x", len(bias))
    for tok, b in bias:
        body += struct.pack("<If", tok, b)
    body += struct.pack("<%dI" % len(tokens), *tokens) + xrid
    return header(T["PREFILL"], body, 12)


def prefill_prompt_lp():
    # minor 2: PD_PREFILL_F_PREFIX | PD_PREFILL_F_PROMPT_LP, nothing cached (the
    # flag refuses cached blocks): a salt, an all-zero name, no bias part
    tokens = [11, 22, 33, 44]
    xrid = b"req-plp-4"
    salt = bytes(0x30 + i for i in range(32))
    body = struct.pack("<QIIII", REQ, EPOCH, len(tokens), 1, 16)
    body += struct.pack("<fffIfffIQ", 0.0, 1.0, 0.0, 0, 0.0, 0.0, 1.0, 3, 5)
    body += struct.pack("<HH", len(xrid), 0x000A)  # flags: PD_PREFILL_F_PREFIX | PROMPT_LP
    body += salt + struct.pack("<I4x", 0) + bytes(32)  # the prefix part: nothing cached
    body += struct.pack("<%dI" % len(tokens), *tokens) + xrid
    return header(T["PREFILL"], body, 14)


def prefill_mask():
    # minor 2: PD_PREFILL_F_PREFIX | PD_PREFILL_F_MASK, nothing cached; the mask
    # part (w 3, 4 zero, then w u32 words, bit t % 32 of word t / 32: token t
    # may be the first) follows the prefix part: tokens 0, 31, 35, 36, 38, 41,
    # 44, 60 and 69 of a 70-token vocabulary
    tokens = [8, 9]
    xrid = b"req-mask-3"
    words = [0x80000001, 0x10001258, 0x00000020]
    body = struct.pack("<QIIII", REQ, EPOCH, len(tokens), 1, 16)
    body += struct.pack("<fffIfffIQ", 0.0, 1.0, 0.0, 0, 0.0, 0.0, 1.0, 1, 11)
    body += struct.pack("<HH", len(xrid), 0x0012)  # flags: PD_PREFILL_F_PREFIX | MASK
    body += bytes(32) + struct.pack("<I4x", 0) + bytes(32)  # the prefix part: nothing cached
    body += struct.pack("<I4x", len(words)) + struct.pack("<%dI" % len(words), *words)
    body += struct.pack("<%dI" % len(tokens), *tokens) + xrid
    return header(T["PREFILL"], body, 15)


def prompt_lp():
    # minor 2: prompt positions 3 and 4, 2 alternatives each; the second row
    # holds a -inf alternative (a filtered-out token: a log-probability)
    rows = [(-1.5, [(791, -0.125), (578, -2.5)]),
            (-3.25, [(128000, -0.0625), (7, float("-inf"))])]
    body = struct.pack("<QIIII", REQ, EPOCH, 3, len(rows), 2)  # first 3, n_rows, n_top
    for lp, top in rows:
        body += struct.pack("<f", lp)
        for tok, tlp in top:
            body += struct.pack("<If", tok, tlp)
    return header(T["PROMPT_LP"], body, 13)


def chunk():
    tags = bytes(((i * 16 + j) ^ 0x5A) & 0xFF for i in range(3) for j in range(16))
    body = struct.pack("<QIIIIQQ", REQ, EPOCH, 4, 3, 0, 9, 368640) + tags
    return header(T["CHUNK"], body, 2)


def ack():
    return header(T["ACK"], struct.pack("<QII", REQ, EPOCH, 7), 3)


def done():
    top = [(791, -0.125), (578, -2.5)]
    body = struct.pack("<QIIIfII", REQ, EPOCH, 5, 791, -0.125, len(top), 0)
    for tok, lp in top:
        body += struct.pack("<If", tok, lp)
    return header(T["DONE"], body, 4)


def abort():
    detail = b"block 3 tag mismatch"
    body = struct.pack("<QIHH", REQ, EPOCH, 12, len(detail)) + detail  # 12: integrity
    return header(T["ABORT"], body, 5)


def abort_ack():
    return header(T["ABORT_ACK"], struct.pack("<QI", REQ, EPOCH), 6)


def cancel():
    return header(T["CANCEL"], struct.pack("<QI", REQ, EPOCH + 1), 7)


def heartbeat():
    return header(T["HEARTBEAT"], struct.pack("<IIQ", 5000, 0, 42), 8)


def error():
    detail = b"model fingerprint differs"
    return header(T["ERROR"], struct.pack("<HH", 6, len(detail)) + detail, 9)  # 6: model


def progress():
    # minor 1: state 2 (computing), 2 reserved zero bytes, 32 of 40 tokens done
    return header(T["PROGRESS"], struct.pack("<QIH2xII", REQ, EPOCH, 2, 32, 40), 11)


FRAMES = dict(prefill=prefill, chunk=chunk, ack=ack, done=done, abort=abort,
              abort_ack=abort_ack, cancel=cancel, heartbeat=heartbeat, error=error,
              prefill_prefix=prefill_prefix, progress=progress, prefill_bias=prefill_bias,
              prompt_lp=prompt_lp, prefill_prompt_lp=prefill_prompt_lp,
              prefill_mask=prefill_mask)


def main():
    check = "--check" in sys.argv[1:]
    bad = 0
    for name, make in FRAMES.items():
        data = make()
        for d in (OUT, CORPUS):
            path = os.path.join(d, name + ".bin")
            if check:
                with open(path, "rb") as f:
                    if f.read() != data:
                        print("differs:", path)
                        bad = 1
            else:
                os.makedirs(d, exist_ok=True)
                with open(path, "wb") as f:
                    f.write(data)
    return bad


if __name__ == "__main__":
    sys.exit(main())
