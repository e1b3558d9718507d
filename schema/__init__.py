"""Tables and wire formats shared by billing, receiver and sender. Imports nothing of ours."""
