# Redis Cluster redirections (SPEC §10). A slot moved by hand, step by
# step: while it migrates, a key already moved gets ASK from the old
# owner, followed with ASKING on the new one (a HIT); once it is moved,
# MOVED is followed once and the map refreshed, so the next request goes
# straight to the new owner. A redirection that leads to another one is
# not followed (at most one per request): that request goes to Postgres.
# Then redis-cli --cluster reshard under load: every answer right (200,
# the right user), MOVED/ASK counted in the health document.

use v5.36;
use Test::More;
use SessionCache::Test;

my $PW      = 'rd-S3cret-pw';
my $cluster = SessionCache::Test::start_redis_cluster(masters => 3, requirepass => $PW);
my $pg      = start_postgres();
my @nodes   = $cluster->nodes;

my $nginx = $cluster->start_nginx($pg,
    redis    => 'pool=4 connect_timeout=300ms timeout=1s',
    postgres => 'pool=4 connect_timeout=1s timeout=2s');

sub redirects () {
    my (undef, $doc) = $nginx->health;
    my $c = $doc->{redis}{cluster} // {};
    return ($c->{moved} // -1, $c->{ask} // -1);
}

# One token on the first node, the slot to move, and where it goes.
my ($tok, $slot, $from, $to, $other);
for my $i (1 .. 1000) {
    my $t = "tok-rd-$i";
    my $owner = $cluster->owner_of_key("session:$t");
    next unless $owner->port == $nodes[0]->port;
    ($tok, $slot, $from) = ($t, $cluster->keyslot("session:$t"), $owner);
    last;
}
($to, $other) = @nodes[1, 2];
my ($from_id, $to_id) = map { $cluster->id_of($_) } $from, $to;

$pg->add_session($tok, 'user-moved', 3600);
is(check_session($tok), '200 MISS user-moved', 'the token: MISS');
$from->wait_for_key("session:$tok");
is(check_session($tok), '200 HIT user-moved', 'then HIT from its node');

# --- ASK: the key moved, the slot migrating ---------------------------------

is($to->cli('CLUSTER', 'SETSLOT', $slot, 'IMPORTING', $from_id), 'OK', 'the new owner imports the slot');
is($from->cli('CLUSTER', 'SETSLOT', $slot, 'MIGRATING', $to_id), 'OK', 'the old owner migrates it');
is($from->cli('MIGRATE', '127.0.0.1', $to->port, "session:$tok", 0, 5000, 'AUTH', $PW), 'OK',
   'the key moves to the new owner');

my $asking = $to->calls('asking');
my $gets   = $to->calls('get');
is(check_session($tok), '200 HIT user-moved', 'ASK: followed, a HIT from the new owner');
is($to->calls('asking') - $asking, 1, 'ASK: ASKING sent to the new owner, once');
is($to->calls('get') - $gets, 1, 'ASK: the GET went there after it');
my ($moved, $ask) = redirects();
is($ask, 1, 'ASK counted in the health document');
is($moved, 0, 'no MOVED yet');

# --- MOVED: the slot belongs to the new owner ----------------------------------

for my $node (@nodes) {
    $node->cli('CLUSTER', 'SETSLOT', $slot, 'NODE', $to_id);
}
$cluster->wait_ok;

my $slots_calls = $to->calls('cluster|slots') + $from->calls('cluster|slots')
                + $other->calls('cluster|slots');
my $log = $nginx->log_size;
is(check_session($tok), '200 HIT user-moved', 'MOVED: followed, a HIT from the new owner');
($moved) = redirects();
is($moved, 1, 'MOVED counted');
$nginx->wait_for_log(qr/redis cluster: slot map changed/, 1, $log);
$gets = $to->calls('get');
my $old_gets = $from->calls('get');
is(check_session($tok), '200 HIT user-moved', 'the next request: HIT');
is($to->calls('get') - $gets, 1, '... straight from the new owner');
is($from->calls('get') - $old_gets, 0, '... the old one not asked');
($moved) = redirects();
is($moved, 1, '... no MOVED this time: the map was refreshed');
cmp_ok($to->calls('cluster|slots') + $from->calls('cluster|slots')
       + $other->calls('cluster|slots') - $slots_calls, '<=', 2,
       'one refresh of the map for the change (two with the periodic one)');

# --- a redirection to a redirection: not followed ----------------------------

{
    # the old owner says ASK (the slot migrating, the key not there), the
    # target, not importing, says MOVED back: a loop a client must not
    # follow
    my $t2;
    for my $i (1 .. 1000) {
        my $t = "tok-rd-loop-$i";
        next unless $cluster->owner_of_key("session:$t")->port == $other->port;
        $t2 = $t;
        last;
    }
    my $s2 = $cluster->keyslot("session:$t2");
    $pg->add_session($t2, 'user-loop', 3600);
    is($other->cli('CLUSTER', 'SETSLOT', $s2, 'MIGRATING', $from_id), 'OK',
       'a slot migrating to a node that does not import it');
    my $log = $nginx->log_size;
    is(check_session($t2), '200 BYPASS user-loop',
       'ASK then MOVED: the second redirection is not followed, Postgres answers');
    ok($nginx->wait_for_log(qr/redis cluster: a second redirection \(MOVED slot $s2 to 127\.0\.0\.1:\d+\) not followed/, 1, $log),
       'the log says so');
    is($other->cli('CLUSTER', 'SETSLOT', $s2, 'STABLE'), 'OK', 'the slot stable again');
    is(check_session($t2), '200 MISS user-loop', 'then the token is answered by its node');
}

# --- reshard under load ------------------------------------------------------

my @tokens = map { "tok-rs-$_" } 1 .. 120;
$pg->add_session($_, "user-$_", 3600) for @tokens;
check_session($_) for @tokens;
$cluster->owner_of_key("session:$_")->wait_for_key("session:$_") for @tokens;    # cached on their nodes
is(check_session($tokens[0]), "200 HIT user-$tokens[0]", 'cached before the reshard');

my ($moved0, $ask0) = redirects();

my $pid = fork // die "fork: $!";
if ($pid == 0) {
    my ($rc, $out) = $cluster->reshard($nodes[0], $nodes[2], 600, pipeline => 5);
    print STDERR $out if $rc;
    POSIX::_exit($rc ? 1 : 0);
}

my (%seen, @wrong);
my $n = 0;
while (1) {
    my $done = waitpid($pid, POSIX::WNOHANG()) == $pid;
    my $rc = $?;
    my @r = get_many(24, sub ($i) { my $t = $tokens[($n + $i) % @tokens];
                                    ('/', cookie => "session=$t") });
    for my $i (0 .. $#r) {
        my $t = $tokens[($n + $i) % @tokens];
        my $got = join ' ', $r[$i]{status}, $r[$i]{headers}{'x-session-user'} // '';
        $seen{ $r[$i]{headers}{'x-session-status'} // 'none' }++;
        push @wrong, "$t: $got" unless $got eq "200 user-$t";
    }
    $n += @r;
    if ($done) {
        is($rc, 0, 'redis-cli --cluster reshard moved 600 slots');
        last;
    }
}
diag join ', ', map { "$_=$seen{$_}" } sort keys %seen;
is(scalar @wrong, 0, "reshard under load: $n requests, every answer right (200, the right user)")
    or diag join "\n", @wrong[0 .. ($#wrong < 9 ? $#wrong : 9)];
is(($seen{HIT} // 0) + ($seen{MISS} // 0) + ($seen{BYPASS} // 0), $n,
   'reshard under load: HIT, MISS or BYPASS, nothing else');

$cluster->wait_ok;
my ($moved1, $ask1) = redirects();
cmp_ok($moved1 + $ask1, '>', $moved0 + $ask0, 'reshard: MOVED/ASK seen and counted');
diag sprintf 'reshard: %d MOVED, %d ASK', $moved1 - $moved0, $ask1 - $ask0;

my @after = map { check_session($_) } @tokens;
is(scalar(grep { !/^200 (HIT|MISS) user-/ } @after), 0,
   'after the reshard every token is answered from the cluster');
my (undef, $doc) = $nginx->health;
is($doc->{redis}{cluster}{slotsCovered}, 16384, 'the map covers every slot again');
unlike($nginx->error_log, qr/\Q$PW\E/, 'no password in the error log');
no_alerts($nginx);

done_testing;
