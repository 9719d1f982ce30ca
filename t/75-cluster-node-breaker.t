# Redis Cluster: a breaker per master (SPEC §10: "a lost master costs only
# its own slots"). A master that hangs (SIGSTOP: the kernel still accepts
# connections, no reply ever comes) opens its own breaker: its slots go to
# Postgres (BYPASS) without waiting for a timeout per request, while the
# other masters keep answering (HIT) under a breaker tuned to open at 20%,
# which the hung master's share alone would have opened when the breaker
# was one per cluster. The health document and Prometheus show each
# master's breaker (and the alert rule's series); when the master is back,
# a recovery probe reaches it and its breaker closes, with cooldown=60s.

use v5.36;
use Test::More;
use SessionCache::Test;

my $cluster = SessionCache::Test::start_redis_cluster(masters => 3);
my $pg      = start_postgres();
my @nodes   = $cluster->nodes;

my $nginx = $cluster->start_nginx($pg, workers => 2,
    redis    => 'pool=2 connect_timeout=300ms timeout=300ms',
    postgres => 'pool=2 connect_timeout=1s timeout=1s',
    http     => 'session_cache_breaker errors=20% window=10s cooldown=60s min_requests=5;');
ok(wait_until(sub { (() = $nginx->error_log =~ /slot map loaded: 3 masters/g) >= 2 },
              10, 0.05, 'both workers mapped'), 'both workers have the slot map');

# tokens on every master, cached there (and in Postgres)
my $exp = int(time + 3600);
my %tokens;    # port => [tokens]
for my $i (1 .. 300) {
    my $t = "tok-nb-$i";
    my $owner = $cluster->owner_of_key("session:$t");
    next if @{ $tokens{ $owner->port } // [] } >= 6;
    push @{ $tokens{ $owner->port } }, $t;
    $pg->add_session($t, "user-$t", 3600);
    $owner->cli('SET', "session:$t", qq({"user_id":"user-$t","expires_at":$exp}));
}
is(scalar(grep { @{ $tokens{ $_->port } // [] } == 6 } @nodes), 3, 'six tokens on each master');

sub check ($t) {
    my $r = get('/', cookie => "session=$t");
    return join ' ', $r->{status}, $r->{headers}{'x-session-status'} // '',
        $r->{headers}{'x-session-user'} // '';
}

for my $node (@nodes) {
    is(check($_), "200 HIT user-$_", "$_: HIT from its master") for @{ $tokens{ $node->port } };
}

my ($hung, @others) = @nodes;
my $hung_addr = '127.0.0.1:' . $hung->port;

# --- one master hangs: its breaker opens, the others keep answering --------

my $mark = $nginx->log_size;
$hung->pause;
my $opened = qr/\[warn\].*session_cache: redis cluster node \Q$hung_addr\E circuit breaker opened/;
my @hung_tokens = @{ $tokens{ $hung->port } };
my ($i, @wrong) = (0);
ok(wait_until(sub {
    my $t = $hung_tokens[$i++ % @hung_tokens];
    my $answer = check($t);
    push @wrong, "$t: $answer" unless $answer eq "200 BYPASS user-$t";
    $nginx->log_since($mark) =~ $opened;
}, 20, 0.01, 'the hung master\'s breaker opens'),
   'a hung master: its own breaker opens')
    or diag $nginx->log_since($mark);
is("@wrong", '', '... each request answered by Postgres meanwhile (BYPASS)');
unlike($nginx->log_since($mark), qr/\] session_cache: redis circuit breaker opened/,
       '... and not the Redis one');

for my $node (@others) {
    is(check($_), "200 HIT user-$_", "$_: its master answers: HIT") for @{ $tokens{ $node->port } };
}
is(check($_), "200 BYPASS user-$_", "$_: its master's breaker is open: Postgres")
    for @hung_tokens;

my ($r, $d) = $nginx->health;
my %breaker = map { ($_->{address} => $_->{breaker}) } @{ $d->{redis}{cluster}{nodes} };
is($breaker{$hung_addr}, 'open', 'health: the hung master\'s breaker is open')
    or diag explain $d->{redis}{cluster};
is($breaker{"127.0.0.1:" . $_->port}, 'closed', 'health: another master\'s is closed')
    for @others;
is($d->{redis}{breaker}, 'closed', 'health: redis.breaker (the cluster\'s) closed');
is($d->{status}, 'degraded', 'health: degraded');
ok((grep { $_ eq "redis cluster: node $hung_addr: circuit breaker open (its slots go to postgres)" }
    @{ $d->{errors} }), 'health: errors name the master and its breaker')
    or diag explain $d->{errors};

my $p = get('/health?format=prometheus');
like($p->{body},
     qr/^nginx_session_cache_redis_cluster_node_breaker_state\{node="\Q$hung_addr\E",state="open"\} 1$/m,
     'prometheus: the hung master\'s breaker open');
like($p->{body},
     qr/^nginx_session_cache_redis_cluster_node_breaker_state\{node="127\.0\.0\.1:${\ $others[0]->port }",state="closed"\} 1$/m,
     'prometheus: another master\'s closed');
promtool_ok($p->{body}, 'prometheus with node breakers');

# --- the master is back: a recovery probe reaches it, its breaker closes -----

$mark = $nginx->log_size;
$hung->resume;
$i = 0;
ok(wait_until(sub {
    my $t = $hung_tokens[$i++ % @hung_tokens];
    check($t) eq "200 HIT user-$t";
}, 10, 0.05, 'the master answers again'),
   'the master back: its sessions are answered by it again, long before the 60 s cooldown');
like($nginx->log_since($mark),
     qr/redis cluster node \Q$hung_addr\E circuit breaker half-open: a probe reached redis cluster node \Q$hung_addr\E/,
     '... a recovery probe reached it');
ok($nginx->wait_for_log(qr/redis cluster node \Q$hung_addr\E circuit breaker closed: the trial call succeeded/, 1, $mark),
   '... and the trial closed its breaker');
(undef, $d) = $nginx->health;
is($d->{status}, 'healthy', 'health: healthy again') or diag explain $d->{errors};

no_alerts($nginx);
$nginx->stop;
done_testing();
