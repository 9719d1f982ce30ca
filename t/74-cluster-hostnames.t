# Redis Cluster whose nodes announce host names (cluster-announce-hostname
# with cluster-preferred-endpoint-type hostname, as managed offerings with
# TLS do). SPEC §10: "a host name learned at run time is resolved through
# nginx's resolver, never with a blocking call". With a resolver (a DNS
# server of the test's own on loopback) every master gets its pool: every
# token answered from its own master (MISS, fill on the owner, HIT). With
# no resolver, or a name that does not resolve, that master's slots go to
# Postgres (BYPASS), the others keep answering, and the log and the health
# document say why.

use v5.36;
use Test::More;
use SessionCache::Test;

my $PW      = 'ch-S3cret-pw';
my $cluster = SessionCache::Test::start_redis_cluster(masters => 3, requirepass => $PW);
my $pg      = start_postgres();
my @nodes   = $cluster->nodes;

# Each node announces "$prefix$i.cluster.test" and the cluster gives host
# names: waits until every node's CLUSTER SLOTS names every master so.
# Returns {port => name}.
sub announce_names ($what, $prefix, @of) {
    my %name = map { ($of[$_]->port => "$prefix$_.cluster.test") } 0 .. $#of;
    for my $node (@of) {
        $node->cli('CONFIG', 'SET', 'cluster-announce-hostname', $name{ $node->port });
        $node->cli('CONFIG', 'SET', 'cluster-preferred-endpoint-type', 'hostname');
    }
    ok(wait_until(sub {
        for my $node (@of) {
            my $slots = $node->cli('CLUSTER', 'SLOTS');
            return 0 if grep { index($slots, $_) < 0 } values %name;
        }
        1;
    }, 20, 0.05, 'the host names in CLUSTER SLOTS'),
       "$what: every node names every master by its host name in CLUSTER SLOTS");
    return %name;
}

my %name = announce_names('plain', 'node', @nodes);

my $URL = $cluster->url(seeds => [$nodes[0]]);    # the seed: an IP
my $PG  = '"' . $pg->dsn . '" pool=2 connect_timeout=1s timeout=1s';

sub site (%o) {
    return protected_site(
        redis    => "$URL pool=2 connect_timeout=300ms timeout=500ms",
        postgres => $PG,
        http     => $o{http} // '',
        protect  => 'add_header X-Session-Layer $session_cache_layer always;',
        server   => 'location = /health { session_cache_health; }');
}

sub check ($token) {
    my $r = get('/', cookie => "session=$token");
    return join ' ', $r->{status}, $r->{headers}{'x-session-status'} // '',
        $r->{headers}{'x-session-user'} // '';
}

my @tokens = map { "tok-ch-$_" } 1 .. 24;
$pg->add_session($_, "user-$_", 3600) for @tokens;
my ($owner, $on) = $cluster->token_owners(@tokens);
my %owner = %$owner;
my %on    = %$on;

sub resolved_lines ($nginx, $node) {
    my $re = qr/redis cluster: node \Q$name{$node->port}\E:\d+ resolved to 127\.0\.0\.1:${\ $node->port }/;
    return scalar grep { /$re/ } split /\n/, $nginx->error_log;
}

# --- a resolver: every master resolved, every token from its own master ------

{
    my $dns = SessionCache::Test::start_fake_dns();
    my $nginx = start_nginx(workers => 2, http => site(
        http => 'resolver 127.0.0.1:' . $dns->port . ' ipv6=off valid=10s;'));

    # each worker has its own node pools: both must have resolved
    ok(wait_until(sub { !grep { resolved_lines($nginx, $_) < 2 } @nodes },
                  10, 0.05, 'both workers resolved every node'),
       'each worker resolved every master\'s host name through nginx\'s resolver')
        or diag $nginx->error_log;
    ok($dns->asked($name{ $_->port }) >= 1, "the DNS server was asked for $name{ $_->port }")
        for @nodes;

    $cluster->answers_from_owners(\&check, \%owner, 'by host name: ');

    my ($r, $d) = $nginx->health;
    is($d->{status}, 'healthy', 'health: healthy') or diag explain $d->{errors};
    is_deeply([ sort map { $_->{address} } @{ $d->{redis}{cluster}{nodes} } ],
              [ sort map { "$name{ $_->port }:" . $_->port } @nodes ],
              'health: the nodes by the names the cluster gives them')
        or diag explain $d->{redis}{cluster};
    unlike($r->{body}, qr/S3cret/, 'health: no password');
    unlike($nginx->error_log, qr/S3cret/, 'error log: no password');
    no_alerts($nginx);
    $nginx->stop;
}

# --- L1 kept exact by tracking: a listener link to each master by its name ---

{
    # a DNS that answers only once the listener has met the map
    my $dns = SessionCache::Test::start_fake_dns();
    $dns->hold;
    my $nginx = start_nginx(workers => 2, http => site(
        http => 'resolver 127.0.0.1:' . $dns->port . " ipv6=off valid=10s;\n"
              . 'session_cache_l1 size=1m;'));
    my $d;
    ok(wait_until(sub {
        (undef, $d) = $nginx->health;
        ($d->{l1}{reason} // '') =~ /known by a host name, being resolved/;
    }, 10, 0.05, 'the listener waiting for the names'),
       'L1 not armed while the masters\' names are being resolved')
        or diag explain $d->{l1};
    $dns->release;
    ok(wait_until(sub { (undef, $d) = $nginx->health; $d->{l1}{armed} }, 20, 0.05,
                  'L1 armed'),
       'L1 with tracking=on arms once the masters known by name are resolved')
        or diag explain $d->{l1};
    my $t = 'tok-ch-l1';
    my $owner = $cluster->owner_of_key("session:$t");
    $owner->cli('SET', "session:$t",
                '{"user_id":"user-l1","expires_at":' . int(time + 3600) . '}');
    my $r = get('/', cookie => "session=$t");
    is("$r->{status} $r->{headers}{'x-session-status'} $r->{headers}{'x-session-layer'}",
       '200 HIT redis', 'L1: a session only in Redis: HIT from Redis');
    $r = get('/', cookie => "session=$t");
    is("$r->{status} $r->{headers}{'x-session-layer'}", '200 l1', 'L1: then from L1');
    $owner->cli('DEL', "session:$t");
    ok(wait_until(sub { get('/', cookie => "session=$t")->{status} == 401 },
                  5, 0.02, 'the invalidation'),
       'L1: a DEL on the master known by its host name reaches L1 (401: not in Postgres)');
    no_alerts($nginx);
    $nginx->stop;
}

# --- a master back at another address (a pod restarted): resolved again ------

{
    my $moved = $nodes[1];
    my $mname = $name{ $moved->port };
    my ($t) = grep { $owner{$_} == $moved } @tokens;
    my $dns = SessionCache::Test::start_fake_dns();
    $dns->answer($mname, '127.0.0.2');    # where nothing listens
    my $nginx = start_nginx(workers => 1, http => site(
        http => 'resolver 127.0.0.1:' . $dns->port . " ipv6=off valid=1s;\n"
              . 'session_cache_l1 size=1m;'));
    ok($nginx->wait_for_log(qr/redis cluster: node \Q$mname\E:\d+ resolved to 127\.0\.0\.2:/),
       'moved: the master first resolves to an address where nothing listens');
    is(check($t), "200 BYPASS user-$t", 'moved: its session answered by Postgres');

    my $mark = $nginx->log_size;
    $dns->answer($mname, '127.0.0.1');
    ok(wait_until(sub { check($t) eq "200 HIT user-$t" }, 10, 0.05, 'HIT from the moved master'),
       'moved: its name resolved again, its sessions come from it again');
    like($nginx->log_since($mark),
         qr/\[notice\].*redis cluster: node \Q$mname\E:\d+ now resolves to 127\.0\.0\.1:\d+ \(was 127\.0\.0\.2:\d+\); its connections to the old address are closed/,
         'moved: the new address logged at notice');
    my $d;
    ok(wait_until(sub { (undef, $d) = $nginx->health; $d->{l1}{armed} }, 10, 0.05, 'L1 armed'),
       'moved: L1\'s listener follows the master to its new address')
        or diag explain $d->{l1};
    no_alerts($nginx);
    $nginx->stop;
}

# --- no resolver: the masters known by name get no pool, Postgres answers ----

{
    my $nginx = start_nginx(workers => 1, http => site());
    my $re = qr/\[error\].*redis cluster: node node\d\.cluster\.test:\d+ is known by a host name, and no resolver is configured \(add nginx's "resolver" to the http block\); its slots go to postgres/;
    ok(wait_until(sub { (() = $nginx->error_log =~ /$re/g) >= 3 }, 10, 0.05,
                  'three error lines'),
       'no resolver: each master known by a name is logged at error, with what to add')
        or diag $nginx->error_log;
    for my $t (@tokens[0 .. 5]) {
        is(check($t), "200 BYPASS user-$t", "no resolver: $t answered by Postgres");
    }
    my (undef, $d) = $nginx->health;
    is($d->{status}, 'degraded', 'no resolver: health degraded');
    ok((grep { /^redis cluster: node node\d\.cluster\.test:\d+ known by a host name, and no resolver is configured/ }
        @{ $d->{errors} }), 'no resolver: health says why')
        or diag explain $d->{errors};
    no_alerts($nginx);
    $nginx->stop;
}

# --- a name that does not resolve: that master's slots only ------------------

{
    my ($lost) = grep { $on{ $_->port } } @nodes;
    my $lost_name = $name{ $lost->port };
    my $dns = SessionCache::Test::start_fake_dns(resolve => sub ($n) { $n ne $lost_name });
    my $nginx = start_nginx(workers => 1, http => site(
        http => 'resolver 127.0.0.1:' . $dns->port . ' ipv6=off valid=10s;'));
    ok($nginx->wait_for_log(qr/\[error\].*redis cluster: node \Q$lost_name\E:\d+ is known by a host name that did not resolve \(Host not found\); asked again at the next refresh; its slots go to postgres/),
       'a name that does not resolve: logged at error');
    ok(wait_until(sub { !grep { $_ != $lost && resolved_lines($nginx, $_) < 1 } @nodes },
                  10, 0.05, 'the other names resolved'),
       '... the other masters resolved');
    for my $t (@tokens) {
        my $want = $owner{$t} == $lost ? "200 BYPASS user-$t" : "200 HIT user-$t";
        is(check($t), $want, "$t: " . ($owner{$t} == $lost
            ? 'its master unresolved: Postgres' : 'its master resolved: HIT'));
    }
    my (undef, $d) = $nginx->health;
    ok((grep { /^redis cluster: node \Q$lost_name\E:\d+ known by a host name that did not resolve/ }
        @{ $d->{errors} }), 'health: says which node and why')
        or diag explain $d->{errors};
    no_alerts($nginx);
    $nginx->stop;
}

# --- over TLS: each node's certificate checked against its host name ---------

{
    my $ca = SessionCache::Test::make_ca(
        san => 'DNS:tls0.cluster.test,DNS:tls1.cluster.test,IP:127.0.0.1');
    my $tls = SessionCache::Test::start_redis_cluster(masters => 3, requirepass => $PW,
        tls => { cert => $ca->{cert}, key => $ca->{key}, ca => $ca->{ca} });
    my @tn = $tls->nodes;
    # the third node announces a name its certificate does not carry
    my %tname = announce_names('TLS', 'tls', @tn);

    my $dns = SessionCache::Test::start_fake_dns();
    my $nginx = start_nginx(workers => 1, http => protected_site(
        redis    => $tls->url(seeds => [$tn[0]])
                    . " tls_ca=$ca->{ca} pool=2 connect_timeout=500ms timeout=1s",
        postgres => $PG,
        http     => 'resolver 127.0.0.1:' . $dns->port . ' ipv6=off valid=10s;',
        server   => 'location = /health { session_cache_health; }'));

    my @mine = map { "tok-cht-$_" } 1 .. 24;
    $pg->add_session($_, "user-$_", 3600) for @mine;
    my %own = map { ($_ => $tls->owner_of_key("session:$_")) } @mine;
    my ($bad) = grep { $_->port == $tn[2]->port } @tn;

    ok(wait_until(sub {
        2 == grep { my $p = $_->port;
                    $nginx->error_log =~ /node \Q$tname{$p}\E:$p resolved to 127\.0\.0\.1:$p/ }
             @tn[0, 1]
    }, 10, 0.05, 'tls0 and tls1 resolved'), 'TLS: the names resolved');
    for my $t (grep { $own{$_} != $bad } @mine) {
        is(check($t), "200 MISS user-$t", "TLS: $t: MISS");
        ok(defined $own{$t}->wait_for_key("session:$t"),
           "TLS: $t: the fill reached its master, verified by its host name");
        is(check($t), "200 HIT user-$t", "TLS: $t: HIT");
    }
    for my $t (grep { $own{$_} == $bad } @mine) {
        is(check($t), "200 BYPASS user-$t",
           "TLS: $t: its master's certificate does not carry its name: Postgres");
    }
    ok($nginx->wait_for_log(qr/\[error\].*TLS certificate does not match the host name .*backend: redis cluster node tls2\.cluster\.test:\d+/),
       'TLS: the certificate that does not name tls2.cluster.test is refused, and said')
        or diag $nginx->error_log;
    unlike($nginx->error_log, qr/S3cret/, 'TLS: error log: no password');
    no_alerts($nginx);
    $nginx->stop;
}

done_testing();
