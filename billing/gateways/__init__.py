"""Clients of the gateways billing talks to: new-api's management API today (its consume log for
polling and reconciling)."""
