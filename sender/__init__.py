"""Signing and durable delivery of usage events, for embedding in a gateway.

Imports only ``schema``: a Python gateway uses ``sender.events`` (mint events), ``sender.outbox`` (make
them durable) and ``sender.relay`` (deliver them); ``sender.sidecar`` is the HTTP intake used by
``creditrelay relay`` for gateways in other languages. Nothing here starts a server on import.
"""
