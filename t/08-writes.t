# SPEC §4: the response never waits for a Redis write. With writes paused
# in Redis (CLIENT PAUSE ... WRITE: GET is still answered, SET waits), a
# session found in Postgres is let through, and an unknown token refused,
# as fast as when Redis writes at once. A write that Redis refuses leaves
# nothing behind: the next request asks Postgres again.

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

# What the 500 ms figures below protect: a response that waited for its
# write would take at least the SET's 1 s timeout (the pause lasts 3 s);
# an answer straight from Postgres takes a few ms, so 500 ms leaves a wide
# margin on a loaded machine while still telling the two apart.

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

# A cache fill that Redis refuses (maxmemory reached, noeviction: GET is
# answered, SET gets an OOM error) leaves nothing for later requests to
# take: once the refusal has come back, a miss for the same token asks
# Postgres again. One worker, so that both requests meet the same
# worker's record of the fills.
my $one = start_nginx(workers => 1, http => protected_site(
    redis    => $redis->url . ' pool=2 connect_timeout=1s timeout=1s',
    postgres => '"' . $pg->dsn . '" pool=2 connect_timeout=1s timeout=1s'));

# SETs Redis refused, from INFO commandstats (rejected_calls, Redis 7).
sub refused_sets () {
    my ($n) = $redis->cli('INFO', 'commandstats')
        =~ /^cmdstat_set:.*\brejected_calls=(\d+)/m;
    return $n // 0;
}

is($one->get('/', cookie => 'session=tok-w-warm-1')->{status}, 401,
   'one worker: warm-up, both connections open');
$redis->cli('CONFIG', 'SET', 'maxmemory-policy', 'noeviction');
is($redis->cli('CONFIG', 'SET', 'maxmemory', 1), 'OK',
   'Redis refuses writes from now on (maxmemory 1 byte)');

$pg->add_session('tok-w-refused', 'user-w-refused', 3600);
my $refused = refused_sets();
my $queries = $pg->query_count;
$r = $one->get('/', cookie => 'session=tok-w-refused');
is($r->{status}, 200, 'writes refused: a session in Postgres is let through');
is(status_of($r), 'MISS', 'writes refused: MISS');
ok(wait_until(sub { refused_sets() > $refused }, 5),
   'and its cache fill comes back refused');

$pg->revoke_session('tok-w-refused');
$r = $one->get('/', cookie => 'session=tok-w-refused');
is($r->{status}, 401,
   'revoked after the refused fill: 401, the refused answer is not reused');
is(status_of($r), 'MISS', 'from Postgres (MISS)');
is($pg->query_count - $queries, 2, 'Postgres asked for each of the two');

# The same for "no such session": a refused negative entry is not reused.
$refused = refused_sets();
$r = $one->get('/', cookie => 'session=tok-w-refused-new');
is($r->{status}, 401, 'writes refused: an unknown token is refused');
ok(wait_until(sub { refused_sets() > $refused }, 5),
   'and its negative entry comes back refused');
$pg->add_session('tok-w-refused-new', 'user-w-new', 3600);
$r = $one->get('/', cookie => 'session=tok-w-refused-new');
is($r->{status}, 200, 'issued after the refused negative entry: 200');
is($r->{headers}{'x-session-user'}, 'user-w-new', 'with its user id');

is($redis->cli('CONFIG', 'SET', 'maxmemory', 0), 'OK', 'Redis writes again');

no_alerts($one);
done_testing;
