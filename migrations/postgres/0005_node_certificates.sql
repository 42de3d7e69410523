-- Client certificates issued to node agents; a revoked serial is refused on every call.
CREATE TABLE node_certificates (
    serial     TEXT    PRIMARY KEY,
    server_id  BIGINT NOT NULL REFERENCES vpn_servers (id) ON DELETE CASCADE,
    not_after  BIGINT NOT NULL,
    revoked_at BIGINT,
    created_at BIGINT NOT NULL
);
CREATE INDEX node_certificates_server ON node_certificates (server_id);
