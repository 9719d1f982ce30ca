# Concurrent cache misses for one token share one Postgres query ("single
# flight"), per worker; a caller that goes away does not disturb the others;
# a miss that comes while the answer is still on its way into the cache
# takes that answer.

use v5.36;
use Test::More;
use SessionCache::Test;
use Time::HiRes qw(sleep);

my $redis = start_redis();
my $pg    = start_postgres();
my $nginx = start_nginx(workers => 1, http => protected_site(
    redis    => $redis->url . ' pool=2 timeout=2s',
    postgres => '"' . $pg->dsn . '" pool=2 connect_timeout=2s timeout=3s'));

$pg->add_session('tok-flight', 'user-flight', 3600);
$pg->add_session('tok-warm', 'user-warm', 3600);

# Open the Postgres connections first, so that the query below is the only
# thing Postgres has to do when it comes back.
is(get('/', cookie => 'session=tok-warm')->{status}, 200, 'warm-up request');
my $before = $pg->query_count;

# Postgres hangs while ten requests for one uncached token come in: they
# all miss in Redis and wait for the same query.
my $sets = $redis->commandstats->{set} // 0;
$pg->pause;
my @pending = send_many(10, sub { ('/', cookie => 'session=tok-flight') });
# one more that gives up while waiting (its connection is closed)
my ($quitter) = send_many(1, sub { ('/', cookie => 'session=tok-flight') });
sleep 0.5;
close $quitter->{sock};
$pg->resume;
my @r = collect(@pending);

is(scalar(grep { $_->{status} == 200 } @r), 10, 'all ten answered 200');
is(scalar(grep { ($_->{headers}{'x-session-user'} // '') eq 'user-flight' } @r),
   10, 'all ten get the user id');
ok(wait_until(sub { $pg->query_count > $before }, 2), 'Postgres was asked');
sleep 0.3;
is($pg->query_count - $before, 1, 'once: the ten misses shared one query');
ok(defined $redis->wait_for_key('session:tok-flight', 2), 'the answer is cached');
is(($redis->commandstats->{set} // 0) - $sets, 1,
   'and written to Redis once, not once per caller');

# An unknown token: the shared answer is "no such session" for everyone.
$before = $pg->query_count;
$sets = $redis->commandstats->{set} // 0;
$pg->pause;
@pending = send_many(5, sub { ('/', cookie => 'session=tok-flight-unknown') });
sleep 0.3;
$pg->resume;
@r = collect(@pending);
is(scalar(grep { $_->{status} == 401 } @r), 5, 'an unknown token: all five 401');
sleep 0.3;
is($pg->query_count - $before, 1, 'an unknown token: one query');
is(($redis->commandstats->{set} // 0) - $sets, 1,
   'an unknown token: one negative entry written');

# The answer is on its way into the cache (Redis holds the SET: writes
# paused) when the same token comes again: its GET misses, and it takes the
# answer on its way instead of asking Postgres a second time.
$pg->add_session('tok-filling', 'user-filling', 3600);
$before = $pg->query_count;
is($redis->cli('CLIENT', 'PAUSE', 3000, 'WRITE'), 'OK', 'Redis writes paused');
my $first = get('/', cookie => 'session=tok-filling');
my $again = get('/', cookie => 'session=tok-filling');
$redis->cli('CLIENT', 'UNPAUSE');
is($first->{status}, 200, 'first request: 200');
is($again->{status}, 200, 'again while the cache fill waits: 200');
is($again->{headers}{'x-session-user'}, 'user-filling', 'again: the user id');
is($again->{headers}{'x-session-status'}, 'MISS', 'again: MISS');
sleep 0.3;
is($pg->query_count - $before, 1, 'one Postgres query for both');
ok(defined $redis->wait_for_key('session:tok-filling', 2), 'the fill lands');

# Once the SET is acknowledged, a GET sent afterwards that misses means
# the key went away: the application revoked the session and deleted it.
# Postgres is asked, even within the Redis timeout after the fill.
$pg->add_session('tok-revoked-fast', 'user-rf', 3600);
my $r = get('/', cookie => 'session=tok-revoked-fast');
is($r->{status}, 200, 'before the revocation: 200');
ok(defined $redis->wait_for_key('session:tok-revoked-fast', 2), 'cached');
sleep 0.02;
$pg->revoke_session('tok-revoked-fast');
$redis->cli('DEL', 'session:tok-revoked-fast');
$r = get('/', cookie => 'session=tok-revoked-fast');
is($r->{status}, 401, 'revoked and deleted right after the fill: 401 at once');
is($r->{headers}{'x-session-status'}, 'MISS', 'from Postgres (MISS)');

no_alerts($nginx);
done_testing;
