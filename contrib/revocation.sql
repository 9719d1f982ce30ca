-- ngx_session_cache: revocation from Postgres (SPEC §9).
--
-- Every change that ends a session in platform.user_sessions sends its
-- token on a notification channel; nginx, configured with
--
--     session_cache_revocation  channel=session_cache_revoke;
--
-- listens there and drops the token from its L1 cache and from Redis, so
-- that no edge lets it through a second after the commit. The triggers:
--
--   - after UPDATE of revoked_at or expires_at (any change of either:
--     a revocation, an earlier expiry, an un-revocation or an extension,
--     which the edge then reads again from Postgres);
--   - after DELETE.
--
-- A notification is sent at COMMIT (none if the transaction rolls back),
-- and several for the same token in one transaction are sent once.
--
-- Idempotent: run it again after an upgrade (psql -f contrib/revocation.sql).
-- The channel is the one constant below: it must equal channel= in nginx's
-- configuration (a lowercase identifier, at most 63 bytes).

CREATE OR REPLACE FUNCTION platform.session_cache_notify_revoked()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    channel CONSTANT text := 'session_cache_revoke';
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify(channel, OLD.token);
    ELSE
        PERFORM pg_notify(channel, OLD.token);
        IF NEW.token IS DISTINCT FROM OLD.token THEN
            PERFORM pg_notify(channel, NEW.token);
        END IF;
    END IF;
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS session_cache_revoked_update ON platform.user_sessions;
CREATE TRIGGER session_cache_revoked_update
    AFTER UPDATE OF revoked_at, expires_at, token ON platform.user_sessions
    FOR EACH ROW
    WHEN (OLD.revoked_at IS DISTINCT FROM NEW.revoked_at
          OR OLD.expires_at IS DISTINCT FROM NEW.expires_at
          OR OLD.token IS DISTINCT FROM NEW.token)
    EXECUTE FUNCTION platform.session_cache_notify_revoked();

DROP TRIGGER IF EXISTS session_cache_revoked_delete ON platform.user_sessions;
CREATE TRIGGER session_cache_revoked_delete
    AFTER DELETE ON platform.user_sessions
    FOR EACH ROW
    EXECUTE FUNCTION platform.session_cache_notify_revoked();
