# Redis Sentinel over TLS (rediss-sentinel://). A master and a replica
# (TLS only, tls-replication yes) and three sentinels on tls-port only,
# all with a certificate for DNS:localhost and IP:127.0.0.1 from a test
# CA:
#   - nginx -t: rediss-sentinel:// with tls_ca= passes; tls_ca= or
#     tls_verify= with plain sentinel:// is refused, precisely;
#   - discovery over TLS, a sentinel that accepts TCP and never answers
#     TLS costing only its turn (TLS handshake timed out), the master
#     confirmed; MISS then HIT from the master;
#   - SENTINEL FAILOVER: nginx follows, HIT from the new master; the
#     pool's connections to the master verify its IP address (a
#     certificate without it is refused);
#   - L1 with tracking=on: the listener arms on the master over TLS and
#     an invalidation reaches it;
#   - the wrong CA: no master, the log and the health document say the
#     certificate failed verification, requests answered by Postgres
#     (BYPASS), no password anywhere, no alert.

use v5.36;
use Test::More;
use IO::Socket::INET;
use SessionCache::Test;

my $PW = 'redis-S3cret-pw';

my $ca  = SessionCache::Test::make_ca();
my $tls = { cert => $ca->{cert}, key => $ca->{key}, ca => $ca->{ca} };
my $pg  = start_postgres();
my ($master, $replica, @sentinels)
    = start_sentinel_set(requirepass => $PW, tls => $tls);

my $URL  = sentinel_url(\@sentinels, password => $PW, tls => 1);
my $OPTS = 'pool=2 connect_timeout=500ms timeout=500ms';
my $PG   = '"' . $pg->dsn . '" pool=2 connect_timeout=1s timeout=1s';

sub site ($redis, $http = '') {
    return protected_site(
        redis    => $redis,
        postgres => $PG,
        http     => $http,
        server   => 'location = /health { session_cache_health; }');
}

sub doc ($nginx) { my (undef, $d) = $nginx->health; return $d }

sub status_of ($token) {
    my $r = get('/', cookie => "session=$token");
    return "$r->{status} " . ($r->{headers}{'x-session-status'} // '');
}

# --- nginx -t -------------------------------------------------------------

{
    my $plain = sentinel_url(\@sentinels, password => $PW);
    for my $arg ("tls_ca=$ca->{ca}", 'tls_verify=off') {
        my ($rc, $out) = check_config(http => site("$plain $OPTS $arg"));
        ok($rc != 0 && $out =~ /session_cache_redis: tls_ca= and tls_verify= need TLS: write rediss-sentinel:\/\/ instead of sentinel:\/\//,
           "nginx -t refuses $arg with plain sentinel://") or diag $out;
        unlike($out, qr/S3cret/, '... naming no password');
    }

    my ($rc, $out) = check_config(http => site("$URL $OPTS tls_ca=$ca->{ca}"));
    is($rc, 0, 'nginx -t: rediss-sentinel:// with tls_ca= passes') or diag $out;
}

# --- discovery over TLS, MISS then HIT --------------------------------------

# accepts TCP (the kernel's backlog) and never says a word: its TLS
# handshake must end at the deadline, and the next sentinel be asked
my $hang = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                 Listen => 16, Proto => 'tcp')
    or die "listen: $!";
my $HANG = '127.0.0.1:' . $hang->sockport;
(my $url_hang = $URL) =~ s{\@}{\@$HANG,};

# each worker discovers the master for itself, and one that has not yet
# answers BYPASS: the requests below wait for both
my $hp = free_port();
my $nginx = start_nginx(http => site("$url_hang $OPTS tls_ca=$ca->{ca}",
                                     SessionCache::Test::worker_health($hp)));
my $old = '127.0.0.1:' . $master->port;
my $new = '127.0.0.1:' . $replica->port;

ok(SessionCache::Test::wait_every_worker($nginx, $hp, sub ($d) {
    ($d->{redis}{sentinel}{address} // '') eq $old && $d->{redis}{connected};
}, 'the master over TLS'), 'the master discovered over TLS')
    or diag explain doc($nginx)->{redis};
ok($master->calls('role') >= 1, '... and confirmed with ROLE');
like($nginx->error_log,
     qr/\[notice\].*master "mymaster" found through sentinel 127\.0\.0\.1:\d+ after: sentinel \Q$HANG\E: TLS handshake timed out/,
     'a sentinel that never answers TLS: timed out, the next one asked');

$pg->add_session('tok-stls-1', 'user-1', 3600);
is(status_of('tok-stls-1'), '200 MISS', 'a session from Postgres: MISS');
ok($master->wait_for_key('session:tok-stls-1'), '... written to the master');
my $gets = $master->calls('get');
is(status_of('tok-stls-1'), '200 HIT', 'asked again: HIT');
ok($master->calls('get') > $gets, '... from the master');
is($replica->calls('get'), 0, 'the replica was never asked');
$master->cli('WAIT', 1, 2000);

# --- SENTINEL FAILOVER over TLS -------------------------------------------

$sentinels[0]->cli('SENTINEL', 'FAILOVER', 'mymaster');
ok(wait_until(sub { $sentinels[0]->master_addr eq $new }, 20, 0.05,
              'the sentinels to name the replica'),
   'SENTINEL FAILOVER: the sentinels name the former replica');
ok(wait_until(sub {
    my $d = doc($nginx);
    ($d->{redis}{sentinel}{address} // '') eq $new
        && $d->{redis}{sentinel}{switches} == 1;
}, 10, 0.05, 'nginx to follow'), 'nginx follows the new master')
    or diag explain doc($nginx)->{redis};
ok($nginx->wait_for_log(
       qr/\[warn\].*master "mymaster" is now \Q$new\E \(was \Q$old\E\)/),
   'the switch logged');
ok($nginx->wait_for_log(
       qr/\[info\].*redis sentinel: \+switch-master for "mymaster" to \Q$new\E/),
   'told by +switch-master on the subscription over TLS');

$gets = $replica->calls('get');
ok(wait_until(sub { status_of('tok-stls-1') eq '200 HIT' }, 5, 0.05, 'HIT'),
   'HIT again after the switch');
ok($replica->calls('get') > $gets, '... from the new master');

# The new master's certificate without its IP address (DNS:localhost
# only, from the same CA: the sentinels, which check no name, go on):
# after a reload, the pool's new connections to 127.0.0.1 refuse it.
my ($dns_cert, $dns_key) = SessionCache::Test::make_cert($ca, 'dns-only', 'DNS:localhost');
is($replica->cli('CONFIG', 'SET', 'tls-cert-file', $dns_cert,
                 'tls-key-file', $dns_key), 'OK',
   'the new master now presents a certificate without IP:127.0.0.1');
$nginx->reload;
is(status_of('tok-stls-1'), '200 BYPASS',
   'its IP address not in the certificate: the pool refuses it, Postgres answers');
ok($nginx->wait_for_log(
       qr/\[error\].*session_cache: redis: TLS certificate does not match the IP address/),
   '... logged: the certificate does not match the IP address');
ok(wait_until(sub {
    (doc($nginx)->{redis}{sentinel}{error} // '')
        =~ /named \Q$new\E: TLS certificate does not match the IP address/
}, 10, 0.05, 'the round to fail'), '... and the ROLE check refuses it too')
    or diag explain doc($nginx)->{redis};
unlike($nginx->error_log, qr/S3cret/, 'no password in the log');
no_alerts($nginx);
$nginx->stop;
$replica->cli('CONFIG', 'SET', 'tls-cert-file', $ca->{cert},
              'tls-key-file', $ca->{key});

# --- L1 with tracking=on: the listener follows the master over TLS ------------
# The listener's link to the master verifies the master's IP address, as
# the pool does (sentinel::master_host()); an invalidation reaches L1.

{
    my $n = start_nginx(http => protected_site(
        redis    => "$URL $OPTS tls_ca=$ca->{ca}",
        postgres => $PG,
        http     => 'session_cache_l1 size=1m ttl=30s;',
        protect  => 'add_header X-Session-Layer $session_cache_layer always;',
        server   => 'location = /health { session_cache_health; }'));
    my $l1 = sub { doc($n)->{l1} // {} };
    ok(wait_until(sub { $l1->()->{armed} }, 10, 0.05, 'l1 armed'),
       'tracking=on: the listener arms on the master over TLS')
        or diag explain $l1->();
    my $t = 'tok-stls-l1';
    $pg->add_session($t, 'user-l1', 3600);
    my $layer = sub {
        my $r = $n->get('/', cookie => "session=$t");
        return "$r->{status} " . ($r->{headers}{'x-session-layer'} // '');
    };
    ok(wait_until(sub { $layer->() eq '200 l1' }, 10, 0.02, 'served by l1'),
       'a session served from L1');
    # the cache fill, sent after the first answer (from Postgres), must
    # not land after the DEL
    ok(defined $replica->wait_for_key("session:$t"), '... and in Redis');
    my $before = $l1->()->{invalidations} // 0;
    $pg->revoke_session($t);
    $replica->cli('DEL', "session:$t");
    ok(wait_until(sub { ($l1->()->{invalidations} // 0) > $before }, 10),
       'DEL on the master: the invalidation arrives over TLS');
    # asked until it changes: the count above moves with every /health
    # request too (its probe SETs a key under the prefix, an invalidation
    # too), so it may have moved before this one came; within the wait
    # (10 s) only the invalidation can change L1's answer (ttl 30 s)
    my $last = '';
    wait_until(sub { ($last = $layer->()) eq '401 postgres' }, 10, 0.02,
               'not from l1');
    is($last, '401 postgres', '... and the session is no longer served from L1');
    no_alerts($n);
    $n->stop;
}

# --- the wrong CA -----------------------------------------------------------

{
    my $n = start_nginx(http => site("$URL $OPTS tls_ca=$ca->{other_ca}"));
    my $d;
    ok(wait_until(sub {
        $d = doc($n);
        ($d->{redis}{sentinel}{error} // '')
            =~ /sentinel 127\.0\.0\.1:\d+: TLS certificate verify failed/;
    }, 10, 0.05, 'the health document'),
       'the wrong CA: the health document says the certificate failed')
        or diag explain $d->{redis};
    ok(!defined $d->{redis}{sentinel}{address}, '... no master');
    ok($n->wait_for_log(
           qr/\[error\].*redis sentinel: no master for "mymaster": sentinel 127\.0\.0\.1:\d+: TLS certificate verify failed/),
       '... logged at error');
    is(status_of('tok-stls-1'), '200 BYPASS',
       '... a valid session is let through by Postgres');
    my ($hr) = $n->health;
    unlike($n->error_log . $hr->{body}, qr/S3cret/,
           'no password in the log or the health document');
    no_alerts($n);
    $n->stop;
}

done_testing;
