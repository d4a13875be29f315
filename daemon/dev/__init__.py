"""Development only: the dev PKI in a SoftHSM2 token, the dev environment, the demo, simulators.

* `env` provisions `.dev/` (keys generated in the token, certificates, the schools and
  signers registered, `hocba-signer.toml` written) and loads it again.
* `pki` makes the dev CA and the signers' certificates.
* `demo` runs the whole flow on one machine; `ministry_sim` is the ministry API simulator.

Nothing in the service imports this room; only the command line does.
"""
