# Recovery probes (SPEC §5 as built: README, session_cache_breaker). While
# a breaker refuses calls, each worker probes the backend (PING, SELECT 1)
# at most once a second; a probe that is answered ends the cooldown, and
# the next call is the half-open trial. The cooldown here is 60 s, so a
# breaker that closes within the 10 s the log waits allow was closed by a
# probe, not by the cooldown's end.
#   - Redis killed: probes fail quietly (info), at most one a second per
#     worker; Redis restarted: the breaker closes at once, the load goes
#     through Redis again.
#   - Postgres stopped, then started: the same; uncached sessions are let
#     through again.
#   - Postgres hung (SIGSTOP): probes time out, the breaker stays open (no
#     probe "reaches" a server that does not answer), the unprotected page
#     never waits; Postgres resumed: closed again.

use v5.36;
use Test::More;
use Time::HiRes qw(time);
use List::Util qw(max);
use SessionCache::Test;
use SessionCache::Load;

my $redis = start_redis();
my $pg    = start_postgres();

my @valid   = map { "tok-rcv-$_" } 1 .. 8;
my @cold    = map { "tok-rcv-cold-$_" } 1 .. 8;
my @invalid = map { "tok-rcv-unknown-$_" } 1 .. 8;
$pg->add_session($_, "user-$_", 3600) for @valid, @cold;

my $nginx = start_nginx(workers => 2, http => protected_site(
    redis    => $redis->url . ' pool=2 connect_timeout=300ms timeout=300ms',
    postgres => '"' . $pg->dsn . '" pool=2 connect_timeout=500ms timeout=500ms',
    http     => "session_cache_breaker errors=50% window=2s buckets=4 "
              . "cooldown=60s min_requests=5;\n"
              . "session_cache_negative_ttl 300s;"));

get('/', cookie => "session=$_") for @valid, @invalid;
ok(!grep({ !defined $redis->wait_for_key("session:$_") } @valid, @invalid),
   'warm-up: the valid and the invalid tokens are in Redis');

sub through_redis ($x) { $x->{sstatus} =~ /^(HIT|MISS|NEGATIVE)$/ }

# probes logged since $mark, and the time they span
sub probes_failed ($name, $mark) {
    $nginx->log_count(qr/\[info\].*session_cache: $name recovery probe failed: /, $mark);
}

# --- Redis killed, then restarted ------------------------------------------------

{
    my $load = start_load(tokens => { valid => \@valid, invalid => \@invalid },
                          public => '/public.html');
    ok($load->wait_for(20, \&through_redis, '20 answers through Redis'),
       'before: the load goes through Redis');
    my $mark = $nginx->log_size;
    $redis->kill;
    ok($nginx->wait_for_log(qr/redis circuit breaker opened:/, 1, $mark),
       'Redis killed: its breaker opens');
    my $t_open = time;
    ok(wait_until(sub { probes_failed('redis', $mark) >= 3 }, 10, 0.05,
                  'three failed recovery probes'),
       'Redis down: recovery probes go, and fail');
    my $span = time - $t_open;
    my $n = probes_failed('redis', $mark);
    # one a second from each of the 2 workers, the first at once
    cmp_ok($n, '<=', 2 * (int($span) + 2),
           sprintf('at most one probe a second per worker (%d in %.1f s)', $n, $span));
    is($nginx->log_count(qr/\[error\].*session_cache: redis recovery probe/, $mark), 0,
       'a failed probe is not logged as an error');

    my $before = $nginx->log_size;
    $redis->start;
    ok($nginx->wait_for_log(
           qr/redis circuit breaker half-open: a probe reached redis before the cooldown ended/,
           1, $before),
       'Redis restarted: a probe reaches it and ends the 60 s cooldown');
    ok($nginx->wait_for_log(qr/redis circuit breaker closed: the trial call succeeded/,
                            1, $before),
       '... and the trial closes the breaker');
    my $t_closed = time;
    ok($load->wait_for(20, sub ($x) { $x->{t0} >= $t_closed && through_redis($x) },
                       '20 answers through Redis after the close'),
       'the load goes through Redis again');
    my @r = $load->stop;
    note summarize(\@r);
    my @bad = unexpected(\@r);
    ok(!@bad, 'Redis killed and restarted: no valid session refused, '
              . 'no invalid one let through') or diag summarize(\@bad);
    is($nginx->log_count(qr/redis circuit breaker opened again/, $mark), 0,
       'no trial failed: the only trial was the one a probe allowed');
}

# --- Postgres stopped, then started ----------------------------------------------

sub cold_ok ($x) { $x->{kind} eq 'cold' && $x->{status} == 200 }

{
    my $load = start_load(tokens => { valid => \@valid, invalid => \@invalid },
                          fresh => 'tok-rcv-fresh');
    ok($load->wait_for(10, sub ($x) { $x->{kind} eq 'fresh' && $x->{status} == 401 },
                       '10 fresh tokens answered by Postgres'),
       'before: Postgres answers');
    my $mark = $nginx->log_size;
    $pg->stop;
    ok($nginx->wait_for_log(qr/postgres circuit breaker opened:/, 1, $mark),
       'Postgres stopped: its breaker opens');
    ok(wait_until(sub { probes_failed('postgres', $mark) >= 2 }, 10, 0.05,
                  'two failed recovery probes'),
       'Postgres down: recovery probes go, and fail');

    my $before = $nginx->log_size;
    my $t_start = time;
    $pg->start;
    ok($nginx->wait_for_log(
           qr/postgres circuit breaker half-open: a probe reached postgres before the cooldown ended/,
           1, $before),
       'Postgres started: a probe reaches it and ends the 60 s cooldown');
    ok($nginx->wait_for_log(qr/postgres circuit breaker closed: the trial call succeeded/,
                            1, $before),
       '... and the trial closes the breaker');
    my $t_closed = time;
    ok($load->wait_for(10, sub ($x) {
            $x->{t0} >= $t_closed && $x->{kind} eq 'fresh' && $x->{status} == 401
        }, '10 fresh tokens after the close'),
       'Postgres answers the fresh tokens again');
    my @r = $load->stop;
    note summarize(\@r);
    my @bad = unexpected(\@r, fresh => [503]);
    ok(!@bad, 'Postgres stopped and started: cached sessions 200 throughout')
        or diag summarize(\@bad);
    my $back = first_time(\@r, $t_start,
                          sub ($x) { $x->{kind} eq 'fresh' && $x->{status} == 401 });
    ok(defined $back, sprintf('fresh tokens answered %.2f s after the start began '
                              . '(cooldown 60 s)', ($back // $t_start) - $t_start));
}

# --- Postgres hung: a probe that is not answered changes nothing ------------------

{
    my $load = start_load(tokens => { valid => \@valid, invalid => \@invalid },
                          fresh => 'tok-rcv-hung', public => '/public.html');
    ok($load->wait_for(10, sub ($x) { $x->{kind} eq 'fresh' && $x->{status} == 401 },
                       '10 fresh tokens answered by Postgres'),
       'before: Postgres answers');
    my $mark = $nginx->log_size;
    $pg->pause;
    ok($nginx->wait_for_log(qr/postgres circuit breaker opened:/, 1, $mark),
       'Postgres hung: its breaker opens');
    ok(wait_until(sub { probes_failed('postgres', $mark) >= 2 }, 10, 0.05,
                  'two recovery probes timed out'),
       'Postgres hung: recovery probes time out');
    is($nginx->log_count(qr/a probe reached postgres/, $mark), 0,
       'Postgres hung: no probe reached it, the breaker stays open');
    my $t_resume = time;
    my $before = $nginx->log_size;
    $pg->resume;
    ok($nginx->wait_for_log(qr/postgres circuit breaker closed: the trial call succeeded/,
                            1, $before),
       'Postgres resumed: a probe, then the trial, close the breaker');
    my $t_closed = time;
    ok($load->wait_for(10, sub ($x) {
            $x->{t0} >= $t_closed && $x->{kind} eq 'fresh' && $x->{status} == 401
        }, '10 fresh tokens after the close'),
       'Postgres answers again');
    my @r = $load->stop;
    note summarize(\@r);
    my @bad = unexpected(\@r, fresh => [503]);
    ok(!@bad, 'Postgres hung: cached sessions 200, invalid 401 throughout')
        or diag summarize(\@bad);
    my @public = grep { $_->{kind} eq 'public' && $_->{t0} < $t_resume } @r;
    # the probes wait 500 ms for a hung Postgres; a request that waited
    # with them would show it
    cmp_ok(max(map { $_->{ms} } @public), '<', 250,
           sprintf('the unprotected page never waits for a probe (max %.1f ms)',
                   max(map { $_->{ms} } @public)));
}

unlike($nginx->error_log, qr/\Q${\ $pg->password }\E/, 'no password in the error log');
no_alerts($nginx);
done_testing;
