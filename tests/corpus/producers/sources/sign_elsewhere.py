"""pyHanko: a record someone already signed elsewhere, in a field of their own name.

    python sign_elsewhere.py IN.pdf OUT.pdf

Run with the project's venv (pyHanko is a dependency); the key and certificate are
made up for the occasion and thrown away.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path

from asn1crypto import keys, x509
from cryptography import x509 as cx509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.sign import signers
from pyhanko_certvalidator.registry import SimpleCertificateStore

key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
name = cx509.Name([cx509.NameAttribute(NameOID.COMMON_NAME, "Phụ huynh học sinh")])
now = datetime.now(UTC)
cert = (
    cx509.CertificateBuilder()
    .subject_name(name)
    .issuer_name(name)
    .public_key(key.public_key())
    .serial_number(cx509.random_serial_number())
    .not_valid_before(now - timedelta(days=1))
    .not_valid_after(now + timedelta(days=3650))
    .sign(key, hashes.SHA256())
)
signer = signers.SimpleSigner(
    signing_cert=x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER)),
    signing_key=keys.PrivateKeyInfo.load(
        key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    ),
    cert_registry=SimpleCertificateStore(),
)
writer = IncrementalPdfFileWriter(BytesIO(Path(sys.argv[1]).read_bytes()))
meta = signers.PdfSignatureMetadata(field_name="PhuHuynh")
Path(sys.argv[2]).write_bytes(signers.sign_pdf(writer, meta, signer=signer).getvalue())
