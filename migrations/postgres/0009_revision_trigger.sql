-- SQLite only (a trigger that advances a server's revision with each change row it inserts).
-- On PostgreSQL `devices::peers::record` bumps the revision first, which also locks the server
-- row against concurrent writers; nothing changes here.
SELECT 1;
