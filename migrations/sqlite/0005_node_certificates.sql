-- Client certificates issued to node agents; a revoked serial is refused on every call.
CREATE TABLE node_certificates (
    serial     TEXT    PRIMARY KEY,
    server_id  INTEGER NOT NULL REFERENCES vpn_servers (id) ON DELETE CASCADE,
    not_after  INTEGER NOT NULL,
    revoked_at INTEGER,
    created_at INTEGER NOT NULL
);
CREATE INDEX node_certificates_server ON node_certificates (server_id);
