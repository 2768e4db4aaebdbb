"""The manager's security: its certificate authority (ca), who may call what (authz), and
the TLS port that serves remote nodes (endpoint, with sni routing its connections)."""
