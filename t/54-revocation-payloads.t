# Notifications that are not a token (SPEC §9, issue 13): on the
# revocation channel, payloads of the largest size NOTIFY allows (7999
# bytes), over the token's 512 bytes, with control bytes, "*" followed by
# junk, with a space or a ';', empty, and 1,000 junk payloads in one
# transaction. Each is ignored: counted (health: revocation.ignored),
# logged with its length only (never the payload: each carries a marker
# that must not reach the log), nothing dropped from Redis or L1 by it;
# nginx keeps running and answering. Then "*": all of L1 dropped (flush
# reason revocation); and a real token is still revoked afterwards.

use v5.36;
use Test::More;
use Time::HiRes qw(time);
use SessionCache::Test;
use SessionCache::Psql;

my $redis = start_redis();
my $pg    = start_postgres();
$pg->install_revocation;

my $nginx = start_nginx(workers => 2, http => SessionCache::Test::revocation_site(
    redis => $redis, redis_opts => 'pool=2 connect_timeout=300ms timeout=500ms',
    pg    => $pg,    pg_opts    => 'pool=2 connect_timeout=1s timeout=2s',
    l1    => '1m'));

sub doc () { my ($r, $d) = $nginx->health; return $d }
sub rv () { doc()->{revocation} }
ok(wait_until(sub { SessionCache::Test::revocation_listening($nginx) }, 15),
   'listening');

# a session in L1 and Redis that no junk may drop
my $keep = 'tok-keep-5150';
$pg->add_session($keep, 'u-keep', 3600);
sub layer ($t) {
    my $r = get('/', cookie => "session=$t");
    return "$r->{status} " . ($r->{headers}{'x-session-layer'} // '-');
}
ok(wait_until(sub { layer($keep) eq '200 l1' }, 10, 0.01), 'a session in L1');
# that l1 answer may come before the invalidation of the module's own
# fill, which then drops the entry: let the fill land and its
# invalidation be read, then fill L1 again from Redis (no write)
ok(defined $redis->wait_for_key("session:$keep"), 'its fill reached Redis');
ok(SessionCache::Test::l1_settled($nginx, $redis), 'its invalidation read');
ok(wait_until(sub { layer($keep) eq '200 l1' }, 10, 0.01), 'in L1, to stay');

my $db = SessionCache::Psql->new($pg);
my $M = 'SECRETMARK';
my @junk = (
    ["7999 bytes", "'$M' || repeat('x', 7999 - 10)", 7999],
    ["513 bytes", "'$M' || repeat('y', 503)", 513],
    ["a control byte", "'$M' || E'\\x01' || 'abc'", 14],
    ["a newline", "'$M' || E'\\n'", 11],
    ["DEL", "'$M' || E'\\x7f'", 11],
    ["* and junk", "'*$M'", 11],
    ["a space", "'$M x'", 12],
    ["a semicolon", "'$M;x'", 12],
    ["empty", "''", 0],
    ["non-ASCII", "'$M' || E'\\u00e9'", 12],
);

my $since = $nginx->log_size;
for my $j (@junk) {
    my ($what, $expr) = @$j;
    $db->run("SELECT pg_notify('session_cache_revoke', $expr)");
}
ok(wait_until(sub { rv()->{ignored} >= @junk }, 5), scalar(@junk) . ' payloads ignored');
for my $j (@junk) {
    my ($what, undef, $len) = @$j;
    ok($nginx->log_count(qr/notification ignored, its payload \($len bytes\) is not a token/,
                         $since) >= 1, "$what: logged with its length ($len bytes)");
}

# NOTIFY refuses 8000 bytes and more itself: nothing to receive
eval { $db->run("SELECT pg_notify('session_cache_revoke', repeat('z', 8000))") };
like($@, qr/payload string too long/, 'Postgres refuses an 8000-byte payload');

# 1,000 junk payloads in one transaction
$db->run("SELECT pg_notify('session_cache_revoke', '*$M' || i) FROM generate_series(1, 1000) i");
ok(wait_until(sub { rv()->{ignored} >= @junk + 1000 }, 10), '1,000 more ignored');

unlike($nginx->error_log, qr/$M/, 'no payload in the error log');
is(rv()->{revoked}, 0, 'nothing revoked');
is(doc()->{l1}{flushes}{revocation}, 0, 'L1 not dropped');
is(layer($keep), '200 l1', 'the session still answered from L1');
ok($redis->key_exists("session:$keep"), 'and still in Redis');
is(get('/public.html')->{status}, 200, 'nginx answers');
ok(rv()->{listening}, 'the listener still listens');

# "*": all of L1 dropped
$db->run("SELECT pg_notify('session_cache_revoke', '*')");
ok(wait_until(sub { doc()->{l1}{flushes}{revocation} == 1 }, 5),
   '"*": L1 dropped (flush reason revocation)');
is(rv()->{flushes}, 1, '"*": counted in revocation.flushes');
like(layer($keep), qr/^200 (redis|postgres)$/, '"*": the next answer is not from L1');
ok($redis->key_exists("session:$keep"), '"*": Redis untouched');

# a token still revoked after all that
$db->run("UPDATE platform.user_sessions SET revoked_at = now() WHERE token = '$keep'");
ok(wait_until(sub { layer($keep) =~ /^401/ }, 5, 0.005), 'a revoked token is refused');
is(rv()->{revoked}, 1, 'revoked: 1');

no_alerts($nginx, 'implausible payloads: no alerts');

done_testing;
