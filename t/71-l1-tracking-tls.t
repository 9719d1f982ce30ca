# session_cache_l1 tracking=on with rediss://: the invalidation listener
# speaks TLS as the pool does (the chain checked against tls_ca=, the name
# against the URL's host). nginx -t accepts it; the listener arms on a
# TLS-only Redis and a DEL or an overwrite reaches L1; an untrusted
# certificate leaves L1 unused (the health document and the log say why)
# while Postgres answers; a server that accepts TCP and never answers TLS
# fails the listener at its handshake deadline, nginx answering at once.

use v5.36;
use Test::More;
use IO::Socket::INET;
use Time::HiRes qw(time);
use SessionCache::Test;

my $ca    = SessionCache::Test::make_ca();
my $redis = start_redis(tls => { cert => $ca->{cert}, key => $ca->{key},
                                 ca => $ca->{ca} });
my $pg    = start_postgres();

my $PG = '"' . $pg->dsn . '" pool=2 connect_timeout=1s timeout=1s';

sub site ($redis_url, $l1 = 'size=1m ttl=60s') {
    return protected_site(
        redis    => "$redis_url pool=2 connect_timeout=300ms timeout=300ms",
        postgres => $PG,
        http     => "session_cache_l1 $l1;",
        protect  => 'add_header X-Session-Layer $session_cache_layer always;',
        server   => 'location = /health { session_cache_health; }');
}

sub check ($nginx, $token) {
    my $r = $nginx->get('/', cookie => "session=$token");
    return join ' ', $r->{status}, $r->{headers}{'x-session-status'} // '',
                     $r->{headers}{'x-session-layer'} // '',
                     $r->{headers}{'x-session-user'} // '';
}

sub l1 ($nginx) { my ($r, $d) = $nginx->health; return $d->{l1} // {} }

sub until_l1 ($nginx, $token) {
    my $last = '';
    wait_until(sub { ($last = check($nginx, $token)) =~ / l1 / }, 10);
    return $last;
}

# The answer for $token once an invalidation has reached L1: asked until
# it is $want. The health document's count of invalidations alone cannot
# say that this one came: every /health request SETs a probe key under the
# prefix, an invalidation too, so the count may move before it. Within the
# wait (10 s) only the invalidation can change L1's answer (ttl 60 s).
sub after_invalidation ($nginx, $token, $want) {
    my $last = '';
    wait_until(sub { ($last = check($nginx, $token)) eq $want }, 10, 0.02,
               "$token: $want");
    return $last;
}

# Connections subscribed to a channel: the listeners.
sub listeners () {
    return scalar grep { /\bsub=[1-9]/ } split /\n/, $redis->cli('CLIENT', 'LIST');
}

my $url = $redis->url(host => 'localhost');
my @tokens = map { "tok-tls-trk-$_-a1b2" } 1 .. 3;
$pg->add_session($_, "user-$_", 3600) for @tokens;

# --- nginx -t ------------------------------------------------------------------

{
    my ($rc, $out) = check_config(http => site("$url tls_ca=$ca->{ca}"));
    is($rc, 0, 'nginx -t accepts tracking=on with rediss://') or diag $out;
}

# --- the right CA: armed over TLS, invalidations reach L1 ---------------------

{
    my $nginx = start_nginx(http => site("$url tls_ca=$ca->{ca}"),
                            main => 'error_log %%TMP%%/debug.log debug;');

    ok(wait_until(sub { l1($nginx)->{armed} }, 10, 0.02, 'l1 armed'),
       'rediss:// and tracking=on: the listener arms');
    ok(l1($nginx)->{tracking}, 'health: tracking on');
    is(listeners(), 1, 'CLIENT LIST: one listener subscribed');

    # the server has no plain port: what answers there speaks TLS only,
    # so the subscribed listener above came over TLS
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $redis->port, Timeout => 2);
    my $plain = '';
    if ($s) {
        print {$s} "PING\r\n";
        IO::Select->new($s)->can_read(2) and sysread $s, $plain, 64;
        close $s;
    }
    unlike($plain, qr/PONG/, 'the Redis port does not speak plain RESP');
    like(SessionCache::Test::_slurp($nginx->dir . '/debug.log'),
         qr/session_cache: l1 listener: TLS established/,
         'debug log: the listener established TLS');

    my $t = $tokens[0];
    like(until_l1($nginx, $t), qr/^200 HIT l1 user-$t$/, 'a session cached in l1');
    # the cache fill, sent after the first answer (from Postgres), must
    # not land after the DEL; it is an invalidation too, which may already
    # have come (and L1 been filled again from Redis): counted from here
    ok(defined $redis->wait_for_key("session:$t"), '... and in Redis');
    my $before = l1($nginx)->{invalidations} // 0;
    $pg->revoke_session($t);
    $redis->cli('DEL', "session:$t");
    ok(wait_until(sub { (l1($nginx)->{invalidations} // 0) > $before }, 10),
       'DEL over TLS: the invalidation arrives');
    is(after_invalidation($nginx, $t, '401 MISS postgres '), '401 MISS postgres ',
       'after the DEL: not served from l1 (Postgres says revoked)');

    $t = $tokens[1];
    like(until_l1($nginx, $t), qr/^200 HIT l1 user-$t$/, 'another in l1');
    # its cache fill must not land after (and undo) the overwrite
    ok(defined $redis->wait_for_key("session:$t"), '... and in Redis');
    $before = l1($nginx)->{invalidations} // 0;
    $redis->cli('SET', "session:$t", '{"user_id":"changed","expires_at":'
                . int(time + 3600) . '}', 'EX', 300);
    ok(wait_until(sub { (l1($nginx)->{invalidations} // 0) > $before }, 10),
       'overwrite: the invalidation arrives');
    is(after_invalidation($nginx, $t, '200 HIT redis changed'),
       '200 HIT redis changed', 'after the overwrite: the new value, from Redis');
    no_alerts($nginx, 'right CA: no alerts');
}

# --- an untrusted certificate: L1 unused, Postgres answers --------------------

{
    my $nginx = start_nginx(http => site("$url tls_ca=$ca->{other_ca}"));
    my $reason = '';
    ok(wait_until(sub {
        ($reason = l1($nginx)->{reason} // '') =~ /certificate verify failed/
    }, 10), "untrusted CA: the reason in the health document ($reason)");
    ok(!l1($nginx)->{armed}, 'untrusted CA: L1 not armed');
    like($nginx->error_log,
         qr/l1 listener: TLS with redis failed: TLS certificate verify failed/,
         'the error log says the listener\'s certificate failed verification');
    is(check($nginx, $tokens[2]), "200 BYPASS postgres user-$tokens[2]",
       'untrusted CA: still answered, by Postgres');
    no_alerts($nginx, 'untrusted CA: no alerts');
}

# --- a server that accepts TCP and never answers TLS --------------------------

{
    # the kernel completes the connections in the backlog; nothing reads
    my $silent = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                       Listen => 64, Proto => 'tcp')
        or die "listen: $!";
    my $port = $silent->sockport;
    my $nginx = start_nginx(http => site(
        "rediss://localhost:$port/0 tls_ca=$ca->{ca}"));

    my $reason = '';
    ok(wait_until(sub {
        ($reason = l1($nginx)->{reason} // '') =~ /TLS handshake timed out/
    }, 15), "a silent server: the listener fails at its deadline ($reason)");
    ok(!l1($nginx)->{armed}, 'a silent server: L1 not armed');

    # a worker that waited on the handshake would hold these for seconds;
    # 1 s is a generous margin on a loaded machine for a static file
    my $t0 = time;
    my $r = $nginx->get('/public.html');
    is($r->{status}, 200, 'an unprotected location is answered');
    ok(time - $t0 < 1, sprintf('at once (%.3fs)', time - $t0));

    ok(wait_until(sub { (l1($nginx)->{reason} // '') =~ /connecting/ }, 15),
       'the listener tries again after its backoff');
    no_alerts($nginx, 'a silent server: no alerts');
    close $silent;
}

done_testing;
