# The L1 listener under trouble (SPEC §8, issue 12).
#
# 1. Its traffic frozen. A TCP shim between nginx and Redis forks one
#    process per connection; the process of the connection that sends
#    CLIENT TRACKING (the listener's) is stopped with SIGSTOP, and so is
#    any later listener connection while the freeze lasts (it stops
#    itself before passing CLIENT TRACKING on); the data connections keep
#    flowing. Nothing tells the listener that its invalidations stopped:
#    the unanswered PING does. L1 is bypassed within 3 s, a key deleted
#    while frozen is never served from L1, the flush is counted
#    (heartbeat), and after the thaw the listener arms again (reconnect).
#
# 2. nginx -s reload x20 under load, with a token revoked at each reload
#    (before the HUP or while the new workers take over). A sampler reads
#    Redis's CLIENT LIST all along. The honest assertion: exactly one
#    listener whenever no reload is in progress; during a reload the new
#    generation's listener connects as soon as its workers start, while the
#    old one goes when its worker exits or at its next tick (<= 1 s), so two
#    may coexist for that takeover window (never three, never two for
#    longer than the bound below); none may exist for a moment too (L1 is
#    then disarmed, hence bypassed). No token is served after its first
#    401, no valid request fails.

use v5.36;
use Test::More;
use IO::Socket::INET;
use IO::Select;
use POSIX ();
use Time::HiRes qw(time);
use List::Util qw(max min sum);
use SessionCache::Test;
use SessionCache::Load;
use SessionCache::RedisConn;

my $redis = start_redis();
my $pg    = start_postgres();
my $rc    = SessionCache::RedisConn->new($redis->port);

my $PG = '"' . $pg->dsn . '" pool=2 connect_timeout=1s timeout=2s';

sub site ($port) {
    return protected_site(
        redis    => "redis://127.0.0.1:$port/0 pool=2 connect_timeout=300ms timeout=500ms",
        postgres => $PG,
        http     => 'session_cache_l1 size=1m ttl=60s;',
        protect  => 'add_header X-Session-Layer $session_cache_layer always;',
        server   => 'location = /health { session_cache_health; }
                     location = /slow.txt { root %%HTML%%; limit_rate 1k;
                                            add_header X-Pid $pid; }');
}

my $nginx;
sub l1 () { my ($r, $d) = $nginx->health; return $d->{l1} // {} }
sub flushes ($reason) { l1()->{flushes}{$reason} // 0 }

my %answers;    # token -> [{t0, t1, status, layer}]
sub probe ($t) {
    my $r = get('/', cookie => "session=$t");
    my $a = { t0 => $r->{t0}, t1 => $r->{t1}, status => $r->{status},
              layer => $r->{headers}{'x-session-layer'} // '-' };
    push @{ $answers{$t} }, $a;
    return $a;
}

# Ask until the answer comes from L1 (the test's SET and the module's own
# fill invalidate the entry once or twice).
sub until_l1 ($t) {
    return wait_until(sub { probe($t)->{layer} eq 'l1' }, 10, 0.005);
}

sub cache_in_redis ($t, $user) {
    $rc->cmd('SET', "session:$t",
             qq({"user_id":"$user","expires_at":) . int(time + 3600) . '}',
             'EX', 300);
}

# Answers to requests for $t sent after its first 401 that are not 401.
sub stale_after_401 (@a) {
    my ($first) = sort { $a <=> $b } map { $_->{t1} } grep { $_->{status} == 401 } @a;
    return () unless defined $first;
    return grep { $_->{t0} > $first && $_->{status} != 401 } @a;
}

# --- 1. the listener's traffic frozen ---------------------------------------------

# The shim: one process per connection, in the shim's own process group.
# A connection's process writes its pid to $dir/listeners when the client
# sends CLIENT TRACKING, and stops itself first if $dir/freeze exists.
my $dir = SessionCache::Test::_tempdir('l1-shim');
my $shim_port = SessionCache::Test::free_port();
my $listen = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => $shim_port,
                                   Listen => 64, ReuseAddr => 1) or die "shim: $!";
my $shim = fork // die "fork: $!";
if ($shim == 0) {
    POSIX::setpgid(0, 0);
    $SIG{CHLD} = 'IGNORE';
    while (1) {
        my $c = $listen->accept or next;
        my $pid = fork;
        if (defined $pid && $pid == 0) {
            close $listen;
            eval { relay($c) };
            POSIX::_exit(0);
        }
        close $c;
    }
}
close $listen;
END { kill 'KILL', -$shim if $shim }

sub relay ($c) {
    my $u = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $redis->port) or return;
    my $sel = IO::Select->new($c, $u);
    my $listener = 0;
    while (1) {
        for my $s ($sel->can_read) {
            my $n = sysread $s, my $buf, 65536;
            return unless $n;
            if ($s == $c && !$listener && index($buf, 'TRACKING') >= 0) {
                $listener = 1;
                open my $fh, '>>', "$dir/listeners" or die;
                print $fh "$$\n";
                close $fh;
                kill 'STOP', $$ if -e "$dir/freeze";
            }
            my $to = $s == $c ? $u : $c;
            my $off = 0;
            while ($off < $n) {
                my $w = syswrite $to, $buf, $n - $off, $off;
                return unless $w;
                $off += $w;
            }
        }
    }
}

# the listener connections' processes still alive
sub shim_listeners () {
    open my $fh, '<', "$dir/listeners" or return ();
    return grep { kill 0, $_ } map { chomp; $_ } <$fh>;
}

{
    # in Redis only (once deleted: 401), and before nginx starts: no
    # invalidation of theirs can arrive late and drop them from L1
    my ($gone, $kept) = ('tok-frozen-gone-1f3a', 'tok-frozen-kept-77b0');
    cache_in_redis($gone, 'user-gone');
    cache_in_redis($kept, 'user-kept');

    $nginx = start_nginx(workers => 2, http => site($shim_port));
    ok(wait_until(sub { l1()->{armed} }, 10), 'the listener arms through the shim');
    my @l = shim_listeners();
    is(scalar @l, 1, 'one listener connection through the shim');
    ok(until_l1($gone) && until_l1($kept), 'both sessions answered from l1');

    my $beats = flushes('heartbeat');
    my $again = flushes('reconnect');
    open my $fh, '>', "$dir/freeze" or die;
    close $fh;
    kill 'STOP', @l;
    my $t_freeze = time;
    $rc->cmd('DEL', "session:$gone");    # its invalidation is stuck in the shim

    my $t_bypass;
    ok(wait_until(sub {
        probe($gone);
        probe($kept);
        my $armed = l1()->{armed};
        $t_bypass = time;
        !$armed;
    }, 10, 0.01), 'listener frozen: L1 disarmed');
    my $took = $t_bypass - $t_freeze;
    # The promise: bypassed within 3 s of the last PONG, which came before
    # the freeze; 1 s more for a loaded machine's scheduler. The figure
    # protects the bound on how long a silent listener's L1 is trusted.
    ok($took < 4, sprintf 'L1 bypassed within 3 s of the freeze (%.2f s)', $took);
    my $stale = grep { $_->{t0} > $t_freeze && $_->{status} == 200
                       && $_->{layer} eq 'l1' } @{ $answers{$gone} };
    # the window the heartbeat bounds: the DEL's invalidation is held in
    # the shim, so L1 still answers for the deleted token until the bypass
    ok($stale >= 1, "frozen: the deleted token still answered from l1 until "
       . "the bypass ($stale answers in ${\ sprintf '%.2f', $took} s)");

    ok(wait_until(sub {
        probe($gone);
        probe($kept);
        flushes('heartbeat') > $beats;
    }, 10, 0.05), 'L1 flushed (heartbeat)');

    # the listener tries again; its new connection stops too
    ok(wait_until(sub { probe($gone); probe($kept); shim_listeners() >= 2 }, 15, 0.05),
       'while frozen, the listener connects again');
    probe($gone) && probe($kept) for 1 .. 5;
    ok(!l1()->{armed}, 'and stays disarmed while its traffic is frozen');

    my @after = grep { $_->{t0} > $t_bypass } @{ $answers{$gone} };
    ok(@after && !grep({ $_->{status} != 401 } @after),
       'the deleted token: 401 on every request once L1 is bypassed ('
       . scalar(@after) . ')');
    my @kept = grep { $_->{t0} > $t_bypass } @{ $answers{$kept} };
    ok(@kept && !grep({ $_->{status} != 200 || $_->{layer} ne 'redis' } @kept),
       'the valid token: 200 from Redis, never l1, while disarmed ('
       . scalar(@kept) . ')');

    unlink "$dir/freeze";
    kill 'CONT', shim_listeners();
    my $t_thaw = time;
    ok(wait_until(sub {
        probe($gone);
        l1()->{armed} && flushes('reconnect') > $again;
    }, 15, 0.05), 'thawed: the listener arms again, L1 flushed (reconnect)');
    note sprintf 'armed again %.2f s after the thaw', time - $t_thaw;

    like(probe($gone)->{status}, qr/^401$/, 'the deleted token: still refused');
    ok(until_l1($kept), 'the valid token: from l1 again');
    is(scalar(stale_after_401(@{ $answers{$gone} })), 0,
       'the deleted token: never 200 after its first 401');
    no_alerts($nginx, 'frozen listener: no alerts');
    kill 'KILL', -$shim;
    waitpid $shim, 0;
    $shim = 0;
}

# GET /slow.txt, its headers read: (the socket, the pid of the worker
# that serves it); the body keeps coming at 1 KB/s.
sub slow_request () {
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $nginx->port) or die "slow: $!";
    syswrite $s, "GET /slow.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    my $head = '';
    my $sel = IO::Select->new($s);
    while ($head !~ /\r\n\r\n/ && $sel->can_read(5)) {
        sysread($s, $head, 4096, length $head) or last;
    }
    my ($pid) = $head =~ /^X-Pid: (\d+)/mi;
    return ($s, $pid // 0);
}

# --- 2. reloads under load: one listener per instance ------------------------------

my $RELOADS = 20;

# The sampler: CLIENT LIST all along, on its own connection; one line per
# sample: time and the ids of the connections subscribed (the listeners:
# sub=1, flags P).
my $samples = "$dir/samples";
my $sampler = fork // die "fork: $!";
if ($sampler == 0) {
    my $stop = 0;
    $SIG{TERM} = sub { $stop = 1 };
    eval {
        my $c = SessionCache::RedisConn->new($redis->port);
        open my $out, '>', $samples or die "$samples: $!";
        $out->autoflush(1);
        # back to back: each sample is paced by Redis's own answer (the
        # pubsub clients only, a short list), so no change is slept through
        until ($stop) {
            my $t0 = time;
            my $list = $c->cmd('CLIENT', 'LIST', 'TYPE', 'pubsub') // '';
            my @ids = map { /\bid=(\d+)/ ? $1 : () }
                      grep { /\bsub=[1-9]/ || /\bflags=\S*P/ } split /\n/, $list;
            printf $out "%.6f %.6f %s\n", $t0, time, join ',', @ids;
        }
    };
    print STDERR "sampler: $@" if $@;
    POSIX::_exit($@ ? 1 : 0);
}
END { if ($sampler) { kill 'TERM', $sampler; waitpid $sampler, 0 } }

sub read_samples () {
    open my $fh, '<', $samples or return ();
    return map {
        my ($t0, $t1, $ids) = split ' ';
        { t0 => $t0, t1 => $t1, ids => [ split /,/, $ids // '' ] }
    } grep { /\n\z/ } <$fh>;
}
sub listeners_now () {
    return scalar grep { /\bsub=[1-9]/ } split /\n/, $rc->cmd('CLIENT', 'LIST');
}

{
    my @valid = map { "tok-reload-ok-$_-2b9e" } 1 .. 6;
    my @rev   = map { "tok-reload-rev-$_-2b9e" } 1 .. $RELOADS;
    $pg->add_session($_, "user-$_", 3600) for @valid;    # from Postgres, then Redis
    cache_in_redis($_, "user-$_") for @rev;    # in Redis only, before nginx

    $nginx = start_nginx(workers => 2, http => site($redis->port));
    ok(wait_until(sub { l1()->{armed} }, 10), 'direct to Redis: the listener arms');
    my %kinds = (valid => \@valid, map { ("r$_" => [ $rev[$_ - 1] ]) } 1 .. $RELOADS);
    my $load = start_load(tokens => \%kinds, rate => 300, max_seconds => 120);

    my (@hup, @settled, @gaps);
    for my $i (1 .. $RELOADS) {
        my $t = $rev[$i - 1];
        until_l1($t);
        my %old = map { $_ => 1 } $nginx->worker_pids;
        # revoke before the HUP (odd) or while the new workers take over
        $rc->cmd('DEL', "session:$t") if $i % 2;
        push @hup, time;
        kill 'HUP', $nginx->master_pid;
        $rc->cmd('DEL', "session:$t") unless $i % 2;
        my $ok = wait_until(sub {
            my @now = $nginx->worker_pids;
            !grep({ $old{$_} } @now) && @now >= 2;
        }, 10, 0.01, "reload $i: the old workers gone");
        my $gone = time;
        my %new = map { $_ => 1 } $nginx->worker_pids;
        $ok &&= wait_until(sub {
            my $l = l1();
            $l->{armed} && $new{ $l->{listener} // 0 } && listeners_now() == 1;
        }, 10, 0.01, "reload $i: one armed listener, a new worker");
        push @settled, time;
        push @gaps, $settled[-1] - $gone;
        ok($ok, "reload $i: settled, one listener of the new generation") or last;
    }
    $load->wait_for(50, sub ($r) { $r->{t0} > $settled[-1] }, 'answers after the last reload');
    my @r = $load->stop;
    kill 'TERM', $sampler;
    waitpid $sampler, 0;
    $sampler = 0;
    my @s = read_samples();

    # the load: no valid request failed; no revoked token served after a 401
    my @bad = unexpected([ grep { $_->{kind} eq 'valid' } @r ]);
    ok(!@bad, 'no valid request failed across the reloads ('
       . scalar(grep { $_->{kind} eq 'valid' } @r) . ')')
        or diag summarize(\@bad);
    my @stale;
    for my $i (1 .. $RELOADS) {
        my @a = grep { $_->{kind} eq "r$i" } @r;
        push @a, @{ $answers{ $rev[$i - 1] } // [] };
        my @x = stale_after_401(@a);
        push @stale, "r$i: " . summarize(\@x) if @x;
        push @stale, "r$i: never refused" unless grep { $_->{status} == 401 } @a;
    }
    ok(!@stale, "revoked during the reloads: each refused, never served after "
       . "its first 401") or diag join "\n", @stale;

    # the sampler: never three listeners; two only inside a reload, briefly;
    # exactly one between a reload's settling and the next HUP
    my $most = max(map { scalar @{ $_->{ids} } } @s) // 0;
    ok(@s > 100, scalar(@s) . ' CLIENT LIST samples');
    ok($most <= 2, "never more than two listeners at once (most: $most)");
    my (@overlap, $since, @outside);
    for my $x (@s) {
        my $n = @{ $x->{ids} };
        if ($n >= 2) { $since //= $x->{t0} }
        elsif (defined $since) { push @overlap, $x->{t1} - $since; undef $since }
        # read by Redis between t0 and t1: after the settling, before the
        # next HUP
        for my $i (0 .. $#settled) {
            my $next = $hup[$i + 1] // 9e9;
            push @outside, sprintf 'after reload %d: %d listeners', $i + 1, $n
                if $x->{t0} > $settled[$i] && $x->{t1} < $next && $n != 1;
        }
    }
    push @overlap, $s[-1]{t1} - $since if defined $since;
    my $longest = max(@overlap, 0);
    ok(!@outside, 'exactly one listener from each reload\'s settling to the next HUP')
        or diag join "\n", @outside[0 .. min($#outside, 9)];
    # The old generation's listener goes when its worker exits or at its
    # next tick (1 s); 1 s more for a loaded machine. The figure protects
    # the promise that a reload does not leave a second listener behind.
    ok($longest < 2, sprintf 'two listeners only during takeovers: %d windows, '
       . 'longest %.0f ms', scalar @overlap, $longest * 1000);
    my $zero = grep { $_->{t0} > $hup[0] && !@{ $_->{ids} } } @s;
    my @ms = sort { $a <=> $b } map { $_->{ms} } @r;
    note sprintf '%d reloads: %d samples, %d with two listeners in %d windows '
        . '(longest %.0f ms), %d with none; from the old workers\' exit to one '
        . 'armed listener: max %.0f ms; the load: %d answers in %.1f s, '
        . 'p50 %.1f ms, p99 %.1f ms, max %.1f ms',
        scalar @settled, scalar @s,
        scalar(grep { @{ $_->{ids} } == 2 } @s), scalar @overlap,
        $longest * 1000, $zero, max(@gaps, 0) * 1000, scalar @r,
        $settled[-1] - $hup[0], $ms[ int(@ms / 2) ], $ms[ int(@ms * 0.99) ],
        $ms[-1];
    ok(flushes('takeover') >= 1, 'health: takeovers counted ('
       . flushes('takeover') . ')');

    # A reload while the listening worker is kept alive by a slow response
    # (4 KB at 1 KB/s): its listener still goes at its next tick, not when
    # the worker exits.
    $nginx->write_html('slow.txt', 'x' x 4000);
    my $holder = l1()->{listener};
    # which worker accepts is the kernel's choice, and far from even (one
    # idle worker may take four connections in five): ask until the
    # holder serves one
    my @slow;
    my $held = 0;
    for (1 .. 200) {
        my ($sock, $pid) = slow_request();
        push @slow, $sock;
        last if $held = $pid == $holder;
    }
    diag "no slow response reached the listening worker $holder" unless $held;
    my %old = map { $_ => 1 } $nginx->worker_pids;
    my $t_hup = time;
    kill 'HUP', $nginx->master_pid;
    my $one = wait_until(sub {
        my @new = grep { !$old{$_} } $nginx->worker_pids;
        my $l = l1();
        @new >= 2 && $l->{armed} && !$old{ $l->{listener} // 0 }
            && listeners_now() == 1;
    }, 10, 0.01, 'one listener, a new worker\'s');
    my $took = time - $t_hup;
    ok($one && kill(0, $holder), sprintf 'the old listening worker, still '
       . 'serving a slow response, let its listener go (%.2f s after the HUP)',
       $took);
    # its next tick, within 1 s, and 1 s more for a loaded machine
    ok($took < 2, 'within the tick (1 s)');
    close $_ for @slow;
    ok(wait_until(sub { !grep { $old{$_} } $nginx->worker_pids }, 10),
       'the old workers exit');

    no_alerts($nginx, 'reloads: no alerts');
}

done_testing;
