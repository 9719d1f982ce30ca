# The GET race (SPEC §8): Redis may deliver an invalidation before the
# reply of a GET that read the old value (two sockets, no order between
# them). A TCP shim between nginx and Redis holds the reply carrying the
# old value while the key is deleted and the invalidation passes; the
# stale value is then answered to the request that asked (Redis said so
# when it was read) but never stored in L1 nor served again.

use v5.36;
use Test::More;
use IO::Socket::INET;
use IO::Select;
use Time::HiRes qw(time);
use SessionCache::Test;

my $redis = start_redis();
my $pg    = start_postgres();

# --- the shim: forwards both ways; holds server-to-client bytes holding
# the marker while the hold file exists ------------------------------------------------

my $MARK = 'stale-user-4e1f';
my $hold = "/tmp/l1-race-hold-$$";
my $port = SessionCache::Test::free_port();
my $listen = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => $port,
                                   Listen => 16, ReuseAddr => 1) or die "shim: $!";
my $shim = fork // die "fork: $!";
if ($shim == 0) {
    my $sel = IO::Select->new($listen);
    my (%peer, %out);    # socket -> its other end; socket -> bytes held for it
    my %upstream;        # the server-side sockets
    while (1) {
        for my $s ($sel->can_read(0.01)) {
            if ($s == $listen) {
                my $c = $listen->accept or next;
                my $u = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                              PeerPort => $redis->port) or next;
                $peer{$c} = $u; $peer{$u} = $c; $upstream{$u} = 1;
                $out{$c} = $out{$u} = '';
                $sel->add($c, $u);
                next;
            }
            my $n = sysread $s, my $buf, 65536;
            if (!$n) {
                my $o = $peer{$s};
                $sel->remove($s, $o);
                close $s; close $o;
                delete @peer{$s, $o}; delete @out{$s, $o};
                next;
            }
            $out{$peer{$s}} .= $buf;
        }
        for my $s (keys %out) {
            my ($sock) = grep { "$_" eq $s } $sel->handles or next;
            next if $out{$s} eq '';
            next if !$upstream{$s} && -e $hold && index($out{$s}, $MARK) >= 0;
            my $w = syswrite $sock, $out{$s};
            substr($out{$s}, 0, $w) = '' if $w;
        }
    }
    exit 0;
}
close $listen;

END { kill 'KILL', $shim if $shim; unlink $hold if $hold }

my $url = "redis://127.0.0.1:$port/0";
my $nginx = start_nginx(http => protected_site(
    redis    => "$url pool=2 connect_timeout=1s timeout=5s",
    postgres => '"' . $pg->dsn . '" pool=2 connect_timeout=1s timeout=1s',
    http     => 'session_cache_l1 size=1m ttl=60s;',
    protect  => 'add_header X-Session-Layer $session_cache_layer always;',
    server   => 'location = /health { session_cache_health; }'));

sub l1 () { my ($r, $d) = $nginx->health; return $d->{l1} // {} }

ok(wait_until(sub { l1()->{armed} }, 10), 'the listener arms through the shim');

# a session in Redis only (not in Postgres): once deleted, it is refused
my $t = 'tok-race-9a0b';
$redis->cli('SET', "session:$t", qq({"user_id":"$MARK","expires_at":)
            . int(time + 3600) . '}', 'EX', 300);
# this SET's own invalidation read first: arriving after the GET below
# was sent, it would keep the stale value out of L1 in the DEL's place
ok(SessionCache::Test::l1_settled($nginx, $redis),
   'the SET\'s invalidation has reached L1');

open my $fh, '>', $hold or die "$hold: $!";
close $fh;
my $gets = $redis->calls('get');
my ($pending) = send_many(1, sub { ('/', cookie => "session=$t") });
# the GET went out and its reply is held: wait for Redis to have run it
ok(wait_until(sub { $redis->calls('get') > $gets }, 10), 'the GET reached Redis');

$redis->cli('DEL', "session:$t");
# a barrier behind the DEL, not the invalidations counter alone: each
# health document's probe key is invalidated too, and could raise it first
ok(SessionCache::Test::l1_settled($nginx, $redis),
   'the invalidation passed while the GET reply was held');

unlink $hold;
my ($r) = collect($pending);
is("$r->{status} " . ($r->{headers}{'x-session-user'} // ''), "200 $MARK",
   'the held reply answers its own request (read before the DEL)');

$r = get('/', cookie => "session=$t");
is($r->{status}, 401, 'the next request: refused');
isnt($r->{headers}{'x-session-layer'}, 'l1', 'the stale value was never stored in L1');

no_alerts($nginx, 'race: no alerts');

done_testing;
