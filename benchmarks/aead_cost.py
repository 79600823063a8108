"""What sealing a blob costs, per GiB, with the AEADs of `cryptography` (issue 24's choice
of cipher for packs), against the work a backup does anyway (the keyed blob id, HMAC-SHA256),
and what one age operation costs (the per-pack key). Also checks that `openssl enc` in CTR mode
decrypts what each AEAD sealed: the stock-tools restore path (docs/format.md).

    python benchmarks/aead_cost.py            # about 20 s of CPU
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
for size in (16 << 10, 256 << 10, 1 << 20):
    print(f"blob {size >> 10:5d} KiB: AES-256-GCM {per_gib(lambda d: aes.encrypt(os.urandom(12), d, aad), size):.2f}"
          f" s/GiB, ChaCha20-Poly1305 {per_gib(lambda d: chacha.encrypt(os.urandom(12), d, aad), size):.2f}"
          f" s/GiB, HMAC-SHA256 {per_gib(lambda d: hmac.digest(key, d, 'sha256'), size):.2f} s/GiB,"
          f" sha256 {per_gib(lambda d: hashlib.sha256(d).digest(), size):.2f} s/GiB")

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
