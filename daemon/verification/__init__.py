"""Who signed what: the verdict on a record, and what a certificate or a PDF says it is.

A room: imports only the foundations (stages, settings) and daemon.pdf's validation
reports; used by `hocba-signer verify`, the package check and the ministry simulator.
"""
