# session_cache_revocation (SPEC §9, issue 13): the directive, and the
# listener without L1.
#
# 1. nginx -t: a channel that is not a lowercase Postgres identifier, a
#    missing channel=, a duplicate, and the directive without
#    session_cache_postgres each fail with a precise message; off and a
#    good name pass.
# 2. Without session_cache_l1 (the revocation lease lives in a zone of
#    its own): one LISTEN connection for the instance (four workers),
#    application_name ngx_session_cache_listen, made with
#    target_session_attrs=read-write whatever the conninfo says (the
#    conninfo here says read-only: the pools cannot connect to this
#    primary, the listener can); a revocation in Postgres deletes the
#    Redis key; the health document and Prometheus show the listener.
# 3. The health document without the directive: enabled false.
# 4. Over TLS (sslmode=require, a self-signed server certificate): the
#    listener's connection is encrypted (pg_stat_ssl), and 300
#    notifications of 500-byte tokens sent in one transaction (about
#    150 KB, many TLS records in a burst) are all taken at once, not at
#    the next heartbeat's answer. (This does not provoke bytes held by
#    OpenSSL that the socket no longer signals: Postgres sends at most
#    8 KiB at a time and libpq always reads with 8 KiB free, so each
#    record fits; a listener reading one round per event passes it too.
#    The loop on SSL_pending in pg_listener.cpp is for servers or
#    proxies that send larger records.)

use v5.36;
use Test::More;
use SessionCache::Test;
use SessionCache::Psql;
use Time::HiRes qw(time);

my $redis = start_redis();
my $pg    = start_postgres();
$pg->install_revocation;

my $PG = '"' . $pg->dsn . '" pool=2 connect_timeout=1s timeout=2s';

# --- 1. nginx -t -------------------------------------------------------------

sub conf ($directive, %o) {
    return protected_site(
        redis    => $redis->url . ' pool=2',
        postgres => exists $o{postgres} ? $o{postgres} : $PG,
        http     => $directive);
}

for my $case (
    ['channel=Revoke', qr/session_cache_revocation: invalid channel "Revoke": the name must start with a lowercase letter or '_'/],
    ['channel=revoke-me', qr/invalid channel "revoke-me": the name may hold only lowercase letters, digits and '_'/],
    ['channel=' . ('a' x 64), qr/invalid channel "a{64}": the name is longer than 63 bytes/],
    ['channel=', qr/invalid channel "": the name is empty/],
    ['"channel=a b"', qr/invalid channel "a b": the name may hold only/],
    ['revoke', qr/session_cache_revocation: expected channel=NAME or off, not "revoke"/],
) {
    my ($arg, $re) = @$case;
    my ($rc, $out) = check_config(http => conf("session_cache_revocation $arg;"));
    isnt($rc, 0, "nginx -t refuses channel argument $arg");
    like($out, $re, "  with a precise message");
}

{
    my ($rc, $out) = check_config(http => conf(
        "session_cache_revocation channel=a;\nsession_cache_revocation off;"));
    isnt($rc, 0, 'a duplicate directive is refused');
    like($out, qr/"session_cache_revocation" directive is duplicate/, '  said so');

    ($rc, $out) = check_config(http => conf(
        'session_cache_revocation channel=session_cache_revoke;', postgres => undef));
    isnt($rc, 0, 'without session_cache_postgres: refused');
    like($out, qr/session_cache_revocation needs session_cache_postgres/, '  said so');

    ($rc, $out) = check_config(http => conf('session_cache_revocation off;'));
    is($rc, 0, 'off passes') or diag $out;
    ($rc, $out) = check_config(http => conf(
        'session_cache_revocation channel=session_cache_revoke;'));
    is($rc, 0, 'a good channel passes') or diag $out;
}

# --- 2. the listener without L1 ----------------------------------------------

(my $ro = $pg->dsn) .= ' target_session_attrs=read-only';
my $nginx = start_nginx(workers => 4, http => protected_site(
    redis    => $redis->url . ' pool=2 timeout=500ms',
    postgres => qq("$ro" pool=2 connect_timeout=1s timeout=2s),
    http     => 'session_cache_revocation channel=session_cache_revoke;',
    server   => 'location = /health { session_cache_health; }'));

sub rv () { my ($r, $d) = $nginx->health; return $d->{revocation} // {} }

ok(wait_until(sub { rv()->{listening} }, 15), 'the listener listens')
    or diag explain rv();
# The listener's last statement: its LISTEN, or the empty query of the
# heartbeat it sends every second once it listens (pg_stat_activity shows
# that one as '': a test slower than a second after the LISTEN sees it).
my $listeners = sub {
    $pg->psql("SELECT count(*) FROM pg_stat_activity WHERE application_name "
            . "= 'ngx_session_cache_listen' AND (query ILIKE 'LISTEN%' "
            . "OR query = '')");
};
is($listeners->(), 1, 'one LISTEN connection for 4 workers, application_name '
   . 'ngx_session_cache_listen, despite target_session_attrs=read-only');
{
    my $r = rv();
    is($r->{channel}, 'session_cache_revoke', 'health: the channel');
    is($r->{state}, 'listening', 'health: state listening');
    is($r->{reason}, undef, 'health: no reason while listening');
    ok($r->{listener} && grep({ $_ == $r->{listener} } $nginx->worker_pids),
       'health: the listener is one of the workers');
}

# a revocation in Postgres alone deletes the Redis key (no L1 here)
my $db = SessionCache::Psql->new($pg);
$pg->add_session('tok-cfg-1', 'user-1', 3600);
$redis->cli('SET', 'session:tok-cfg-1',
            '{"user_id":"user-1","expires_at":' . (time + 3600) . '}', 'EX', 300);
$db->run("UPDATE platform.user_sessions SET revoked_at = now() WHERE token = 'tok-cfg-1'");
ok(wait_until(sub { !$redis->key_exists('session:tok-cfg-1') }, 5),
   'UPDATE revoked_at: the Redis key is deleted');
ok(wait_until(sub { rv()->{revoked} >= 1 }, 5), 'health: revoked counted');
is(rv()->{notifications}, 1, 'health: one notification');

{
    my $r = $nginx->get('/health?format=prometheus');
    my $p = $r->{body};
    like($p, qr/^nginx_session_cache_revocation_enabled 1$/m, 'prometheus: enabled');
    like($p, qr/^nginx_session_cache_revocation_listening 1$/m, 'prometheus: listening');
    like($p, qr/^nginx_session_cache_revocation_revoked_total 1$/m, 'prometheus: revoked');
    like($p, qr/^nginx_session_cache_revocation_notifications_total 1$/m,
         'prometheus: notifications');
    promtool_ok($p, 'the exposition with the revocation families');
}

no_alerts($nginx, 'listener without L1: no alerts');
$nginx->stop;
# its backend ends once Postgres has read the closed connection, not
# when nginx exits: wait for that, so the count below is the next nginx's
ok(wait_until(sub { $listeners->() == 0 }, 10),
   'the stopped nginx\'s LISTEN connection is gone');

# --- 3. without the directive -----------------------------------------------

$nginx = start_nginx(http => protected_site(
    redis => $redis->url, postgres => $PG,
    server => 'location = /health { session_cache_health; }'));
{
    my $r = rv();
    ok(exists $r->{enabled} && !$r->{enabled}, 'health: revocation disabled');
    is($r->{reason}, 'session_cache_revocation is off', 'health: said why');
}
is($listeners->(), 0, 'no LISTEN connection');
no_alerts($nginx);

# --- 4. over TLS -----------------------------------------------------------------

{
    my $tls = SessionCache::Test::make_ca();
    $pg->enable_ssl($tls->{cert}, $tls->{key});
    ok(wait_until(sub { $pg->psql('SHOW ssl') eq 'on' }, 10), 'Postgres: ssl on');
}

$nginx = start_nginx(workers => 2, http => protected_site(
    redis    => $redis->url . ' pool=2 timeout=500ms',
    postgres => '"' . $pg->dsn . ' sslmode=require" pool=2 connect_timeout=1s timeout=2s',
    http     => "session_cache_l1 size=1m ttl=60s;\n"
              . 'session_cache_revocation channel=session_cache_revoke;',
    server   => 'location = /health { session_cache_health; }'));
ok(wait_until(sub { rv()->{listening} }, 15), 'TLS: the listener listens')
    or diag explain rv();
is($pg->psql("SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
           . "WHERE a.application_name = 'ngx_session_cache_listen'"), 't',
   'TLS: the LISTEN connection is encrypted');
{
    my $before = rv()->{revoked};
    my $t0 = time;
    $db->run("SELECT pg_notify('session_cache_revoke', 'tls-' || i || '-' "
           . "|| repeat('t', 480)) FROM generate_series(1, 300) i");
    my $all = wait_until(sub { rv()->{revoked} >= $before + 300 }, 10, 0.005);
    my $took = time - $t0;
    ok($all, 'TLS: 300 notifications in one burst, every one taken');
    # under the heartbeat's 1 s: a notification left in libpq's or
    # OpenSSL's buffers would wait for the next heartbeat's answer to
    # make the socket readable again
    cmp_ok($took, '<', 0.9, sprintf 'TLS: all taken at once (%.1f ms), not '
           . 'at the next heartbeat', $took * 1000);
}
no_alerts($nginx, 'TLS: no alerts');

done_testing;
