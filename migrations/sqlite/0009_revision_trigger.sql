-- A change row takes its server's next revision in its own INSERT (a subquery, safe under
-- SQLite's single writer), and this trigger moves the server's revision up to it: one
-- statement per change instead of two on the device-add path (`devices::peers::record`).
CREATE TRIGGER peer_changes_advance_revision AFTER INSERT ON peer_changes
BEGIN
    UPDATE vpn_servers
    SET config_revision = MAX(config_revision, NEW.revision), updated_at = NEW.created_at
    WHERE id = NEW.server_id;
END;
