# Redis Cluster (SPEC §10): session_cache_redis redis-cluster://seeds.
# Three masters made with redis-cli --cluster create. Every token is
# answered right, a HIT read from the master that owns its key (that
# node's GET count moves, no other's), cache fills land on the owner; the
# health document shows the cluster (nodes, slots, node pools) in JSON and
# Prometheus; session_cache_l1 tracking=off works (tracking=on: t/63);
# the URL's errors and masking at nginx -t.

use v5.36;
use Test::More;
use SessionCache::Test;

my $cluster = SessionCache::Test::start_redis_cluster(masters => 3,
                                                      requirepass => 'cl-S3cret-pw');
my $pg = start_postgres();

my @nodes = $cluster->nodes;
my $URL   = $cluster->url(seeds => [$nodes[0]]);    # one seed is enough
my $PG    = '"' . $pg->dsn . '" pool=2 connect_timeout=1s timeout=1s';

sub site (%o) {
    return protected_site(
        redis    => "$URL pool=2 connect_timeout=300ms timeout=500ms",
        postgres => $PG,
        http     => $o{http} // '',
        protect  => 'add_header X-Session-Layer $session_cache_layer always;',
        server   => 'location = /health { session_cache_health; }');
}

sub check ($token) {
    my $r = get('/', cookie => "session=$token");
    return ($r->{status}, $r->{headers}{'x-session-status'} // '',
            $r->{headers}{'x-session-user'} // '');
}

# every worker loads its own slot map, and one without answers BYPASS:
# each worker's line is awaited
my $nginx = start_nginx(http => site());
$nginx->wait_for_log(qr/redis cluster: slot map loaded: 3 masters, 16384 of 16384/,
                     $nginx->workers)
    or diag $nginx->error_log;

# --- every token, from its own node -------------------------------------------

my @tokens = map { "tok-cl-$_" } 1 .. 30;
$pg->add_session($_, "user-$_", 3600) for @tokens;

my ($owner) = $cluster->token_owners(@tokens);
$cluster->answers_from_owners(sub ($t) { join ' ', check($t) }, $owner);

my ($s, $c) = check('tok-cl-unknown');
is("$s $c", '401 MISS', 'an unknown token: 401');
is($cluster->owner_of_key('session:tok-cl-unknown')->wait_for_key('session:tok-cl-unknown'),
   '{"invalid":true}', 'its negative entry is written on the node that owns its slot');
($s, $c) = check('tok-cl-unknown');
is("$s $c", '401 NEGATIVE', 'then its negative entry, from its node');

# --- the health document ------------------------------------------------------

my ($r, $doc) = $nginx->health;
is($r->{status}, 200, 'health: 200');
is($doc->{status}, 'healthy', 'health: healthy') or diag explain $doc->{errors};
is($doc->{redis}{mode}, 'cluster', 'health: redis.mode is cluster');
my $cl = $doc->{redis}{cluster} // {};
is($cl->{state}, 'ok', 'health: cluster state ok');
is($cl->{slotsCovered}, 16384, 'health: every slot covered');
is(scalar @{ $cl->{nodes} // [] }, 3, 'health: three nodes');
is(join(',', sort map { $_->{address} } @{ $cl->{nodes} // [] }),
   join(',', sort map { '127.0.0.1:' . $_->port } @nodes), 'health: their addresses');
my $slots = 0;
$slots += $_->{slots} for @{ $cl->{nodes} // [] };
is($slots, 16384, 'health: their slots add up');
ok((grep { ($_->{pool}{max} // 0) == 2 } @{ $cl->{nodes} }) == 3,
   'health: each node has its own pool of pool=2');
is($doc->{redis}{pool}{max}, 6 * $nginx->workers,
   'health: redis.pool sums the node pools (3 x pool=2, per worker)');
is($cl->{moved}, 0, 'health: no MOVED on a stable cluster');
unlike($r->{body}, qr/cl-S3cret-pw/, 'health: no password');

$r = $nginx->get('/health?format=prometheus');
like($r->{body}, qr/^nginx_session_cache_redis_cluster_slots_covered 16384$/m,
     'prometheus: slots covered');
like($r->{body}, qr/^nginx_session_cache_redis_cluster_redirects_total\{type="moved"\} 0$/m,
     'prometheus: redirects');
like($r->{body}, qr/^nginx_session_cache_redis_cluster_node_slots\{node="127\.0\.0\.1:\d+"\} \d+$/m,
     'prometheus: slots per node');
promtool_ok($r->{body}, 'prometheus with a cluster');

unlike($nginx->error_log, qr/cl-S3cret-pw/, 'no password in the error log');
no_alerts($nginx);

# --- L1 ---------------------------------------------------------------------

{
    my $n = start_nginx(http => site(http => 'session_cache_l1 size=1m tracking=off ttl=10s;'));
    $n->wait_for_log(qr/redis cluster: slot map loaded/, $n->workers);
    my $t = $tokens[0];
    my $first = get('/', cookie => "session=$t");
    my $again = get('/', cookie => "session=$t");
    is($first->{headers}{'x-session-layer'}, 'redis', 'tracking=off: first from the cluster');
    is($again->{headers}{'x-session-layer'}, 'l1', 'tracking=off: then from L1');
    no_alerts($n);
}

# --- the URL at nginx -t ----------------------------------------------------

{
    my $p = $nodes[0]->port;
    my %bad = (
        "redis-cluster://:pw-Secret1\@127.0.0.1:$p,,127.0.0.1:1" => qr/empty seed/,
        "redis-cluster://:pw-Secret1\@127.0.0.1:$p/2"            => qr/database 0 only/,
        "redis-cluster://:pw-Secret1\@127.0.0.1:99999"           => qr/invalid port/,
        "redis-cluster://:pw-Secret1\@no-such-host.invalid:7000" => qr/could not translate host name/,
    );
    for my $url (sort keys %bad) {
        my ($rc, $out) = check_config(http => protected_site(redis => $url, postgres => $PG));
        isnt($rc, 0, "nginx -t refuses a bad seed list");
        like($out, $bad{$url}, "... and says why: $bad{$url}");
        unlike($out, qr/pw-Secret1/, '... without the password');
    }
}

done_testing;
