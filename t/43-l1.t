# session_cache_l1 (SPEC §8): the zone in shared memory, with
# tracking=off (t/44-l1-tracking.t has the listener). The directive's
# errors; a warm L1 answers without Redis (0 GETs over many requests, two
# workers); answers from Redis and Postgres fill it, negatives too; a full
# zone evicts and never fails a request; entries survive a reload; ttl is
# the revocation bound; $session_cache_layer; the health document's "l1"
# object and its Prometheus figures.

use v5.36;
use Test::More;
use Time::HiRes qw(time);
use SessionCache::Test;

my $redis = start_redis();
my $pg    = start_postgres();

my $REDIS = $redis->url . ' pool=2 connect_timeout=300ms timeout=200ms';
my $PG    = '"' . $pg->dsn . '" pool=2 connect_timeout=1s timeout=1s';

sub site ($l1) {
    return protected_site(
        redis    => $REDIS,
        postgres => $PG,
        http     => "session_cache_l1 $l1;",
        protect  => 'add_header X-Session-Layer $session_cache_layer always;',
        server   => 'location = /health { session_cache_health; }');
}

sub check ($token) {
    my $r = get('/', cookie => "session=$token");
    return ($r->{status}, $r->{headers}{'x-session-status'} // '',
            $r->{headers}{'x-session-layer'} // '');
}

# --- the directive ------------------------------------------------------------

{
    my %bad = (
        'ttl=30s tracking=off'      => qr/session_cache_l1: size= is required/,
        'size=10k tracking=off'     => qr/session_cache_l1: invalid size "10k" \(expected at least 256k\)/,
        'size=1m ttl=0 tracking=off' => qr/session_cache_l1: invalid ttl "0"/,
        'size=1m tracking=maybe'    => qr/session_cache_l1: unknown parameter "tracking=maybe"/,
    );
    for my $args (sort keys %bad) {
        my ($rc, $out) = check_config(http => site($args));
        ok($rc != 0 && $out =~ $bad{$args}, "nginx -t refuses session_cache_l1 $args")
            or diag $out;
    }
    # tracking=on (the default) needs Redis: nothing else invalidates
    for my $args ('size=1m', 'size=1m tracking=on') {
        my ($rc, $out) = check_config(http => protected_site(
            postgres => $PG, http => "session_cache_l1 $args;"));
        ok($rc != 0 && $out =~ /session_cache_l1: tracking=on \(the default\) needs session_cache_redis; without Redis write tracking=off/,
           "nginx -t refuses session_cache_l1 $args without Redis") or diag $out;
    }
    # rediss://: the listener speaks TLS too (t/71-l1-tracking-tls.t)
    {
        my ($rc, $out) = check_config(http => protected_site(
            redis => 'rediss://127.0.0.1:' . $redis->port . '/0 tls_verify=off',
            postgres => $PG, http => 'session_cache_l1 size=1m;'));
        is($rc, 0, 'tracking=on with rediss:// is accepted') or diag $out;
        ($rc, $out) = check_config(http => protected_site(
            redis => 'rediss://127.0.0.1:' . $redis->port . '/0 tls_verify=off',
            postgres => $PG, http => 'session_cache_l1 size=1m tracking=off;'));
        is($rc, 0, 'tracking=off with rediss:// is accepted') or diag $out;
    }
    my ($rc, $out) = check_config(http => site('size=1m'));
    is($rc, 0, 'session_cache_l1 size=1m (tracking=on) with Redis is accepted')
        or diag $out;
    ($rc, $out) = check_config(http => site('size=1m tracking=off')
                                         . "session_cache_l1 off;\n");
    ok($rc != 0 && $out =~ /"session_cache_l1" directive is duplicate/,
       'nginx -t refuses a second session_cache_l1') or diag $out;
    ($rc, $out) = check_config(http => site('off'));
    is($rc, 0, 'session_cache_l1 off is accepted') or diag $out;
}

# --- warm L1: answers without Redis, two workers --------------------------------

my @tokens = map { "tok-l1-$_-5b7e" } 1 .. 8;
$pg->add_session($_, "user-$_", 3600) for @tokens;

my $nginx = start_nginx(workers => 2, http => site('size=1m ttl=60s tracking=off'));

{
    my ($r, $d) = $nginx->health;
    my $l1 = $d->{l1} // {};
    ok($l1->{enabled} && $l1->{armed} && !$l1->{tracking},
       'health: l1 enabled and consulted, tracking off');
    is($l1->{reason}, undef, 'health: no reason while consulted');
    is($l1->{capacity}, 1024 * 1024, 'health: capacity is the zone size');
    is_deeply([ sort keys %{ $l1->{flushes} // {} } ],
              [qw(flush heartbeat listener_lost reconnect revocation
                   revocation_lost takeover topology)],
              'health: flushes by reason');

    my @first = map { [ check($_) ] } @tokens;
    is_deeply([ map { "@$_" } @first ], [ ("200 MISS postgres") x @tokens ],
              'first requests: answered by Postgres (MISS)');

    my $gets = $redis->calls('get');
    my @again = $nginx->get_many(200, sub ($i) {
        ('/', cookie => "session=$tokens[$i % @tokens]") });
    my @bad = grep { $_->{status} != 200
                     || ($_->{headers}{'x-session-layer'} // '') ne 'l1'
                     || ($_->{headers}{'x-session-status'} // '') ne 'HIT' } @again;
    is(scalar @bad, 0, '200 requests for cached tokens: 200 HIT from l1');
    is($redis->calls('get') - $gets, 0, 'warm L1: 0 Redis GETs over 200 requests');
    my %users = map { $_->{headers}{'x-session-user'} => 1 } @again;
    is(scalar keys %users, scalar @tokens, 'each token keeps its own user id');

    ($r, $d) = $nginx->health;
    $l1 = $d->{l1};
    ok($l1->{hits} >= 200, "health: l1 hits counted ($l1->{hits})");
    is($l1->{entries}, scalar @tokens, 'health: one entry per token');
    ok($l1->{usedBytes} > 0 && $l1->{usedBytes} < $l1->{capacity},
       'health: usedBytes within capacity');
    my $lat = $d->{performance}{check}{l1};
    ok($lat->{count} >= 200,
       "latency histogram: the L1 answers counted under layer l1 ($lat->{count})");
    ok(defined $lat->{p50} && defined $lat->{p99},
       'latency histogram: p50 and p99 for layer l1');
}

# --- answers from Redis fill it; negatives too ------------------------------------

{
    my $t = 'tok-l1-redis-only-71c3';
    $redis->cli('SET', "session:$t", '{"user_id":"from-redis","expires_at":'
                . int(time + 3600) . '}', 'EX', 300);
    is(join(' ', check($t)), '200 HIT redis', 'a session in Redis: HIT from redis');
    my $gets = $redis->calls('get');
    is(join(' ', check($t)), '200 HIT l1', 'the next request: HIT from l1');
    is($redis->calls('get') - $gets, 0, 'no GET for it');

    my $u = 'tok-l1-unknown-11aa';
    is(join(' ', check($u)), '401 MISS postgres', 'an unknown token: 401 from Postgres');
    $gets = $redis->calls('get');
    is(join(' ', check($u)), '401 NEGATIVE l1', 'again: NEGATIVE from l1');
    is($redis->calls('get') - $gets, 0, 'no GET for it');

    my $r = get('/', cookie => 'session=bad token');
    is($r->{status}, 401, 'an implausible token: 401');
    is($r->{headers}{'x-session-layer'}, undef, 'no layer when no store answered');

    my ($h, $d) = $nginx->health;
    ok($d->{l1}{negatives} >= 1, 'health: l1 negatives counted');
    my $p = $nginx->get('/health?format=prometheus')->{body};
    like($p, qr/^nginx_session_cache_l1_hits_total \d+$/m, 'prometheus: l1 hits');
    like($p, qr/^nginx_session_cache_l1_entries \d+$/m, 'prometheus: l1 entries');
    like($p, qr/^nginx_session_cache_l1_flushes_total\{reason="heartbeat"\} 0$/m,
         'prometheus: l1 flushes by reason');
}

# --- a reload keeps the entries ------------------------------------------------------

{
    $nginx->reload;
    my $gets = $redis->calls('get');
    my @r = map { [ check($_) ] } @tokens;
    is_deeply([ map { "@$_" } @r ], [ ("200 HIT l1") x @tokens ],
              'after a reload: every cached token still answered by l1');
    is($redis->calls('get') - $gets, 0, 'after a reload: no GET');
    no_alerts($nginx, 'warm L1 and reload: no alerts');
    $nginx->stop;
}

# --- a full zone evicts, never fails a request ---------------------------------------

{
    # 300 tokens of 500 bytes: about a KiB each in the slab, more than the
    # smallest zone holds
    $pg->psql(<<~'SQL');
        INSERT INTO platform.user_sessions (token, user_id, expires_at)
        SELECT 'big-' || i || '-' || repeat('x', 490), 'big-user-' || i,
               now() + interval '1 hour'
          FROM generate_series(1, 300) AS i
        SQL
    my $n = start_nginx(workers => 2, http => site('size=256k tracking=off'));
    my @big = map { "big-$_-" . ('x' x 490) } 1 .. 300;
    my @r;
    for my $batch (0 .. 5) {
        push @r, $n->get_many(50, sub ($i) {
            ('/', cookie => "session=$big[$batch * 50 + $i]") });
    }
    my @bad = grep { $_->{status} != 200 } @r;
    is(scalar @bad, 0, '300 sessions through a zone too small for them: all 200');
    my ($h, $d) = $n->health;
    my $l1 = $d->{l1};
    ok($l1->{evictions} > 0 && $l1->{entries} < 300,
       "full zone: least recently used entries evicted ($l1->{evictions}, "
       . "$l1->{entries} kept)");
    ok($l1->{usedBytes} <= $l1->{capacity}, 'full zone: usedBytes within capacity');
    is(join(' ', check($big[-1])), '200 HIT l1', 'the most recent entry is kept');
    no_alerts($n, 'full zone: no alerts');
    $n->stop;
}

# --- tracking=off: ttl is the revocation bound --------------------------------------

{
    my $n = start_nginx(http => site('size=1m ttl=1s tracking=off'));
    my $t = 'tok-l1-revoked-3d9f';
    $pg->add_session($t, 'user-revoked', 3600);
    is(join(' ', check($t)), '200 MISS postgres', 'tracking=off: first answer from Postgres');
    is(join(' ', check($t)), '200 HIT l1', 'tracking=off: then from l1');
    # the first answer's cache fill is written to Redis after its
    # response: let it land, or the DEL below could come before it and
    # Redis would keep the session past the entry's ttl
    ok(defined $redis->wait_for_key("session:$t"), 'tracking=off: the fill reached Redis');

    $pg->revoke_session($t);
    $redis->cli('DEL', "session:$t");
    my $t0 = time;
    # the revocation is not seen until the entry's ttl (1s) has passed
    my $refused = wait_until(sub { (check($t))[0] == 401 }, 10);
    my $took = time - $t0;
    ok($refused, 'tracking=off: the revoked token is refused once ttl passed');
    # 1s of ttl, plus a generous margin for a loaded machine; the figure
    # protects the promise that ttl bounds how long a revoked token lives
    ok($took <= 4, sprintf('tracking=off: refused within ttl (%.2fs)', $took));
    no_alerts($n, 'tracking=off: no alerts');
    $n->stop;
}

done_testing;
