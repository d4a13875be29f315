"""The baseline: a plain pyHanko `PdfSigner.sign_pdf` loop through `PKCS11Signer`.

Written as a user of pyHanko would write it from its documentation: one process,
one session, the same fields and lock rules as the daemon, no tuning.
"""

from __future__ import annotations

import os
import time
from io import BytesIO

import pkcs11
from asn1crypto import x509
from pkcs11 import Attribute, ObjectClass
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.sign import signers
from pyhanko.sign.fields import (
    FieldMDPAction,
    FieldMDPSpec,
    MDPPerm,
    SigFieldSpec,
    SigSeedSubFilter,
    append_signature_field,
)
from pyhanko.sign.pkcs11 import PKCS11Signer

from daemon.hsm import CHAIN_CERT_LABEL
from daemon.stages import ORDER, Stage


class NaiveSigner:
    """One logged-in session and a PKCS11Signer per key label, as in pyHanko's docs."""

    def __init__(self, module: str, token_label: str, pin: str) -> None:
        self.lib = pkcs11.lib(module)
        self.session = self.lib.get_token(token_label=token_label).open(user_pin=pin)
        query = {Attribute.CLASS: ObjectClass.CERTIFICATE, Attribute.LABEL: CHAIN_CERT_LABEL}
        self.chain = [
            x509.Certificate.load(o[Attribute.VALUE]) for o in self.session.get_objects(query)
        ]
        self._signers: dict[str, PKCS11Signer] = {}

    def signer(self, label: str) -> PKCS11Signer:
        if label not in self._signers:
            self._signers[label] = PKCS11Signer(
                self.session, cert_label=label, key_label=label, ca_chain=self.chain
            )
        return self._signers[label]

    def sign(self, pdf: bytes, stage: Stage, label: str) -> bytes:
        writer = IncrementalPdfFileWriter(BytesIO(pdf))
        if stage is Stage.HOMEROOM_TEACHER:
            for name in ("GVCN", "HieuTruong"):
                append_signature_field(writer, SigFieldSpec(name))
            seal = SigFieldSpec(
                "DauTruong",
                field_mdp_spec=FieldMDPSpec(FieldMDPAction.ALL),
                doc_mdp_update_value=MDPPerm.NO_CHANGES,
            )
            append_signature_field(writer, seal)
        meta = signers.PdfSignatureMetadata(
            field_name=stage.field_name,
            subfilter=SigSeedSubFilter.PADES,
            md_algorithm="sha256",
            certify=stage is Stage.HOMEROOM_TEACHER,
            docmdp_permissions=(
                MDPPerm.NO_CHANGES if stage is Stage.SCHOOL_SEAL else MDPPerm.FILL_FORMS
            ),
        )
        out = signers.sign_pdf(writer, meta, signer=self.signer(label))
        return out.getvalue()

    def record(self, pdf: bytes, labels: dict[Stage, str]) -> list[bytes]:
        """All three stages of one record; every version, for validation."""
        versions = []
        for stage in ORDER:
            pdf = self.sign(pdf, stage, labels[stage])
            versions.append(pdf)
        return versions

    def close(self) -> None:
        self.session.close()


def run(
    module: str,
    token: str,
    pin: str,
    env: dict[str, str],
    jobs: list[tuple[bytes, dict[Stage, str]]],
) -> tuple[float, float, list[bytes]]:
    """Sign every record through its three stages; (wall s, CPU s, issued PDFs)."""
    os.environ.update(env)
    signer = NaiveSigner(module, token, pin)
    signer.record(*jobs[0])  # warm up: imports, key lookup
    issued = []
    cpu, wall = time.process_time(), time.perf_counter()
    for pdf, labels in jobs:
        issued.append(signer.record(pdf, labels)[-1])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    signer.close()
    return wall, cpu, issued
