# Redis Cluster, a master lost (SPEC §10). With
# cluster-require-full-coverage no and no replica: a master SIGSTOPped
# hangs only the requests for its own keys (they go to Postgres after the
# timeout, BYPASS), the other masters keep answering HIT and a location
# without auth_session is not slowed at all (the non-blocking proof); a
# master killed: its tokens go to Postgres (BYPASS, never a 401 or a 503),
# the others stay HIT, the cluster breaker stays closed, and the dead
# master is tried once a second, not on every request.

use v5.36;
use Test::More;
use Time::HiRes qw(time);
use SessionCache::Test;

my $cluster = SessionCache::Test::start_redis_cluster(masters => 3);
my $pg      = start_postgres();
my @nodes   = $cluster->nodes;

my $nginx = $cluster->start_nginx($pg,
    redis    => 'pool=2 connect_timeout=300ms timeout=300ms',
    postgres => 'pool=4 connect_timeout=1s timeout=2s');

my @tokens = map { "tok-down-$_" } 1 .. 36;
$pg->add_session($_, "user-$_", 3600) for @tokens;
my %owner = map { ($_ => $cluster->owner_of_key("session:$_")->port) } @tokens;
for my $t (@tokens) {
    check_session($t);
    $cluster->owner_of_key("session:$t")->wait_for_key("session:$t");
}
is(scalar(grep { check_session($_) eq "200 HIT user-$_" } @tokens), scalar @tokens,
   'every token cached, HIT');

my ($victim, @others) = @nodes;
my @lost = grep { $owner{$_} == $victim->port } @tokens;
my @kept = grep { $owner{$_} != $victim->port } @tokens;
ok(@lost && @kept, scalar(@lost) . ' tokens on the master that will fail, '
                   . scalar(@kept) . ' on the others');

# --- a master SIGSTOPped: only its own keys wait -----------------------------

$victim->pause;
{
    # its tokens wait for the Redis timeout (300 ms) in the event loop;
    # meanwhile an unprotected page and the other masters' tokens answer
    # at once. A worker that waited on the stopped node would hold them
    # until the client gives up (10 s): 2 s is a wide margin above a
    # loaded machine and far below that.
    my @pending = send_many(scalar @lost, sub ($i) { ('/', cookie => "session=$lost[$i]") });
    my $t0 = time;
    my $pub = get('/public.html');
    my $pub_ms = (time - $t0) * 1000;
    is($pub->{status}, 200, 'a node stopped: the unprotected page answers');
    cmp_ok($pub_ms, '<', 2000, sprintf('... at once (%.0f ms)', $pub_ms));
    $t0 = time;
    my @k = map { check_session($_) } @kept[0 .. 3];
    my $kept_ms = (time - $t0) * 1000;
    is(scalar(grep { /^200 HIT / } @k), 4, 'the other masters\' tokens: HIT');
    cmp_ok($kept_ms, '<', 2000, sprintf('... at once (%.0f ms for 4)', $kept_ms));
    my @r = collect(@pending);
    is(scalar(grep { session_answer($r[$_]) eq "200 BYPASS user-$lost[$_]" } 0 .. $#lost), scalar @lost,
       'the stopped master\'s tokens: BYPASS from Postgres after the timeout');
}
$victim->resume;
ok(wait_until(sub { check_session($lost[0]) eq "200 HIT user-$lost[0]" }, 10, 0.1, 'HIT again'),
   'the master resumed: HIT again');

# --- a master killed ------------------------------------------------------------

$victim->kill;
my $log = $nginx->log_size;
my $t0 = time;
for my $round (1 .. 3) {
    my @lost_now = map { check_session($_) } @lost;
    my @kept_now = map { check_session($_) } @kept;
    is(scalar(grep { $lost_now[$_] eq "200 BYPASS user-$lost[$_]" } 0 .. $#lost), scalar @lost,
       "round $round: the dead master's tokens go to Postgres (BYPASS)");
    is(scalar(grep { $kept_now[$_] eq "200 HIT user-$kept[$_]" } 0 .. $#kept), scalar @kept,
       "round $round: the others stay HIT");
}

{
    # a refused connection keeps its master's slots away from Redis for
    # a second: one connect() (and one error line) a second, not one per
    # request
    my $secs = time - $t0;
    my $lines = $nginx->log_count(qr/connect\(\) failed/, $log);
    cmp_ok($lines, '<=', 2 + int($secs), sprintf('%d requests for the dead master, %d connect() errors in %.1f s',
                                                3 * @lost, $lines, $secs));
}

my ($r, $doc) = $nginx->health;
ok($r->{status} == 200, 'health: answers (' . ($doc->{status} // '?') . ')');
is($doc->{redis}{breaker}, 'closed', 'the cluster breaker stays closed (a third of the calls fail)');
is($doc->{redis}{mode}, 'cluster', 'health: cluster mode');

# the survivors mark it failed (cluster-node-timeout 2 s), and the map a
# refresh brings still gives it its slots: nobody took them over
ok(wait_until(sub { $others[0]->cli('CLUSTER', 'NODES') =~ /master,fail/ }, 10, 0.05,
              'the dead master marked failed'), 'the cluster marks the master failed');
is(scalar(grep { check_session($_) eq "200 HIT user-$_" } @kept), scalar @kept,
   'after the cluster noticed: the others still HIT');
is(scalar(grep { check_session($_) eq "200 BYPASS user-$_" } @lost), scalar @lost,
   '... and the dead master\'s tokens still BYPASS');

no_alerts($nginx);

done_testing;
