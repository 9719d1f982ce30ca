# Concurrent cache misses for one token share one Postgres query ("single
# flight"), per worker; a caller that goes away does not disturb the others.

use v5.36;
use Test::More;
use SessionCache::Test;
use Time::HiRes qw(sleep);

my $redis = start_redis();
my $pg    = start_postgres();
my $nginx = start_nginx(workers => 1, http => protected_site(
    redis    => $redis->url . ' pool=2 timeout=200ms',
    postgres => '"' . $pg->dsn . '" pool=2 connect_timeout=2s timeout=3s'));

$pg->add_session('tok-flight', 'user-flight', 3600);
$pg->add_session('tok-warm', 'user-warm', 3600);

# Open the Postgres connections first, so that the query below is the only
# thing Postgres has to do when it comes back.
is(get('/', cookie => 'session=tok-warm')->{status}, 200, 'warm-up request');
my $before = $pg->query_count;

# Postgres hangs while ten requests for one uncached token come in: they
# all miss in Redis and wait for the same query.
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

# An unknown token: the shared answer is "no such session" for everyone.
$before = $pg->query_count;
$pg->pause;
@pending = send_many(5, sub { ('/', cookie => 'session=tok-flight-unknown') });
sleep 0.3;
$pg->resume;
@r = collect(@pending);
is(scalar(grep { $_->{status} == 401 } @r), 5, 'an unknown token: all five 401');
sleep 0.3;
is($pg->query_count - $before, 1, 'an unknown token: one query');

no_alerts($nginx);
done_testing;
