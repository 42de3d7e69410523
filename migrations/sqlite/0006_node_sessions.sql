-- Node sessions: what each node reported on its Sync stream.

-- The last revision the node acknowledged; devices up to it are installed on the node.
ALTER TABLE vpn_servers ADD COLUMN applied_revision INTEGER NOT NULL DEFAULT 0;
-- Bumped by every new Sync stream; an older stream's writes are guarded by it, so a stream
-- that closes late never marks a reconnected node offline.
ALTER TABLE vpn_servers ADD COLUMN session_generation INTEGER NOT NULL DEFAULT 0;
-- Three missed heartbeats (by the node's own interval) mark it offline.
ALTER TABLE vpn_servers ADD COLUMN heartbeat_interval_ms INTEGER;
ALTER TABLE vpn_servers ADD COLUMN agent_version TEXT;
ALTER TABLE vpn_servers ADD COLUMN wg_backend TEXT;

-- The client's last seen endpoint, and when the node first confirmed the device installed.
ALTER TABLE devices ADD COLUMN endpoint TEXT;
ALTER TABLE devices ADD COLUMN applied_at INTEGER;

CREATE INDEX vpn_servers_liveness ON vpn_servers (status, last_seen_at);
CREATE INDEX devices_server_pending ON devices (server_id, status);
CREATE INDEX peer_changes_device ON peer_changes (device_id, revision);
