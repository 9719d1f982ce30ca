# SPEC §4: the response never waits for a Redis write. With writes paused
# in Redis (CLIENT PAUSE ... WRITE: GET is still answered, SET waits), a
# session found in Postgres is let through, and an unknown token refused,
# as fast as when Redis writes at once.

use v5.36;
use Test::More;
use SessionCache::Test;

my $redis = start_redis();
my $pg    = start_postgres();
my $nginx = start_nginx(http => protected_site(
    redis    => $redis->url . ' pool=4 connect_timeout=1s timeout=1s',
    postgres => '"' . $pg->dsn . '" pool=2 connect_timeout=1s timeout=1s'));

sub status_of ($r) { $r->{headers}{'x-session-status'} // '' }

$pg->add_session("tok-w-$_", "user-w-$_", 3600) for 1 .. 4;

# Warm both workers' pools: Postgres connected and its statement prepared.
get_many(8, sub ($i) { ('/', cookie => "session=tok-w-warm-$i") });

is($redis->cli('CLIENT', 'PAUSE', 3000, 'WRITE'), 'OK', 'Redis writes paused for 3 s');

for my $i (1 .. 2) {
    my $r = get('/', cookie => "session=tok-w-$i");
    is($r->{status}, 200, "paused writes, session $i: 200");
    is(status_of($r), 'MISS', "paused writes, session $i: MISS");
    cmp_ok($r->{ms}, '<', 500,
           sprintf('and answered at once (%.0f ms), not after the write', $r->{ms}));
}

my $r = get('/', cookie => 'session=tok-w-unknown');
is($r->{status}, 401, 'paused writes, an unknown token: 401');
cmp_ok($r->{ms}, '<', 500,
       sprintf('and refused at once (%.0f ms), not after the write', $r->{ms}));

$redis->cli('CLIENT', 'UNPAUSE');

# Service goes on once Redis writes again.
for my $i (3 .. 4) {
    my $tok = "tok-w-$i";
    is(get('/', cookie => "session=$tok")->{status}, 200, "after the pause, session $i: 200");
    ok(defined $redis->wait_for_key("session:$tok", 2), "after the pause, session $i is cached");
    is(status_of(get('/', cookie => "session=$tok")), 'HIT', "after the pause, session $i: HIT");
}

no_alerts($nginx);
done_testing;
