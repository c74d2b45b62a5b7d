#!/usr/bin/env python3
"""Known-answer vectors for the KV handshake, block tags and sealed frames
(common/auth), computed here with an implementation that shares no code with
the C one:

  X25519, ChaCha20-Poly1305-IETF   PyNaCl (nacl.bindings; its own libsodium build)
  BLAKE2b (keyed, salt, personal)  Python's hashlib
  crypto_kdf_derive_from_key       BLAKE2b(key=master, salt=LE64(id)||0^8, person=ctx||0^8)
  ChaCha20 keystream, Poly1305     pure Python below (RFC 8439), self-checked
                                   against the RFC's test vectors first
  frame and message layouts        struct.pack from docs/internals/proto.md

Inputs (the same as tests/unit/kv_fixture.h): byte i of the PSK is i, of
D's / P's ephemeral secret 0x40+i / 0x80+i, of D's / P's nonce 0xa0+i /
0xc0+i, of the model fingerprint 0xe0+i (mod 256); key id "kat-key-1";
layout 30 layers, 3 KV heads, head dim 64, 16-token blocks, F16, 368640
bytes per block.

    kat_auth.py check DUMP   run the C dump program, compare every value with
                             ours and with tests/vectors/kat_auth.json
    kat_auth.py write        (re)write kat_auth.json, the golden handshake
                             frames and the fuzz seeds derived from them

Exit 0 when everything matches, 1 on a mismatch, 77 (skipped) when PyNaCl is
missing -- tests/vectors/kat_auth.sh finds the test venv that has it.
"""
import hashlib
import json
import os
import struct
import subprocess
import sys

try:
    import nacl.bindings as nb
except ImportError:
    print("skip: PyNaCl is not installed (run deploy/install-deps.sh)")
    sys.exit(77)

HERE = os.path.dirname(os.path.abspath(__file__))
JSON_PATH = os.path.join(HERE, "kat_auth.json")
FRAMES = os.path.join(HERE, "frames")
CORPUS = os.path.join(HERE, "..", "fuzz", "corpus")

# ---- ChaCha20 and Poly1305, RFC 8439 ----

M32 = 0xFFFFFFFF


def _rotl(v, c):
    return ((v << c) & M32) | (v >> (32 - c))


def _quarter(s, a, b, c, d):
    s[a] = (s[a] + s[b]) & M32; s[d] = _rotl(s[d] ^ s[a], 16)
    s[c] = (s[c] + s[d]) & M32; s[b] = _rotl(s[b] ^ s[c], 12)
    s[a] = (s[a] + s[b]) & M32; s[d] = _rotl(s[d] ^ s[a], 8)
    s[c] = (s[c] + s[d]) & M32; s[b] = _rotl(s[b] ^ s[c], 7)


def chacha20_block(key, counter, nonce):
    state = list(struct.unpack("<4I", b"expand 32-byte k")) + list(struct.unpack("<8I", key)) \
        + [counter] + list(struct.unpack("<3I", nonce))
    s = state[:]
    for _ in range(10):
        _quarter(s, 0, 4, 8, 12); _quarter(s, 1, 5, 9, 13)
        _quarter(s, 2, 6, 10, 14); _quarter(s, 3, 7, 11, 15)
        _quarter(s, 0, 5, 10, 15); _quarter(s, 1, 6, 11, 12)
        _quarter(s, 2, 7, 8, 13); _quarter(s, 3, 4, 9, 14)
    return struct.pack("<16I", *((x + y) & M32 for x, y in zip(s, state)))


def chacha20_stream(key, nonce, n, counter=0):
    out = b""
    while len(out) < n:
        out += chacha20_block(key, counter, nonce)
        counter += 1
    return out[:n]


def poly1305(key, msg):
    r = int.from_bytes(key[:16], "little") & 0x0FFFFFFC0FFFFFFC0FFFFFFC0FFFFFFF
    s = int.from_bytes(key[16:], "little")
    p = (1 << 130) - 5
    acc = 0
    for i in range(0, len(msg), 16):
        block = msg[i:i + 16] + b"\x01"
        acc = (acc + int.from_bytes(block, "little")) * r % p
    return ((acc + s) & ((1 << 128) - 1)).to_bytes(16, "little")


def self_test():
    # RFC 8439 2.3.2: the ChaCha20 block function
    key = bytes(range(32))
    nonce = bytes.fromhex("000000090000004a00000000")
    want = bytes.fromhex(
        "10f1e7e4d13b5915500fdd1fa32071c4c7d1f4c733c068030422aa9ac3d46c4e"
        "d2826446079faa0914c2d705d98b02a2b5129cd1de164eb9cbd083e8a2503c4e")
    assert chacha20_block(key, 1, nonce) == want, "ChaCha20 block (RFC 8439 2.3.2)"
    # RFC 8439 2.5.2: Poly1305
    pkey = bytes.fromhex("85d6be7857556d337f4452fe42d506a80103808afb0db2fd4abff6af4149f51b")
    msg = b"Cryptographic Forum Research Group"
    assert poly1305(pkey, msg) == bytes.fromhex("a8061dc1305136c6c22b8baf0c0127a9"), "Poly1305"
    # RFC 8439 2.6.2: Poly1305 key generation from the keystream
    key = bytes(range(0x80, 0xA0))
    nonce = bytes.fromhex("000000000001020304050607")
    assert chacha20_stream(key, nonce, 32) == bytes.fromhex(
        "8ad5a08b905f81cc815040274ab29471a833b637e3fd0da508dbb8e2fdd1a646"), "otk"


# ---- the construction (docs/internals/auth.md) ----

MAJOR, MINOR = 1, 2
T_M1, T_M2, T_CONFIRM, T_ACK, T_HEARTBEAT = 1, 2, 3, 18, 23
T_UCX_ADDR, T_READY = 25, 26
# tests/fuzz/fuzz_kvport.c's fixed receive tokens and worker address
KVPORT_P_TOKEN, KVPORT_D_TOKEN = 0x5555555555555555, 0x4444444444444444
KVPORT_WADDR = bytes([1, 2, 3, 4, 5, 6, 7, 8]) + bytes(40)
LABEL = b"pdserve KV handshake v1"
CTX_HELLO, CTX_SESSION = b"pdkv-hs1", b"pdkv-ks1"
SUBKEYS = [("key_confirm_p", 1), ("key_confirm_d", 2), ("key_ctl_d2p", 3),
           ("key_ctl_p2d", 4), ("key_tag", 5), ("key_enc", 6)]


def fixed(base):
    return bytes((base + i) & 0xFF for i in range(32))


KEY_ID = b"kat-key-1"
PSK = fixed(0x00)
D_SK, P_SK = fixed(0x40), fixed(0x80)
D_NONCE, P_NONCE = fixed(0xA0), fixed(0xC0)
LAYOUT = dict(n_layer=30, n_head_kv=3, head_dim=64, block_size=16, kv_dtype=1,
              block_bytes=2 * 30 * 3 * 64 * 16 * 2, fingerprint=fixed(0xE0))
REQ_ACK, REQ_TAG = 0x0102030405060708, 0x1122334455667788


def kdf(key, subkey_id, ctx):
    return hashlib.blake2b(b"", digest_size=32, key=key,
                           salt=struct.pack("<Q", subkey_id) + bytes(8),
                           person=ctx + bytes(8)).digest()


def mac(key, data, n=32):
    return hashlib.blake2b(data, digest_size=n, key=key).digest()


def header(ftype, body_len, seq):
    return b"PDKV" + struct.pack("<BBBBIIQ", MAJOR, MINOR, ftype, 0, body_len, 0, seq)


def hello(ftype, pk, nonce, mac_key):
    L = LAYOUT
    body = struct.pack("<B3x", len(KEY_ID)) + KEY_ID.ljust(64, b"\0") + pk + nonce
    body += struct.pack("<IIIII4xQ", L["n_layer"], L["n_head_kv"], L["head_dim"],
                        L["block_size"], L["kv_dtype"], L["block_bytes"]) + L["fingerprint"]
    msg = header(ftype, len(body) + 32, 0) + body
    return msg + mac(mac_key, msg)


def seal(key, ftype, body, seq):
    hdr = header(ftype, len(body), seq)
    nonce = bytes(4) + struct.pack("<Q", seq)
    return hdr + nb.crypto_aead_chacha20poly1305_ietf_encrypt(body, hdr, nonce, key)


def block_tag(key, request_id, epoch, block, transfer, data):
    otk = chacha20_stream(key, struct.pack("<IQ", block, transfer), 32)
    return poly1305(otk, struct.pack("<QIIQ", request_id, epoch, block, len(data)) + data)


def compute():
    v = {"psk": PSK}
    v["k_m1"], v["k_m2"] = kdf(PSK, 1, CTX_HELLO), kdf(PSK, 2, CTX_HELLO)
    v["d_eph_pk"] = nb.crypto_scalarmult_base(D_SK)
    v["p_eph_pk"] = nb.crypto_scalarmult_base(P_SK)
    v["dh"] = nb.crypto_scalarmult(D_SK, v["p_eph_pk"])
    assert v["dh"] == nb.crypto_scalarmult(P_SK, v["d_eph_pk"])
    v["m1"] = hello(T_M1, v["d_eph_pk"], D_NONCE, v["k_m1"])
    v["m2"] = hello(T_M2, v["p_eph_pk"], P_NONCE, v["k_m2"])
    v["h"] = hashlib.blake2b(LABEL + v["m1"] + v["m2"], digest_size=64).digest()
    v["master"] = mac(PSK, v["dh"] + v["h"])
    for name, sid in SUBKEYS:
        v[name] = kdf(v["master"], sid, CTX_SESSION)
    v["confirm_d"] = header(T_CONFIRM, 32, 0) + mac(v["key_confirm_d"], v["h"])
    v["confirm_p"] = header(T_CONFIRM, 32, 0) + mac(v["key_confirm_p"], v["h"])
    v["sealed_ack_d2p"] = seal(v["key_ctl_d2p"], T_ACK, struct.pack("<QII", REQ_ACK, 3, 5), 1)
    v["sealed_heartbeat_p2d"] = seal(v["key_ctl_p2d"], T_HEARTBEAT,
                                     struct.pack("<IIQ", 5000, 0, 1), 1)
    data = bytes((i * 31 + 7) & 0xFF for i in range(1000))
    v["block_tag"] = block_tag(v["key_tag"], REQ_TAG, 2, 7, 1, data)
    return v


def compare(label, ours, theirs):
    bad = 0
    for name in ours:
        if name not in theirs:
            print(f"FAIL {label}: {name} missing")
            bad += 1
        elif theirs[name] != ours[name]:
            print(f"FAIL {label}: {name}\n  python {ours[name].hex()}\n  {label:6} {theirs[name].hex()}")
            bad += 1
    for name in theirs:
        if name not in ours:
            print(f"FAIL {label}: unexpected {name}")
            bad += 1
    return bad


def write(v):
    with open(JSON_PATH, "w") as f:
        json.dump({k: x.hex() for k, x in v.items()}, f, indent=1)
        f.write("\n")
    for name in ("m1", "m2", "confirm_d", "confirm_p"):
        with open(os.path.join(FRAMES, f"hs_{name}.bin"), "wb") as f:
            f.write(v[name])
        with open(os.path.join(CORPUS, "frame", f"hs_{name}.bin"), "wb") as f:
            f.write(v[name])
    # fuzz_auth seeds: one mode byte (tests/fuzz/fuzz_auth.c), then the message
    seeds = {"m1": (0, v["m1"]), "m2": (1, v["m2"]), "confirm_d": (2, v["confirm_d"]),
             "confirm_p": (3, v["confirm_p"])}
    sys.path.insert(0, HERE)
    import make_frames  # the golden control frames, sealed by their senders
    from_p = ("chunk", "done", "abort", "abort_ack", "heartbeat", "error")
    from_d = ("prefill", "ack", "abort", "abort_ack", "cancel", "heartbeat", "error")
    for mode, key, names in ((4, v["key_ctl_p2d"], from_p), (5, v["key_ctl_d2p"], from_d)):
        for name in names:
            plain = make_frames.FRAMES[name]()
            ftype, seq = plain[6], struct.unpack("<Q", plain[16:24])[0]
            seeds[f"sealed_{name}_{'p2d' if mode == 4 else 'd2p'}"] = \
                (mode, seal(key, ftype, plain[24:], seq))
    for name, (mode, msg) in seeds.items():
        with open(os.path.join(CORPUS, "auth", name + ".bin"), "wb") as f:
            f.write(bytes([mode]) + msg)
    # fuzz_kvport seeds: one mode byte (bit 0: decoded's side, bit 1: a byte
    # per read), then what that side hears on the KV port, genuine to the end
    def ucx_addr(key, token, seq):
        body = struct.pack("<QII", token, len(KVPORT_WADDR), 0) + KVPORT_WADDR
        return seal(key, T_UCX_ADDR, body, seq)
    p_hears = v["m1"] + v["confirm_d"] + ucx_addr(v["key_ctl_d2p"], KVPORT_D_TOKEN, 1)
    d_hears = (v["m2"] + v["confirm_p"] + ucx_addr(v["key_ctl_p2d"], KVPORT_P_TOKEN, 1) +
               seal(v["key_ctl_p2d"], T_READY, struct.pack("<Q", KVPORT_D_TOKEN), 2))
    kv_seeds = {"p_stream": (0, p_hears), "p_stream_bytewise": (2, p_hears),
                "d_stream": (1, d_hears), "d_stream_bytewise": (3, d_hears),
                "p_17_zero_bytes": (0, bytes(17)), "p_http": (0, b"GET / HTTP/1.1\r\n\r\n"),
                "p_sealed_first": (0, ucx_addr(v["key_ctl_d2p"], KVPORT_D_TOKEN, 1)),
                "d_ready_early": (1, v["m2"] + v["confirm_p"] +
                                  seal(v["key_ctl_p2d"], T_READY,
                                       struct.pack("<Q", KVPORT_D_TOKEN), 1))}
    os.makedirs(os.path.join(CORPUS, "kvport"), exist_ok=True)
    for name, (mode, msg) in kv_seeds.items():
        with open(os.path.join(CORPUS, "kvport", name + ".bin"), "wb") as f:
            f.write(bytes([mode]) + msg)
    # the new frames, plain, for fuzz_frame
    for name, msg in (("ucx_addr", header(T_UCX_ADDR, 16 + len(KVPORT_WADDR), 1) +
                       struct.pack("<QII", KVPORT_P_TOKEN, len(KVPORT_WADDR), 0) + KVPORT_WADDR),
                      ("ready", header(T_READY, 8, 2) + struct.pack("<Q", KVPORT_D_TOKEN))):
        with open(os.path.join(CORPUS, "frame", name + ".bin"), "wb") as f:
            f.write(msg)


def main():
    self_test()
    v = compute()
    if sys.argv[1:2] == ["write"]:
        write(v)
        print(f"wrote {JSON_PATH} and seeds")
        return 0
    if len(sys.argv) != 3 or sys.argv[1] != "check":
        print(__doc__)
        return 2
    out = subprocess.run([sys.argv[2]], check=True, capture_output=True, text=True).stdout
    c_side = {k: bytes.fromhex(x) for k, x in json.loads(out).items()}
    with open(JSON_PATH) as f:
        stored = {k: bytes.fromhex(x) for k, x in json.load(f).items()}
    bad = compare("C", v, c_side) + compare("stored", v, stored)
    print(f"{len(v)} values compared with the C implementation and {JSON_PATH}: "
          f"{'all equal' if not bad else f'{bad} differ'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
