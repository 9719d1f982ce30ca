# load_balance=random (SPEC §11, issue 15): two standbys, each worker
# shuffles the host list once when it starts (host, address and port kept
# together). Over a few generations of workers (a reload starts new ones),
# both standbys receive lookups; without the parameter, every worker goes
# to the first host only.

use v5.36;
use Test::More;
use SessionCache::Test;

my $primary = start_postgres();
my $s1 = $primary->start_standby;
my $s2 = $primary->start_standby;
my $PW = $primary->password;

my @valid = map { "tok-lb-$_" } 1 .. 20;
$primary->add_session($_, "user-$_", 3600) for @valid;
$_->wait_replayed($primary) for $s1, $s2;

# one entry per standby, with its own port: a shuffle that split host
# from port would connect to nothing
my $dsn = 'host=127.0.0.1,localhost port=' . $s1->port . ',' . $s2->port
        . " dbname=sessions user=nginx password=$PW "
        . 'target_session_attrs=standby';

sub site ($params) {
    my $h = session_headers();
    return <<~"NGX";
        session_cache_postgres "$dsn" pool=2 connect_timeout=1s timeout=2s $params;
        server {
            listen 127.0.0.1:%%PORT%% reuseport;
            location / {
                root %%HTML%%;
                auth_session \$cookie_session;
                $h
            }
        }
        NGX
}

# 20 lookups at once (20 tokens: no two share a query), spread over the
# workers; every one must succeed
sub round () {
    my @r = get_many(20, sub ($i) { ('/', cookie => "session=$valid[$i]") });
    return scalar grep { $_->{status} == 200 } @r;
}

my $nginx = start_nginx(workers => 2, http => site(''));
my $all = 1;
for (1 .. 3) {
    $all &&= round() == 20;
    $nginx->reload;
}
ok($all, 'without load_balance: every lookup answered');
is($s1->query_count, 60, 'without load_balance: the first host answers all');
is($s2->query_count, 0, 'without load_balance: the second host none');

$nginx->reload(http => site('load_balance=random'));
my ($rounds, $both) = (0, 0);
my $before = $s1->query_count;
$all = 1;
# each generation of 2 workers misses one standby with probability 1/2:
# 16 generations miss it with 2^-16
while ($rounds < 16) {
    $rounds++;
    $all &&= round() == 20;
    last if ($both = $s2->query_count > 0 && $s1->query_count > $before);
    $nginx->reload;
}
ok($all, 'load_balance=random: every lookup answered (hosts and ports '
       . 'kept together)');
ok($both, "load_balance=random: both standbys received lookups "
        . "($rounds generation(s) of workers)");
note 'lookups: first standby ' . $s1->query_count . ', second '
   . $s2->query_count;
is($primary->query_count, 0, 'the primary received none');

unlike($nginx->error_log, qr/\Q$PW\E/, 'no password in the error log');
no_alerts($nginx);
done_testing;
