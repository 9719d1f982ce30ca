# Redis Cluster, bad input (SPEC §10): a seed list that is not a cluster
# (a plain redis-server), a wrong password, a seed nobody listens on. Each
# a clear message in the error log and the health document, requests
# answered by Postgres (BYPASS), never a crash, never a password. Nodes
# known by host names, without a resolver: their slots to Postgres, said
# why. And CLUSTERDOWN: the request to Postgres, a failure for its
# master's breaker.

use v5.36;
use Test::More;
use SessionCache::Test;

my $PW    = 'bad-S3cret-pw';
my $plain = start_redis(requirepass => $PW);
my $pg    = start_postgres();
$pg->add_session('tok-bad-1', 'user-bad', 3600);

sub site ($url) {
    return start_nginx(workers => 1, http => protected_site(
        redis    => "$url pool=2 connect_timeout=300ms timeout=300ms",
        postgres => '"' . $pg->dsn . '" pool=2 connect_timeout=1s timeout=2s',
        server   => 'location = /health { session_cache_health; }'));
}

sub scenario ($name, $url, $log_re, $doc_re) {
    my $nginx = site($url);
    ok($nginx->wait_for_log($log_re), "$name: the error log says why")
        or diag $nginx->error_log;
    my $r = get('/', cookie => 'session=tok-bad-1');
    is(session_answer($r), '200 BYPASS user-bad',
       "$name: a valid session is answered by Postgres");
    my ($h, $doc) = $nginx->health;
    is($h->{status}, 200, "$name: health answers 200 (Postgres checks sessions)");
    is($doc->{status}, 'degraded', "$name: degraded");
    like($doc->{redis}{cluster}{error} // '', $doc_re, "$name: health: redis.cluster.error says why");
    ok((grep { $_ =~ $doc_re } @{ $doc->{errors} // [] }), "$name: ... and errors[] too");
    is($doc->{redis}{cluster}{slotsCovered}, 0, "$name: no slot covered");
    unlike($h->{body} . $nginx->error_log, qr/\Q$PW\E/, "$name: no password anywhere");
    ok($nginx->running, "$name: nginx still running");
    no_alerts($nginx, "$name: no alerts");
}

scenario('a plain redis-server',
         'redis-cluster://:' . $PW . '@127.0.0.1:' . $plain->port,
         qr/\[error\].*redis cluster: no slot map: CLUSTER SLOTS refused: ERR This instance has cluster support disabled \(is this a Redis Cluster\?\)/,
         qr/cluster support disabled \(is this a Redis Cluster\?\)/);

my $cluster = SessionCache::Test::start_redis_cluster(masters => 3, requirepass => $PW);
scenario('a wrong password',
         $cluster->url(password => 'not-the-pw'),
         qr/\[error\].*redis cluster: no slot map: CLUSTER SLOTS: AUTH refused: WRONGPASS/,
         qr/AUTH refused: WRONGPASS/);

# CLUSTERDOWN (a slot no master serves, the map not refreshed yet): the
# request goes to Postgres, and the call counts as a failure for that
# master's breaker (which one failure opens here)
{
    my $nginx = start_nginx(workers => 1, http => protected_site(
        redis    => $cluster->url . ' pool=2 connect_timeout=300ms timeout=300ms',
        postgres => '"' . $pg->dsn . '" pool=2 connect_timeout=1s timeout=2s',
        http     => 'session_cache_breaker errors=0% min_requests=1 cooldown=60s;',
        server   => 'location = /health { session_cache_health; }'));
    $nginx->wait_for_log(qr/redis cluster: slot map loaded: 3 masters/);
    my $owner = $cluster->owner_of_key('session:tok-bad-1');
    my $slot  = $cluster->keyslot('session:tok-bad-1');
    is($owner->cli('CLUSTER', 'DELSLOTS', $slot), 'OK', 'CLUSTERDOWN: the slot unassigned on its master');
    my $r = get('/', cookie => 'session=tok-bad-1');
    is(join(' ', $r->{status}, $r->{headers}{'x-session-status'} // ''), '200 BYPASS',
       'CLUSTERDOWN: the request goes to Postgres');
    my (undef, $doc) = $nginx->health;
    my ($node) = grep { $_->{address} eq '127.0.0.1:' . $owner->port }
                 @{ $doc->{redis}{cluster}{nodes} // [] };
    is($node->{breaker}, 'open', 'CLUSTERDOWN: a failure for its master\'s breaker (open after one)')
        or diag explain $doc->{redis}{cluster};
    is($owner->cli('CLUSTER', 'ADDSLOTS', $slot), 'OK', 'the slot back');
    no_alerts($nginx, 'CLUSTERDOWN: no alerts');
}

# Nodes that announce host names (cluster-preferred-endpoint-type
# hostname) and no resolver in the http block: their slots go to
# Postgres, and the log and the health document say why (with a
# resolver: t/74)
{
    for my $node ($cluster->nodes) {
        $node->cli('CONFIG', 'SET', 'cluster-announce-hostname', 'localhost');
        $node->cli('CONFIG', 'SET', 'cluster-preferred-endpoint-type', 'hostname');
    }
    my $nginx = site($cluster->url);
    ok($nginx->wait_for_log(qr/\[error\].*redis cluster: node localhost:\d+ is known by a host name, and no resolver is configured \(add nginx's "resolver" to the http block\); its slots go to postgres/),
       'host names: the error log says why');
    my $r = get('/', cookie => 'session=tok-bad-1');
    is(join(' ', $r->{status}, $r->{headers}{'x-session-status'} // ''), '200 BYPASS',
       'host names: the request goes to Postgres');
    my ($h, $doc) = $nginx->health;
    is($doc->{status}, 'degraded', 'host names: degraded');
    ok((grep { /redis cluster: node localhost:\d+ known by a host name/ } @{ $doc->{errors} // [] }),
       'host names: errors[] says why');
    ok((grep { ($_->{error} // '') =~ /host name/ } @{ $doc->{redis}{cluster}{nodes} // [] }),
       'host names: the node says why');
    no_alerts($nginx, 'host names: no alerts');
    for my $node ($cluster->nodes) {
        $node->cli('CONFIG', 'SET', 'cluster-preferred-endpoint-type', 'ip');
    }
}

my $port = free_port();
scenario('nothing listening',
         "redis-cluster://:$PW\@127.0.0.1:$port",
         qr/\[error\].*redis cluster: no slot map: CLUSTER SLOTS: /,
         qr/CLUSTER SLOTS: /);

done_testing;
