"""What sealing a blob costs, per GiB, with the AEADs of `cryptography` (issue 24's choice
of cipher for packs), against the work a backup does anyway (the keyed blob id, HMAC-SHA256),
and what one age operation costs (the per-pack key). Also checks that `openssl enc` in CTR mode
decrypts what each AEAD sealed, and what the restore without volbackup costs when it makes the
keystream of a whole pack with one `openssl enc -aes-256-ecb` (docs/design.md, packed layout).

    python benchmarks/aead_cost.py            # about 15 s of CPU
"""

import hashlib
import hmac
import os
import subprocess
import time

import pyrage
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from pyrage import x25519

GIB = 1 << 30


def per_gib(seal, size: int, total: int = GIB // 2) -> float:
    """CPU seconds per GiB of sealing `size`-byte blobs."""
    data, n = os.urandom(size), total // size
    start = time.process_time()
    for _ in range(n):
        seal(data)
    return (time.process_time() - start) * GIB / (n * size)


key, aad = os.urandom(32), os.urandom(32)
aes, chacha = AESGCM(key), ChaCha20Poly1305(key)
ciphers = {"AES-256-GCM": lambda d: aes.encrypt(os.urandom(12), d, aad),
           "ChaCha20-Poly1305": lambda d: chacha.encrypt(os.urandom(12), d, aad),
           "HMAC-SHA256": lambda d: hmac.digest(key, d, "sha256"),
           "sha256": lambda d: hashlib.sha256(d).digest()}
for size in (16 << 10, 256 << 10, 1 << 20):
    print(f"blob {size >> 10:5d} KiB: " + ", ".join(
        f"{name} {per_gib(seal, size):.2f} s/GiB" for name, seal in ciphers.items()))

recipient = x25519.Identity.generate().to_public()
start, n = time.process_time(), 2000
for _ in range(n):
    pyrage.encrypt(os.urandom(32), [recipient])
print(f"age (pyrage) seal of a 32-byte key to one X25519 recipient: "
      f"{(time.process_time() - start) / n * 1e6:.0f} us each")

# The stock path: openssl's CTR mode turns each AEAD's ciphertext (tag cut off) back into the plaintext.
plain, nonce = os.urandom(100_000), os.urandom(12)
for name, sealed, cipher, iv in (
        ("aes-256-gcm", aes.encrypt(nonce, plain, aad), "-aes-256-ctr", nonce + b"\0\0\0\2"),
        ("chacha20-poly1305", chacha.encrypt(nonce, plain, aad), "-chacha20", b"\1\0\0\0" + nonce)):
    out = subprocess.run(["openssl", "enc", "-d", cipher, "-K", key.hex(), "-iv", iv.hex()],
                         input=sealed[:-16], capture_output=True, check=True).stdout
    print(f"openssl enc -d {cipher} opens {name} (tag cut off): {out == plain}")

# The stock path runs one openssl process per blob: its wall time (start-up dominates).
start, n = time.perf_counter(), 200
for _ in range(n):
    subprocess.run(["openssl", "enc", "-d", "-aes-256-ctr", "-K", key.hex(),
                    "-iv", (nonce + b"\0\0\0\2").hex()],
                   input=aes.encrypt(nonce, plain, aad)[:-16], capture_output=True, check=True)
print(f"one openssl enc process on a 100 kB blob: {(time.perf_counter() - start) / n * 1e3:.1f} ms wall")

# ... which is too slow at thousands of blobs per GiB. One openssl process per pack instead: AES-ECB
# of every record's counter blocks (nonce || 2, 3, ...; built with slice assignments) gives their
# GCM keystream, which is XORed in Python. The stock script's way: its CPU per GiB here.
def stock_open_pack(data_key: bytes, records: list[bytes]) -> list[bytes]:
    counters = bytearray()
    suffix = b"".join((i + 2).to_bytes(4, "big") for i in range(max(len(r) for r in records) // 16 + 1))
    for record in records:
        blocks = (len(record) - 28 + 15) // 16
        part = bytearray(16 * blocks)
        for j in range(12):
            part[j::16] = record[j:j + 1] * blocks
        for j in range(4):
            part[12 + j::16] = suffix[j::4][:blocks]
        counters += part
    stream = subprocess.run(["openssl", "enc", "-aes-256-ecb", "-nopad", "-K", data_key.hex()],
                            input=bytes(counters), capture_output=True, check=True).stdout
    opened, at = [], 0
    for record in records:
        body = record[12:-16]
        pad = stream[at:at + len(body)]
        at += -(-len(body) // 16) * 16
        opened.append((int.from_bytes(body, "little") ^ int.from_bytes(pad, "little"))
                      .to_bytes(len(body), "little"))
    return opened


blobs = [os.urandom(16 << 10) for _ in range(1024)]       # a 16 MiB pack of 16 KiB blobs
records = [(n := os.urandom(12)) + aes.encrypt(n, b, aad) for b in blobs]
child = os.times()
assert stock_open_pack(key, records) == blobs
after = os.times()
cpu = (after.user - child.user) + (after.system - child.system) \
    + (after.children_user - child.children_user) + (after.children_system - child.children_system)
print(f"stock path, one openssl -aes-256-ecb per 16 MiB pack of 16 KiB blobs: {cpu * 64:.1f} s CPU per GiB")
