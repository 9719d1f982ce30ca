# Redis Cluster over TLS (SPEC §10): session_cache_redis rediss-cluster://.
# One three-master cluster that speaks TLS only (clients, cluster bus,
# replication), certificates from make_ca() (DNS:localhost, IP:127.0.0.1).
# The seed is named "localhost" (checked as a host name); the nodes, as
# CLUSTER SLOTS gives them, are 127.0.0.1 (checked against the
# certificate's IP addresses). The slot map loads over TLS; every token is
# answered from its own master (MISS, then HIT); a slot moved by hand is
# followed (MOVED) to its new owner over TLS; a CA that did not sign the
# nodes' certificates gives no map, says why, and Postgres answers
# (BYPASS); tls_ca= with plain redis-cluster:// fails nginx -t; L1's
# tracking=on listener arms on every master over TLS.

use v5.36;
use Test::More;
use SessionCache::Test;
use File::Basename ();
use Time::HiRes qw(time);

my $PW      = 'ct-S3cret-pw';
my $ca      = SessionCache::Test::make_ca();
my $cluster = SessionCache::Test::start_redis_cluster(masters => 3, requirepass => $PW,
    tls => { cert => $ca->{cert}, key => $ca->{key}, ca => $ca->{ca} });
my $pg      = start_postgres();
my @nodes   = $cluster->nodes;

our $URL = $cluster->url(seeds => [$nodes[0]], host => 'localhost');
my $PG  = '"' . $pg->dsn . '" pool=2 connect_timeout=1s timeout=1s';

like($URL, qr{^rediss-cluster://}, "the URL: $URL");

sub site (%o) {
    return protected_site(
        redis    => "$URL pool=2 connect_timeout=500ms timeout=1s $o{tls}",
        postgres => $PG,
        http     => $o{http} // '',
        protect  => 'add_header X-Session-Layer $session_cache_layer always;',
        server   => 'location = /health { session_cache_health; }');
}

# --- nginx -t ---------------------------------------------------------------

{
    my ($rc, $out) = check_config(http => site(tls => "tls_ca=$ca->{ca}"));
    is($rc, 0, 'nginx -t: rediss-cluster:// with tls_ca= is accepted') or diag $out;

    ($rc, $out) = check_config(http => protected_site(
        redis => $cluster->url(seeds => [$nodes[0]]) =~ s/^rediss-/redis-/r
                 . " tls_ca=$ca->{ca}",
        postgres => $PG));
    isnt($rc, 0, 'nginx -t: tls_ca= with plain redis-cluster:// is refused');
    like($out, qr/tls_ca= and tls_verify= need TLS: write rediss-cluster:\/\/ instead of redis-cluster:\/\//,
         '... and says what to write');
    unlike($out, qr/\Q$PW\E/, '... without the password');

    ($rc, $out) = check_config(http => protected_site(
        redis => "rediss-cluster://:$PW\@127.0.0.1:" . $nodes[0]->port . ",,127.0.0.1:1",
        postgres => $PG));
    like($out, qr/empty seed/, 'nginx -t: a bad rediss-cluster:// seed list, named');
    unlike($out, qr/\Q$PW\E/, '... without the password');
}

# --- the slot map and every token, over TLS -----------------------------------

my $nginx = start_nginx(workers => 1, http => site(tls => "tls_ca=$ca->{ca}"));
ok($nginx->wait_for_log(qr/redis cluster: slot map loaded: 3 masters, 16384 of 16384/),
   'the slot map is loaded over TLS') or diag $nginx->error_log;

my @tokens = map { "tok-ct-$_" } 1 .. 12;
$pg->add_session($_, "user-$_", 3600) for @tokens;

my ($owner) = $cluster->token_owners(@tokens);
$cluster->answers_from_owners(\&check_session, $owner, 'over TLS: ');

my ($r, $doc) = $nginx->health;
is($doc->{status}, 'healthy', 'health: healthy') or diag explain $doc->{errors};
is($doc->{redis}{mode}, 'cluster', 'health: redis.mode is cluster');
is($doc->{redis}{cluster}{state}, 'ok', 'health: cluster state ok');
is(join(',', sort map { $_->{address} } @{ $doc->{redis}{cluster}{nodes} // [] }),
   join(',', sort map { '127.0.0.1:' . $_->port } @nodes),
   'health: the three nodes, by the addresses the cluster gives');
unlike($r->{body}, qr/\Q$PW\E/, 'health: no password');

# --- MOVED, over TLS -------------------------------------------------------------

{
    my ($tok, $from);
    for my $i (1 .. 1000) {
        my $t = "tok-ct-mv-$i";
        my $o = $cluster->owner_of_key("session:$t");
        next unless $o->port == $nodes[0]->port;
        ($tok, $from) = ($t, $o);
        last;
    }
    my $to   = $nodes[1];
    my $slot = $cluster->keyslot("session:$tok");
    my ($from_id, $to_id) = map { $cluster->id_of($_) } $from, $to;

    $pg->add_session($tok, 'user-moved', 3600);
    is(check_session($tok), '200 MISS user-moved', 'the token to move: MISS');
    $from->wait_for_key("session:$tok");
    is(check_session($tok), '200 HIT user-moved', 'then HIT from its node');

    is($to->cli('CLUSTER', 'SETSLOT', $slot, 'IMPORTING', $from_id), 'OK', 'the new owner imports the slot');
    is($from->cli('CLUSTER', 'SETSLOT', $slot, 'MIGRATING', $to_id), 'OK', 'the old owner migrates it');
    is($from->cli('MIGRATE', '127.0.0.1', $to->port, "session:$tok", 0, 5000, 'AUTH', $PW), 'OK',
       'the key moves to the new owner (MIGRATE over TLS)');
    $_->cli('CLUSTER', 'SETSLOT', $slot, 'NODE', $to_id) for @nodes;
    $cluster->wait_ok;

    my $log  = $nginx->log_size;
    my $gets = $to->calls('get');
    is(check_session($tok), '200 HIT user-moved', 'MOVED: followed, a HIT from the new owner');
    is($to->calls('get') - $gets, 1, '... whose GET count moved');
    (undef, $doc) = $nginx->health;
    is($doc->{redis}{cluster}{moved}, 1, 'MOVED counted');
    ok($nginx->wait_for_log(qr/redis cluster: slot map changed/, 1, $log),
       'the map refreshed over TLS');
    is(check_session($tok), '200 HIT user-moved', 'the next request: HIT');
    (undef, $doc) = $nginx->health;
    is($doc->{redis}{cluster}{moved}, 1, '... straight from the new owner');
}

unlike($nginx->error_log, qr/\Q$PW\E/, 'no password in the error log');
no_alerts($nginx);
$nginx->stop;

# --- the wrong CA ------------------------------------------------------------------

{
    my $n = start_nginx(workers => 1, http => site(tls => "tls_ca=$ca->{other_ca}"));
    ok($n->wait_for_log(qr/redis cluster: no slot map: CLUSTER SLOTS: TLS certificate verify failed/),
       'another CA: no slot map, the log says the certificate failed verification')
        or diag $n->error_log;
    is($n->log_count(qr/slot map loaded/), 0, '... and no map was loaded');
    is(check_session($tokens[0]), "200 BYPASS user-$tokens[0]",
       '... requests are answered by Postgres (BYPASS)');
    my (undef, $d) = $n->health;
    is($d->{redis}{cluster}{state}, 'degraded', 'health: the cluster is degraded');
    like($d->{redis}{cluster}{error} // '', qr/TLS certificate verify failed/,
         'health: and says the certificate failed verification');
    unlike($n->error_log, qr/\Q$PW\E/, 'no password in the error log');
    no_alerts($n);
    $n->stop;
}

# --- which name is checked: the seed's as written, each node's address ----------

# The nodes present certificates that name one of the two only (Redis
# reloads its certificate on CONFIG SET, for new connections).
sub serve_cert ($cert, $key) {
    for my $node (@nodes) {
        is($node->cli('CONFIG', 'SET', 'tls-cert-file', $cert, 'tls-key-file', $key), 'OK',
           'node ' . $node->port . ': certificate ' . File::Basename::basename($cert));
    }
}

{
    # DNS:localhost only: the seed "localhost" passes, the nodes, which
    # CLUSTER SLOTS names 127.0.0.1, do not (their certificate lacks the IP)
    serve_cert(SessionCache::Test::make_cert($ca, 'dns-only', 'DNS:localhost'));
    my $n = start_nginx(workers => 1, http => site(tls => "tls_ca=$ca->{ca}"));
    ok($n->wait_for_log(qr/redis cluster: slot map loaded: 3 masters/),
       'DNS-only certificate: the seed, named localhost, gives the map') or diag $n->error_log;
    my $log = $n->log_size;
    is(check_session($tokens[2]), "200 BYPASS user-$tokens[2]",
       '... but a node, known as 127.0.0.1, is refused: Postgres answers');
    ok($n->wait_for_log(qr/TLS certificate does not match the IP address/, 1, $log),
       '... the log says its certificate does not name its IP address')
        or diag $n->log_since($log);
    no_alerts($n);
    $n->stop;
}

{
    # IP:127.0.0.1 only: a seed named localhost is refused, the next seed,
    # written 127.0.0.1, checks against its own name and gives the map
    serve_cert(SessionCache::Test::make_cert($ca, 'ip-only', 'IP:127.0.0.1'));
    local $URL = 'rediss-cluster://:' . $PW . '@localhost:' . $nodes[0]->port
               . ',127.0.0.1:' . $nodes[1]->port;
    my $n = start_nginx(workers => 1, http => site(tls => "tls_ca=$ca->{ca}"));
    ok($n->wait_for_log(qr/redis cluster: slot map loaded: 3 masters, 16384 of 16384/),
       'IP-only certificate: the map comes from the seed written 127.0.0.1') or diag $n->error_log;
    like($n->error_log, qr/TLS certificate does not match the host name/,
         '... after the seed written localhost was refused by name');
    is(check_session($tokens[2]), "200 HIT user-$tokens[2]",
       '... and the nodes (127.0.0.1) answer: HIT');
    unlike($n->error_log, qr/\Q$PW\E/, 'no password in the error log');
    no_alerts($n);
    $n->stop;
}

serve_cert($ca->{cert}, $ca->{key});

# --- tls_verify=off: encryption without authentication ------------------------

{
    my $n = start_nginx(workers => 1, http => site(tls => 'tls_verify=off'));
    ok($n->wait_for_log(qr/redis cluster: slot map loaded: 3 masters, 16384 of 16384/),
       'tls_verify=off: the map loads without a CA')
        or diag $n->error_log;
    is(check_session($tokens[1]), "200 HIT user-$tokens[1]", 'tls_verify=off: HIT');
    no_alerts($n);
    $n->stop;
}

# --- L1 tracking=on: the listener's links over TLS too -------------------------

{
    my $n = start_nginx(workers => 1, http => site(tls => "tls_ca=$ca->{ca}",
                                     http => 'session_cache_l1 size=1m ttl=60s;'));
    my $l1 = sub { my (undef, $d) = $n->health; $d->{l1} // {} };
    ok(wait_until(sub { $l1->()->{armed} }, 10, 0.02, 'l1 armed'),
       'tracking=on: the listener arms on every master over TLS')
        or diag explain $l1->();
    my $t    = $tokens[3];
    my $node = $owner->{$t};
    my $last = '';
    ok(wait_until(sub {
        my $r = get('/', cookie => "session=$t", port => $n->port);
        ($last = ($r->{headers}{'x-session-layer'} // '')) eq 'l1';
    }, 10, 0.02, "$t from l1"), "$t: cached in L1") or diag $last;
    my $before = $l1->()->{invalidations} // 0;
    $node->cli('SET', "session:$t", '{"user_id":"changed","expires_at":'
               . int(time + 3600) . '}', 'EX', 300);
    ok(wait_until(sub { ($l1->()->{invalidations} // 0) > $before }, 10, 0.02, 'invalidation'),
       '... an overwrite on its master: the invalidation arrives over TLS');
    # asked until it changes: the count above moves with every /health
    # request too (its probe SETs a key under the prefix, an invalidation
    # too), so it may have moved before this one came; within the wait
    # (10 s) only the invalidation can change L1's answer (ttl 60 s)
    wait_until(sub {
        my $r = get('/', cookie => "session=$t", port => $n->port);
        ($last = join ' ', $r->{headers}{'x-session-layer'} // '',
                           $r->{headers}{'x-session-user'} // '') eq 'redis changed';
    }, 10, 0.02, 'the new value');
    is($last, 'redis changed', '... the new value, from Redis');
    unlike($n->error_log, qr/\Q$PW\E/, 'no password in the error log');
    no_alerts($n);
}

done_testing;
