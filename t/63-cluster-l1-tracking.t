# session_cache_l1 tracking=on with Redis Cluster (SPEC §8, §10): one
# invalidation listener per master, held by one worker. Armed once every
# master's connection is subscribed; a DEL or an overwrite on any master
# reaches L1; a change of the slot map (a slot moved) drops L1 (reason
# topology), with no stale HIT; a master's listener connection killed
# drops L1 (listener_lost) until it is back; exactly one listener per
# master for two workers.

use v5.36;
use Test::More;
use Time::HiRes qw(time);
use SessionCache::Test;

my $cluster = SessionCache::Test::start_redis_cluster(masters => 3);
my $pg      = start_postgres();
my @nodes   = $cluster->nodes;

my $nginx = $cluster->start_nginx($pg, workers => 2,
    redis    => 'pool=2 connect_timeout=300ms timeout=300ms',
    postgres => 'pool=2 connect_timeout=1s timeout=1s',
    http     => 'session_cache_l1 size=1m ttl=60s;',
    protect  => 'add_header X-Session-Layer $session_cache_layer always;');

sub check ($token) {
    my $r = get('/', cookie => "session=$token");
    return join ' ', $r->{status}, $r->{headers}{'x-session-status'} // '',
                     $r->{headers}{'x-session-layer'} // '',
                     $r->{headers}{'x-session-user'} // '';
}

sub l1 () { my ($r, $d) = $nginx->health; return $d->{l1} // {} }
sub flushes ($reason) { l1()->{flushes}{$reason} // 0 }
sub invalidations () { l1()->{invalidations} // 0 }

sub until_l1 ($token) {
    my $last = '';
    wait_until(sub { ($last = check($token)) =~ / l1 / }, 10, 0.02, "$token from l1");
    return $last;
}

# The answer for $token once an invalidation has reached L1: asked until
# it is $want. The health document's count of invalidations alone cannot
# say that this one came: every /health request SETs a probe key under the
# prefix, an invalidation too, so the count may move before it. Within the
# wait (10 s) only the invalidation can change L1's answer (ttl 60 s).
sub after_invalidation ($token, $want) {
    my $last = '';
    wait_until(sub { ($last = check($token)) eq $want }, 10, 0.02,
               "$token: $want");
    return $last;
}

# Connections subscribed to a channel on a node: its listeners.
sub listeners ($node) {
    return scalar grep { /\bsub=[1-9]/ } split /\n/, $node->cli('CLIENT', 'LIST');
}

ok(wait_until(sub { l1()->{armed} }, 10, 0.02, 'l1 armed'), 'tracking=on with a cluster: the listener arms');
is(join(',', map { listeners($_) } @nodes), '1,1,1', 'one listener on each master, for two workers');
is(l1()->{reason}, undef, 'health: no reason while armed');

# one token per master
my %tok;
for my $i (1 .. 500) {
    my $t = "tok-cl1-$i";
    my $port = $cluster->owner_of_key("session:$t")->port;
    $tok{$port} //= $t;
    last if keys %tok == 3;
}
$pg->add_session($_, "user-$_", 3600) for values %tok;

for my $node (@nodes) {
    my $t = $tok{ $node->port };
    like(until_l1($t), qr/^200 HIT l1 user-$t$/, "a token on master " . $node->port . ': cached in l1');
    # its first answer came from Postgres: the cache fill, sent after
    # it, must not land after (and undo) the overwrite below
    ok(defined $node->wait_for_key("session:$t"), '... and in Redis');
    my $before = invalidations();
    $node->cli('SET', "session:$t", '{"user_id":"changed","expires_at":'
               . int(time + 3600) . '}', 'EX', 300);
    ok(wait_until(sub { invalidations() > $before }, 10, 0.02, 'invalidation'),
       '... an overwrite on its master: the invalidation arrives');
    is(after_invalidation($t, '200 HIT redis changed'), '200 HIT redis changed',
       '... the new value, from Redis');
}

{
    my $t = $tok{ $nodes[0]->port };
    like(until_l1($t), qr/^200 HIT l1 changed$/, 'cached in l1 again');
    $pg->revoke_session($t);
    my $before = invalidations();
    $nodes[0]->cli('DEL', "session:$t");
    ok(wait_until(sub { invalidations() > $before }, 10, 0.02, 'invalidation'), 'DEL: the invalidation arrives');
    is(after_invalidation($t, '401 MISS postgres '), '401 MISS postgres ',
       'after the DEL: refused (Postgres says revoked)');
}

# --- a slot moved: the map changes, L1 goes ------------------------------------

{
    # two tokens in one slot (a hash tag), on the second master: A cached
    # in L1, B asked after the move (its GET meets the MOVED that brings
    # the new map)
    my ($a, $b);
    for my $i (1 .. 500) {
        next unless $cluster->owner_of_key("session:tok-mv-{$i}-a")->port == $nodes[1]->port;
        ($a, $b) = ("tok-mv-{$i}-a", "tok-mv-{$i}-b");
        last;
    }
    $pg->add_session($_, 'user-mv', 3600) for $a, $b;
    like(until_l1($a), qr/^200 HIT l1 user-mv$/, 'cached in l1');
    # the cache fill (sent after the answer from Postgres) is the key
    # MIGRATE moves
    ok(defined $nodes[1]->wait_for_key("session:$a"), '... and in Redis');

    my ($from, $to) = @nodes[1, 0];
    my $slot = $cluster->keyslot("session:$a");
    my ($from_id, $to_id) = map { $cluster->id_of($_) } $from, $to;
    $to->cli('CLUSTER', 'SETSLOT', $slot, 'IMPORTING', $from_id);
    $from->cli('CLUSTER', 'SETSLOT', $slot, 'MIGRATING', $to_id);
    is($from->cli('MIGRATE', '127.0.0.1', $to->port, "session:$a", 0, 5000), 'OK',
       'its key moves to the first master');
    $_->cli('CLUSTER', 'SETSLOT', $slot, 'NODE', $to_id) for @nodes;
    $cluster->wait_ok;

    my $topology = flushes('topology');
    is(check($b), '200 MISS postgres user-mv', 'the other token of the slot: MOVED followed');
    ok(wait_until(sub { flushes('topology') > $topology }, 10, 0.02, 'topology flush'),
       'the slot map changed: L1 dropped (reason topology)');
    unlike(check($a), qr/ l1 /, 'after the drop: not from l1');
    ok(wait_until(sub { l1()->{armed} }, 10, 0.02, 'armed'), 'still armed');
    like(until_l1($a), qr/^200 HIT l1 user-mv$/, 'and L1 fills again');
    $pg->revoke_session($a);
    my $before = invalidations();
    $to->cli('DEL', "session:$a");
    ok(wait_until(sub { invalidations() > $before }, 10, 0.02, 'invalidation'),
       'a DEL on the slot\'s new master reaches L1');
    is(after_invalidation($a, '401 MISS postgres '), '401 MISS postgres ',
       'after the DEL: refused');
}

# --- a master's listener connection lost -----------------------------------------

{
    my $t = $tok{ $nodes[1]->port };
    like(until_l1($t), qr/^200 HIT l1 /, 'cached in l1');
    my ($lost, $again) = (flushes('listener_lost'), flushes('reconnect'));
    $nodes[1]->cli('CLIENT', 'KILL', 'TYPE', 'pubsub');
    ok(wait_until(sub { flushes('listener_lost') > $lost }, 10, 0.02, 'listener_lost'),
       'one master\'s listener killed: L1 flushed (listener_lost)');
    unlike(check($t), qr/ l1 /, 'no answer from l1 meanwhile');
    ok(wait_until(sub { flushes('reconnect') > $again && l1()->{armed} }, 10, 0.02, 'reconnect'),
       'it comes back: armed, L1 flushed again (reconnect)');
    is(join(',', map { listeners($_) } @nodes), '1,1,1', 'still one listener per master');
}

no_alerts($nginx);

done_testing;
