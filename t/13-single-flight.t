# Concurrent cache misses for one token share one Postgres query ("single
# flight"), per worker; a caller that goes away does not disturb the others;
# a miss that comes while the answer is still on its way into the cache
# takes that answer.
#
# No step waits for time. One worker with one Redis and one Postgres
# connection puts every command in one queue per backend, so a later
# request's answer is an event ordered after everything sent before it:
#   - a HIT answered means every Redis reply sent before its GET has been
#     read by nginx;
#   - a new token's negative entry in Redis means every Postgres query and
#     every Redis write queued before it is done;
# and the counts are exact after such an event: a late duplicate would be
# counted.

use v5.36;
use Test::More;
use SessionCache::Test;

my $redis = start_redis();
my $pg    = start_postgres();
my $nginx = start_nginx(workers => 1, http => protected_site(
    redis    => $redis->url . ' pool=1 timeout=2s',
    postgres => '"' . $pg->dsn . '" pool=1 connect_timeout=2s timeout=3s'));

sub status_of ($r) { $r->{headers}{'x-session-status'} // '' }

$pg->add_session('tok-flight', 'user-flight', 3600);
$pg->add_session('tok-warm', 'user-warm', 3600);

# Open the connections first, so that the query below is the only thing
# Postgres has to do when it comes back; tok-warm is then cached.
is(get('/', cookie => 'session=tok-warm')->{status}, 200, 'warm-up request');
ok(defined $redis->wait_for_key('session:tok-warm'), 'warm-up: cached');

# Every request before this one has had its Redis GET answered and read:
# those that missed are waiting for Postgres.
sub all_missed_then_hit ($gets, $what) {
    ok(wait_until(sub { $redis->calls('get') >= $gets }, 10, 0.02,
                  "$what: their Redis GETs"), "$what: all looked in Redis");
    is(status_of(get('/', cookie => 'session=tok-warm')), 'HIT',
       "$what: a later request is a HIT meanwhile (their misses were read)");
}

# A new unknown token, through the same queues: once its negative entry
# is in Redis, every query and write queued before it is done.
my $markers = 0;
sub after_everything ($what) {
    my $tok = 'tok-marker-' . ++$markers;
    is(get('/', cookie => "session=$tok")->{status}, 401,
       "$what: a later request for an unknown token, 401");
    ok(defined $redis->wait_for_key("session:$tok"),
       "$what: its negative entry is written after everything before it");
}

# Postgres hangs while ten requests for one uncached token come in: they
# all miss in Redis and wait for the same query.
my $sets = $redis->calls('set');
my $gets = $redis->calls('get');
$pg->pause;
my @pending = send_many(10, sub { ('/', cookie => 'session=tok-flight') });
# one more that gives up while waiting (its connection is closed)
my ($quitter) = send_many(1, sub { ('/', cookie => 'session=tok-flight') });
all_missed_then_hit($gets + 11, 'ten callers and a quitter');
close $quitter->{sock};
$pg->resume;
my @r = collect(@pending);

is(scalar(grep { $_->{status} == 200 } @r), 10, 'all ten answered 200');
is(scalar(grep { ($_->{headers}{'x-session-user'} // '') eq 'user-flight' } @r),
   10, 'all ten get the user id');
is($pg->queries_for('tok-flight'), 1, 'Postgres was asked once when they are answered');
ok(defined $redis->wait_for_key('session:tok-flight'), 'the answer is cached');
after_everything('ten callers');
is($pg->queries_for('tok-flight'), 1,
   'and still once afterwards: the ten misses shared one query');
is($redis->calls('set') - $sets, 2,
   'two writes: the answer once, not once per caller, and the later negative entry');

# An unknown token: the shared answer is "no such session" for everyone.
$sets = $redis->calls('set');
$gets = $redis->calls('get');
$pg->pause;
@pending = send_many(5, sub { ('/', cookie => 'session=tok-flight-unknown') });
all_missed_then_hit($gets + 5, 'five callers, unknown token');
$pg->resume;
@r = collect(@pending);
is(scalar(grep { $_->{status} == 401 } @r), 5, 'an unknown token: all five 401');
after_everything('five callers');
is($pg->queries_for('tok-flight-unknown'), 1, 'an unknown token: one query');
is($redis->calls('set') - $sets, 2,
   'an unknown token: one negative entry written (and the later one)');
ok(defined $redis->wait_for_key('session:tok-flight-unknown'),
   'an unknown token: the negative entry is there');

# Once the SET is acknowledged, a GET sent afterwards that misses means
# the key went away: the application revoked the session and deleted it.
# Postgres is asked, even within the Redis timeout after the fill.
$pg->add_session('tok-revoked-fast', 'user-rf', 3600);
my $r = get('/', cookie => 'session=tok-revoked-fast');
is($r->{status}, 200, 'before the revocation: 200');
ok(defined $redis->wait_for_key('session:tok-revoked-fast'), 'cached');
# its GET follows the SET on the one connection: the SET's +OK is read
is(status_of(get('/', cookie => 'session=tok-revoked-fast')), 'HIT',
   'a HIT: the fill is acknowledged');
$pg->revoke_session('tok-revoked-fast');
$redis->cli('DEL', 'session:tok-revoked-fast');
$r = get('/', cookie => 'session=tok-revoked-fast');
is($r->{status}, 401, 'revoked and deleted right after the fill: 401 at once');
is(status_of($r), 'MISS', 'from Postgres (MISS)');
is($pg->queries_for('tok-revoked-fast'), 2, 'Postgres was asked again');

no_alerts($nginx);

# The answer is on its way into the cache (Redis holds the SET: writes
# paused) when the same token comes again: its GET misses, and it takes the
# answer on its way instead of asking Postgres a second time. The GET needs
# a second Redis connection (the first one waits behind the held SET).
my $filling = start_nginx(workers => 1, http => protected_site(
    redis    => $redis->url . ' pool=2 timeout=2s',
    postgres => '"' . $pg->dsn . '" pool=1 connect_timeout=2s timeout=3s'));
is(get('/', cookie => 'session=tok-warm')->{status}, 200, 'second nginx: warm-up');
$pg->add_session('tok-filling', 'user-filling', 3600);
is($redis->cli('CLIENT', 'PAUSE', 3000, 'WRITE'), 'OK', 'Redis writes paused');
my $first = get('/', cookie => 'session=tok-filling');
my $again = get('/', cookie => 'session=tok-filling');
$redis->cli('CLIENT', 'UNPAUSE');
is($first->{status}, 200, 'first request: 200');
is($again->{status}, 200, 'again while the cache fill waits: 200');
is($again->{headers}{'x-session-user'}, 'user-filling', 'again: the user id');
is(status_of($again), 'MISS', 'again: MISS');
ok(defined $redis->wait_for_key('session:tok-filling'), 'the fill lands');
after_everything('the fill');
is($pg->queries_for('tok-filling'), 1, 'one Postgres query for both');

no_alerts($filling, 'the second nginx: no alerts');
done_testing;
