# Redis Sentinel (SPEC §10, §4 "non-blocking, always"): a sentinel
# SIGSTOPped. The first sentinel of the list (the one asked first and
# subscribed to) is stopped; then the pool's connections are killed, so
# every worker asks the sentinels again and meets the stopped one first.
#   - the unprotected page is answered at once throughout, and valid
#     sessions too (no 401, no 503): nothing waits for the sentinel but
#     the discovery itself;
#   - the discovery moves on to the next sentinel after its timeout, the
#     subscription after 3 s of unanswered PING;
#   - a SENTINEL FAILOVER through another sentinel is still followed.

use v5.36;
use Test::More;
use Time::HiRes qw(time);
use List::Util qw(max);
use SessionCache::Test;
use SessionCache::Load;

my $PW = 'redis-S3cret-pw';

my $pg = start_postgres();
my ($master, $replica, @sentinels) = start_sentinel_set(requirepass => $PW);

my @valid = map { "tok-nb-$_-b2" } 1 .. 20;
cache_sessions($pg, $master, @valid);

# a sentinel that does not answer costs a round connect_timeout + timeout
# (2 s) before the next one is asked
my $nginx = start_nginx(workers => 2, http => protected_site(
    redis => sentinel_url(\@sentinels, password => $PW)
           . ' pool=4 connect_timeout=1s timeout=1s',
    postgres => '"' . $pg->dsn . '" pool=4 connect_timeout=1s timeout=1s',
    server => 'location = /health { session_cache_health; }'));

my $old = '127.0.0.1:' . $master->port;
my $new = '127.0.0.1:' . $replica->port;

sub view () { my (undef, $d) = $nginx->health; return $d->{redis}{sentinel} // {} }

ok(wait_until(sub { (view()->{address} // '') eq $old }, 10, 0.05,
              'the master discovered'), 'the master discovered');
# both workers subscribed to the first sentinel (its connected_clients
# counts the other sentinels' links and redis-cli too; the sentinels do not
# subscribe to each other: the subscribed clients are the workers)
ok(wait_until(sub {
    (grep { /\bsub=[1-9]/ } split /\n/, $sentinels[0]->cli('CLIENT', 'LIST')) >= 2
}, 10, 0.05, 'the subscriptions'), 'the workers subscribed to the first sentinel');

my $load = start_load(tokens => { valid => \@valid }, public => '/public.html',
                      port => $nginx->port, rate => 100);
ok($load->wait_for(20, sub ($r) { $r->{sstatus} eq 'HIT' }, '20 HITs'),
   'the load is answered');

my $since = $nginx->log_size;
my $first = '127.0.0.1:' . $sentinels[0]->port;

$sentinels[0]->pause;
my $t_stop = time;
# every pool connection goes: each worker asks the sentinels again
$master->cli('CLIENT', 'KILL', 'TYPE', 'normal');

ok($nginx->wait_for_log(qr/\[notice\].*master "mymaster" found through sentinel 127\.0\.0\.1:\d+ after: sentinel \Q$first\E: timed out/,
                        1, $since),
   'the discovery moves on to the next sentinel after the timeout');
ok($nginx->wait_for_log(qr/subscription to sentinel 127\.0\.0\.1:\d+ lost \(PING unanswered\)/,
                        1, $since),
   'the subscription moves on after 3 s of silence');

# a failover through another sentinel is followed
my $t_fail = time;
is($sentinels[1]->cli('SENTINEL', 'FAILOVER', 'mymaster'), 'OK',
   'SENTINEL FAILOVER through the second sentinel');
ok(wait_until(sub { (view()->{address} // '') eq $new && view()->{switches} == 1 },
              15, 0.05, 'nginx to follow'),
   'nginx follows the new master with the first sentinel stopped');
my $t_seen = time;
ok($load->wait_for(20, sub ($r) { $r->{t0} > $t_seen && $r->{sstatus} eq 'HIT' },
                   '20 HITs after'), 'HIT again from the new master');

my @r = $load->stop;
$sentinels[0]->resume;

my @bad = unexpected(\@r);
ok(!@bad, 'no valid session refused, no 503') or diag summarize(\@bad);

my @public = grep { $_->{kind} eq 'public' && $_->{t0} >= $t_stop } @r;
my $worst = max(map { $_->{ms} } @public) // 0;
diag sprintf 'sentinel stopped: %d unprotected requests, slowest %.0f ms; '
    . 'nginx followed the failover after %.0f ms', scalar @public, $worst,
    ($t_seen - $t_fail) * 1000;
ok(@public >= 50, 'unprotected requests while the sentinel was stopped');
# a worker that waited for the stopped sentinel would hold these for the
# 2 s a discovery round gives it, or for ever: 500 ms tells them apart
ok($worst < 500, 'the unprotected page answered at once throughout');

unlike($nginx->error_log, qr/S3cret/, 'no password in the log');
no_alerts($nginx);

done_testing();
