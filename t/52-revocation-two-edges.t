# Revocation from Postgres with two nginx instances against the same
# Redis and Postgres (SPEC §9, issue 13): each instance has its own
# listener (two LISTEN connections in all, one per instance), and a
# session revoked in Postgres is refused by both within 1 s of the
# commit, each having had it in its own L1. 50 trials, back to back.

use v5.36;
use Test::More;
use Time::HiRes qw(time);
use List::Util qw(min max);
use SessionCache::Test;
use SessionCache::RedisConn;
use SessionCache::Psql;

my $N = 50;

my $redis = start_redis();
my $pg    = start_postgres();
$pg->install_revocation;

my @tokens = map { "tok-two-$_-77ab" } 1 .. $N;
my $exp = int(time + 3600);
$pg->psql(join ";\n", map {
    "INSERT INTO platform.user_sessions (token, user_id, expires_at) "
  . "VALUES ('$_', 'u-$_', to_timestamp($exp))"
} @tokens);
my $rc = SessionCache::RedisConn->new($redis->port);
$rc->pipeline(map {
    ['SET', "session:$_", qq({"user_id":"u-$_","expires_at":$exp}), 'EX', 300]
} @tokens);

my $site = SessionCache::Test::revocation_site(
    redis => $redis, redis_opts => 'pool=2 connect_timeout=300ms timeout=500ms',
    pg    => $pg,    pg_opts    => 'pool=2 connect_timeout=1s timeout=2s',
    l1    => '1m');
my @edges = map { start_nginx(workers => 2, http => $site) } 1 .. 2;

for my $e (@edges) {
    ok(wait_until(sub { SessionCache::Test::revocation_listening($e) }, 15),
       'edge ' . $e->port . ': L1 armed, listening');
}
is($pg->psql("SELECT count(*) FROM pg_stat_activity WHERE application_name "
           . "= 'ngx_session_cache_listen'"), 2,
   'two LISTEN connections: one per instance');

my $db = SessionCache::Psql->new($pg);
my (@lags, @failed);

sub ask ($e, $t) {
    my $r = $e->get('/', cookie => "session=$t");
    return ($r->{status}, $r->{headers}{'x-session-layer'} // '-', $r->{t1});
}

TRIAL: for my $t (@tokens) {
    for my $e (@edges) {
        my ($s, $l);
        unless (wait_until(sub { ($s, $l) = ask($e, $t); $s == 200 && $l eq 'l1' },
                           10, 0.001)) {
            push @failed, "$t: never in edge " . $e->port . "'s L1 ($s $l)";
            last TRIAL;
        }
    }
    my $t0 = time;
    $db->run("UPDATE platform.user_sessions SET revoked_at = now() WHERE token = '$t'");
    # both asked in turn until both refused
    my %first;
    wait_until(sub {
        for my $i (0, 1) {
            next if $first{$i};
            my ($s, $l, $t1) = ask($edges[$i], $t);
            $first{$i} = $t1 if $s == 401;
        }
        keys %first == 2;
    }, 5, 0.001);
    for my $i (0, 1) {
        if (!$first{$i}) {
            push @failed, "$t: edge $i never refused it";
            next;
        }
        push @lags, $first{$i} - $t0;
        my ($s) = ask($edges[$i], $t);
        push @failed, "$t: edge $i answered $s after its 401" if $s != 401;
    }
}

ok(!@failed, "every token refused by both edges, never served again")
    or diag join "\n", @failed[0 .. min($#failed, 9)];
is(scalar @lags, 2 * $N, "$N revocations x 2 edges");
my @s = sort { $a <=> $b } @lags;
note sprintf 'lag (statement sent to 401) over %d: p50 %.2f ms, max %.2f ms',
    scalar @s, $s[@s / 2] * 1000, $s[-1] * 1000 if @s;
# SPEC §9: no edge lets the token through one second after the commit
ok(@s && $s[-1] < 1, 'both edges refuse within 1 s');

for my $e (@edges) {
    # an edge may refuse the last token on the other edge's DEL (its
    # invalidation) before its own listener has read the notification
    my $revoked = 0;
    wait_until(sub { ($revoked = ($e->health)[1]{revocation}{revoked} // 0) >= $N },
               5, 0.02, 'the listener to count every revocation');
    cmp_ok($revoked, '>=', $N,
           'edge ' . $e->port . ': its listener revoked every token');
    no_alerts($e, 'edge ' . $e->port . ': no alerts');
}

done_testing;
