# Failover under load (SPEC §11, issue 15): the pool wants a primary
# (target_session_attrs=read-write) among two hosts; the primary is
# stopped, the standby promoted (pg_ctl promote), nginx is not touched.
#   - sessions cached in Redis: 200 throughout, never slow (no worker
#     waits for Postgres);
#   - tokens remembered as invalid: 401 throughout;
#   - fresh tokens (each one new, so each one needs Postgres): 401 while a
#     primary answers, 503 only between the stop and the promotion, and
#     401 again within connect_timeout (1 s) of the promotion. The window
#     is measured and printed.
# The breaker is off here, so that the window is the pools' alone (with a
# breaker, its cooldown may hold lookups off a little longer: README).

use v5.36;
use Test::More;
use Time::HiRes qw(time);
use List::Util qw(max min);
use SessionCache::Test;
use SessionCache::Load;

my $redis   = start_redis();
my $primary = start_postgres();
my $standby = $primary->start_standby;
my $PW = $primary->password;

my @warm    = map { "tok-fo-warm-$_" } 1 .. 8;
my @invalid = map { "tok-fo-unknown-$_" } 1 .. 8;
$primary->add_session($_, "user-$_", 3600) for @warm;
$standby->wait_replayed($primary);

my $dsn = $primary->hosts_dsn([$primary, $standby],
                              target_session_attrs => 'read-write');

my $nginx = start_nginx(workers => 2, http => protected_site(
    redis    => $redis->url . ' pool=2 timeout=500ms',
    postgres => qq{"$dsn" pool=2 connect_timeout=1s timeout=1s},
    http     => "session_cache_breaker off;\n"
              . "session_cache_negative_ttl 300s;",
    server   => 'location = /health { session_cache_health timeout=2s; }'));

get('/', cookie => "session=$_") for @warm, @invalid;
ok(!grep({ !defined $redis->wait_for_key("session:$_") } @warm, @invalid),
   'warm-up: the sessions and the invalid tokens are in Redis');

my $load = start_load(port => $nginx->port, rate => 150,
                      tokens => { valid => \@warm, invalid => \@invalid },
                      fresh => 'tok-fo-fresh');
my $fresh_ok = sub ($r) { $r->{kind} eq 'fresh' && $r->{status} == 401 };
ok($load->wait_for(10, $fresh_ok, '10 fresh tokens answered by Postgres'),
   'before: Postgres answers the fresh tokens');

my $t_stop = time;
$primary->stop;
my $t_stopped = time;
ok($load->wait_for(1, sub ($r) {
       $r->{kind} eq 'fresh' && $r->{status} == 503 && $r->{t0} >= $t_stop
   }, 'a 503 once no primary is left'),
   'primary stopped: fresh tokens get 503 (no server can answer them)');

my $t_promote = time;
$standby->promote;
my $t_promoted = time;
ok(!$standby->in_recovery, 'the standby is promoted');
ok($load->wait_for(1, sub ($r) { $fresh_ok->($r) && $r->{t0} >= $t_promoted },
                   'a fresh token answered after the promotion'),
   'promoted: fresh tokens are answered again');
my $t_after = time;
ok($load->wait_for(10, sub ($r) { $fresh_ok->($r) && $r->{t0} >= $t_after },
                   '10 more'), '... and keep being answered');
my @r = $load->stop;

my @fresh = grep { $_->{kind} eq 'fresh' } @r;
my @bad = unexpected(\@r, fresh => [503]);
is(scalar @bad, 0, 'no valid cached session refused, no invalid token let '
                 . 'through, no other status') or diag summarize(\@bad);
my @refused = grep { $_->{kind} eq 'valid' && $_->{status} != 200 } @r;
is(scalar @refused, 0, '0 refused valid cached sessions');

my @f503 = grep { $_->{status} == 503 } @fresh;
my $first_503 = min(map { $_->{t0} } @f503) // 0;
my $last_503  = max(map { $_->{t1} } @f503) // 0;
my $back = first_time(\@fresh, $t_promoted, $fresh_ok);
ok($first_503 >= $t_stop, '503s only after the primary was stopped');
# a request sent before the promotion was complete may still fail; none
# sent once a fresh token was answered again does
ok(!grep({ $_->{t0} >= $back } @f503),
   'no 503 once lookups were answered again');
my $window = $back - $t_promoted;
# the figure protects: a new connection finds the new primary at once (a
# refused host costs nothing), well within connect_timeout (1 s)
ok($window < 1.0, sprintf('lookups back %.3f s after the promotion '
                          . '(within connect_timeout, 1 s)', $window));
diag sprintf('failover: primary stopped in %.3f s, promotion took %.3f s; '
           . 'fresh lookups failing (503) for %.3f s (%d of %d), back '
           . '%.3f s after pg_ctl promote returned',
             $t_stopped - $t_stop, $t_promoted - $t_promote,
             $last_503 - $first_503, scalar @f503, scalar @fresh, $window);
my $slowest = max(map { $_->{ms} } grep { $_->{kind} eq 'valid' } @r);
# the figure protects: no worker waited for a dead primary while cached
# sessions were asked for (a blocked worker would show connect_timeout,
# 1 s)
ok($slowest < 1000, sprintf('cached sessions never waited (slowest %.0f ms)',
                           $slowest));
note summarize(\@r);

my ($h, $doc) = $nginx->health;
my ($on) = grep { $_->{pool} eq 'main' } @{ $doc->{postgres}{hosts} // [] };
is($on->{port} // '', $standby->port, 'health: the pool is on the new primary');
is($on->{role} // '', 'primary', '... which is a primary');

unlike($nginx->error_log, qr/\Q$PW\E/, 'no password in the error log');
no_alerts($nginx);
done_testing;
