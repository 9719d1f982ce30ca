# session_cache_l1 tracking=on (SPEC §8): one invalidation listener per
# nginx instance. Armed once subscribed; a DEL or an overwrite of a cached
# key reaches L1 (waited for through the health document's invalidations
# counter); FLUSHALL, CLIENT KILL TYPE pubsub, a Redis restart and a
# frozen Redis (the heartbeat) drop L1 (counted by reason) with no stale
# HIT; an UNLINK of 10,000 keys; kill -9
# of the listening worker (another takes over); exactly one listener in
# CLIENT LIST across reloads; an ACL user without the channel: L1 unused,
# the reason in the health document.

use v5.36;
use Test::More;
use Time::HiRes qw(time);
use SessionCache::Test;

my $redis = start_redis();
my $pg    = start_postgres();

my $PG = '"' . $pg->dsn . '" pool=2 connect_timeout=1s timeout=1s';

sub site ($redis_url, $l1 = 'size=1m ttl=60s') {
    return protected_site(
        redis    => "$redis_url pool=2 connect_timeout=300ms timeout=200ms",
        postgres => $PG,
        http     => "session_cache_l1 $l1;",
        protect  => 'add_header X-Session-Layer $session_cache_layer always;',
        server   => 'location = /health { session_cache_health; }');
}

sub check ($token) {
    my $r = get('/', cookie => "session=$token");
    return join ' ', $r->{status}, $r->{headers}{'x-session-status'} // '',
                     $r->{headers}{'x-session-layer'} // '',
                     $r->{headers}{'x-session-user'} // '';
}

sub l1 ($nginx) { my ($r, $d) = $nginx->health; return $d->{l1} // {} }

sub armed ($nginx) {
    return wait_until(sub { l1($nginx)->{armed} }, 10, 0.02, 'l1 armed');
}

# Connections subscribed to a channel: the listeners.
sub listeners () {
    return scalar grep { /\bsub=[1-9]/ } split /\n/, $redis->cli('CLIENT', 'LIST');
}

# Ask until the answer comes from L1 (the module's own cache fill SET
# invalidates the entry once: that costs one more GET).
sub until_l1 ($token) {
    my $last = '';
    wait_until(sub { ($last = check($token)) =~ / l1 / }, 10, 0.02);
    return $last;
}

my @tokens = map { "tok-trk-$_-c0de" } 1 .. 4;
$pg->add_session($_, "user-$_", 3600) for @tokens;

my $nginx = start_nginx(workers => 2, http => site($redis->url),
                        main => 'error_log %%TMP%%/debug.log debug;');

ok(armed($nginx), 'tracking=on: the listener arms');
{
    my $l1 = l1($nginx);
    ok($l1->{tracking}, 'health: tracking on');
    is($l1->{reason}, undef, 'health: no reason while armed');
    ok(grep({ $_ == $l1->{listener} } $nginx->worker_pids),
       'health: the listener is one of the workers');
    is(listeners(), 1, 'CLIENT LIST: exactly one listener for two workers');
}

# --- warm L1 answers without Redis -------------------------------------------------

{
    like(until_l1($_), qr/^200 HIT l1 /, "$_ reaches l1") for @tokens;
    # an l1 answer may come before the invalidation of the module's own
    # fill, which then drops the entry: let every fill land and its
    # invalidation be read, then fill L1 again from Redis (no write)
    ok(defined $redis->wait_for_key("session:$_"), "$_: the fill reached Redis")
        for @tokens;
    ok(SessionCache::Test::l1_settled($nginx, $redis),
       'the fills\' invalidations have reached L1');
    like(until_l1($_), qr/^200 HIT l1 /, "$_ in l1, to stay") for @tokens;
    my $gets = $redis->calls('get');
    my @r = $nginx->get_many(100, sub ($i) {
        ('/', cookie => "session=$tokens[$i % @tokens]") });
    is(scalar(grep { ($_->{headers}{'x-session-layer'} // '') ne 'l1' } @r), 0,
       '100 requests for cached tokens: all from l1');
    is($redis->calls('get') - $gets, 0, 'warm L1 with tracking: 0 Redis GETs');
}

# --- DEL and overwrite reach L1 -------------------------------------------------------

sub invalidations () { l1($nginx)->{invalidations} // 0 }

# every health document SETs its probe key under the prefix: Redis
# invalidates it, L1 drops it, and does not count it (l1.invalidations
# counts the application's writes): a barrier after ten documents moves
# the count by its own 2,000 keys only
{
    ok(SessionCache::Test::l1_settled($nginx, $redis), 'a first barrier');
    my $before = invalidations();
    invalidations() for 1 .. 10;
    ok(SessionCache::Test::l1_settled($nginx, $redis), 'a second barrier');
    is(invalidations() - $before, 2000,
       'the health documents\' own probe keys are not counted as invalidations');
}

{
    my $t = $tokens[0];
    like(until_l1($t), qr/^200 HIT l1 user-tok-trk-1-c0de$/, 'cached in l1');
    $pg->revoke_session($t);
    $redis->cli('DEL', "session:$t");
    # the entry answers until the DEL's invalidation reaches it (the
    # invalidations counter cannot tell: each health document's probe
    # key is invalidated too)
    my $after = '';
    ok(wait_until(sub { ($after = check($t)) !~ / l1 / }, 10),
       'DEL: the invalidation arrives (no more answers from l1)');
    is($after, '401 MISS postgres ', 'after the DEL: refused (Postgres says revoked)');
    like(until_l1($t), qr/^401 NEGATIVE l1 $/, 'then its negative entry, from l1');
}

{
    my $t = $tokens[1];
    like(until_l1($t), qr/^200 HIT l1 user-tok-trk-2-c0de$/, 'cached in l1');
    $redis->cli('SET', "session:$t", '{"user_id":"changed","expires_at":'
                . int(time + 3600) . '}', 'EX', 300);
    my $after = '';
    ok(wait_until(sub { ($after = check($t)) !~ / l1 / }, 10),
       'overwrite: the invalidation arrives (no more answers from l1)');
    is($after, '200 HIT redis changed', 'after the overwrite: the new value, from Redis');
    like(until_l1($t), qr/^200 HIT l1 changed$/, 'and then from l1');
}

# --- whole-L1 drops ----------------------------------------------------------------------

sub flushes ($reason) { l1($nginx)->{flushes}{$reason} // 0 }

{
    my $t = $tokens[2];
    like(until_l1($t), qr/^200 HIT l1 /, 'cached in l1');
    $redis->cli('FLUSHALL');
    ok(wait_until(sub { flushes('flush') >= 1 }, 10), 'FLUSHALL: L1 flushed (reason flush)');
    like(check($t), qr/^200 MISS postgres /, 'after FLUSHALL: no stale HIT');
}

{
    my $t = $tokens[2];
    like(until_l1($t), qr/^200 HIT l1 /, 'cached in l1');
    my ($lost, $again) = (flushes('listener_lost'), flushes('reconnect'));
    $redis->cli('CLIENT', 'KILL', 'TYPE', 'pubsub');
    ok(wait_until(sub { flushes('listener_lost') > $lost }, 10),
       'CLIENT KILL TYPE pubsub: L1 flushed (listener_lost)');
    unlike(check($t), qr/ l1 /, 'the listener gone: no answer from l1');
    ok(wait_until(sub { flushes('reconnect') > $again && l1($nginx)->{armed} }, 10),
       'the listener comes back: armed, L1 flushed again (reconnect)');
    is(listeners(), 1, 'still exactly one listener');
    $redis->cli('DEL', "session:$t");    # whatever the fill wrote
    $pg->revoke_session($t);
    ok(wait_until(sub { check($t) =~ /^401 / }, 10), 'a DEL after the reconnection reaches L1');
}

{
    my $t = $tokens[3];
    like(until_l1($t), qr/^200 HIT l1 /, 'cached in l1');
    my $lost = flushes('listener_lost');
    $redis->stop;
    ok(wait_until(sub { flushes('listener_lost') > $lost }, 10),
       'Redis stopped: L1 flushed (listener_lost)');
    like(check($t), qr/^200 BYPASS postgres /, 'Redis down: Postgres answers, not l1');
    $redis->start;
    ok(armed($nginx), 'Redis back: the listener arms again');
}

{
    # Redis frozen (SIGSTOP): nothing tells the listener its invalidations
    # stopped; the unanswered PING does
    my $t = $tokens[3];
    like(until_l1($t), qr/^200 HIT l1 /, 'cached in l1');
    my $beats = flushes('heartbeat');
    my $t0 = time;
    $redis->pause;
    ok(wait_until(sub { !l1($nginx)->{armed} }, 10), 'Redis frozen: L1 disarmed');
    # 3 s of heartbeat, plus a margin for a loaded machine: the figure
    # protects the promise that a silent listener stops L1 within 3 s
    ok(time - $t0 < 5, sprintf('within the heartbeat (%.2fs)', time - $t0));
    unlike(check($t), qr/ l1 /, 'Redis frozen: no answer from l1');
    ok(wait_until(sub { flushes('heartbeat') > $beats }, 10),
       'L1 flushed (heartbeat)');
    $redis->resume;
    ok(armed($nginx), 'Redis thawed: the listener arms again');
}

# --- UNLINK of 10,000 keys ------------------------------------------------------------

{
    my $t = $tokens[3];
    like(until_l1($t), qr/^200 HIT l1 /, 'cached in l1');
    my $start = invalidations();
    $redis->cli('EVAL', "for i=1,10000 do redis.call('SET','session:bulk-'..i,'x') end", 0);
    # the SETs' own invalidations first (10,000 keys), so that the count
    # below can only be reached by the UNLINK's
    ok(wait_until(sub { invalidations() >= $start + 10000 }, 10),
       '10,000 SETs: their invalidations arrive');
    my $before = invalidations();
    $redis->cli('UNLINK', "session:$t", map { "session:bulk-$_" } 1 .. 10000);
    ok(wait_until(sub { invalidations() >= $before + 10001 }, 10),
       'UNLINK of 10,001 keys: every key invalidated');
    ok(l1($nginx)->{armed}, 'the listener survives it');
    like(check($t), qr/^200 (MISS|HIT) (postgres|redis) /, 'the unlinked entry is gone');
}

# --- kill -9 of the listener's worker ----------------------------------------------------

{
    my $victim = l1($nginx)->{listener};
    my $takeovers = flushes('takeover');
    kill 'KILL', $victim;
    ok(wait_until(sub {
        my $l = l1($nginx);
        $l->{armed} && $l->{listener} && $l->{listener} != $victim
    }, 15), 'kill -9 of the listener: another worker takes over');
    ok(flushes('takeover') > $takeovers, 'takeover: L1 flushed (takeover)');
    ok(wait_until(sub { listeners() == 1 }, 10), 'exactly one listener after the takeover');
}

# --- reloads: one listener per instance ----------------------------------------------

{
    for my $i (1 .. 3) {
        $nginx->reload;
        my %new = map { $_ => 1 } $nginx->worker_pids;
        ok(wait_until(sub { my $l = l1($nginx); $l->{armed} && $new{$l->{listener} // 0} }, 10),
           "reload $i: a new worker listens");
        ok(wait_until(sub { listeners() == 1 }, 10), "reload $i: exactly one listener");
    }
    like(until_l1($tokens[1]), qr/^200 HIT l1 /, 'after the reloads: l1 answers');
}

{
    my $debug = SessionCache::Test::_slurp($nginx->dir . '/debug.log');
    for my $line ('l1 listener armed', 'l1 listener disarmed: ',
                  'l1 flushed (flush)', 'l1 flushed (listener_lost)',
                  'l1 flushed (heartbeat)', 'l1 flushed (takeover)',
                  'l1 listener lease taken over from pid ') {
        ok(index($debug, "session_cache: $line") >= 0, "debug log: $line");
    }
    # Redis decides how it batches a command's invalidations into messages
    # (one of 10,001 keys here, or a few): what counts is that arrays far
    # above the data connections' 64-element cap reached the listener
    my ($most) = sort { $b <=> $a }
                 $debug =~ /session_cache: l1 invalidation of (\d+) keys/g;
    ok(($most // 0) >= 1000,
       'debug log: an invalidation of ' . ($most // 0) . ' keys in one message');
}

SessionCache::Test::only_alerts($nginx, qr/exited on signal 9/, 'tracking: no alerts but the killed worker');
$nginx->stop;

# --- an ACL user without the invalidation channel -------------------------------------

{
    $redis->cli('ACL', 'SETUSER', 'nochan', 'on', '>nochan-pw', '~*', '+@all',
                'resetchannels');
    my $url = 'redis://nochan:nochan-pw@127.0.0.1:' . $redis->port . '/0';
    my $n = start_nginx(http => site($url));
    my $reason = '';
    ok(wait_until(sub { ($reason = l1($n)->{reason} // '') =~ /refused/ }, 10),
       "ACL without the channel: the reason in the health document ($reason)");
    like($reason, qr/SUBSCRIBE refused by redis: NOPERM/, 'the reason names the refusal');
    ok(!l1($n)->{armed}, 'L1 unused');
    is($n->log_count(qr/\[error\].*l1 tracking unavailable, L1 unused: SUBSCRIBE refused by redis: NOPERM/), 1,
       'logged once at error, in Redis\'s words');
    like(check($tokens[1]), qr/^200 (MISS|HIT) (postgres|redis) /, 'sessions still checked');
    unlike($n->error_log, qr/nochan-pw/, 'no password in the log');
    no_alerts($n, 'ACL: no alerts');
    $n->stop;
}

done_testing;
