"""The district's registry: schools, signers, consent keys and rosters, without SQL by hand.

Every change is one transaction with its `audit_log` entry. Checks that need the HSM
(a signer's key and certificate) run before anything is written; see `checks.py`.
"""
