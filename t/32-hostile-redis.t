# A Redis that answers with something hostile or broken (issue 5): a huge
# array, an endless bulk string, garbage. The worker neither allocates
# what the server announces nor buffers without end: the connection fails
# at once with the cause, the request goes on through Postgres (BYPASS),
# and nginx keeps serving.

use v5.36;
use Test::More;
use IO::Select;
use IO::Socket::INET;
use POSIX ();
use SessionCache::Test;

my $pg = start_postgres();
$pg->add_session('tok-hostile-redis', 'user-hr', 3600);

# A fake Redis on a free port: reads a command, answers $reply (a string,
# or a code ref that writes to the socket).
sub fake_redis ($reply) {
    my $port = free_port();
    my $l = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => $port,
                                  Listen => 16, ReuseAddr => 1)
        or die "listen: $!";
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        $SIG{PIPE} = 'IGNORE';
        while (my $c = $l->accept) {
            my $in = '';
            sysread $c, $in, 65536;
            ref $reply ? $reply->($c) : syswrite $c, $reply;
            # keep it open: the module must not wait for more
            my $sel = IO::Select->new($c);
            while ($sel->can_read(5)) { sysread($c, my $b, 65536) or last }
            close $c;
        }
        POSIX::_exit(0);
    }
    close $l;
    return ($port, $pid);
}

for my $case (
    ['an array of 300 million elements', "*300000000\r\n", qr/redis: unexpected reply: an array to GET/],
    ['a bulk string of 100 MB, streamed', sub ($c) {
         syswrite $c, "\$100000000\r\n";
         my $chunk = 'x' x 65536;
         for (1 .. 40) { syswrite($c, $chunk) or last }
     }, qr/redis: reply too large for GET/],
    ['garbage', "HTTP/1.1 400 Bad Request\r\n\r\n", qr/redis: protocol error: not a reply to GET/],
) {
    my ($name, $reply, $cause) = @$case;
    my ($port, $pid) = fake_redis($reply);
    my $nginx = start_nginx(http => protected_site(
        redis    => "redis://127.0.0.1:$port/0 pool=1 timeout=2s",
        postgres => '"' . $pg->dsn . '" pool=1'));
    my $r = get('/', cookie => 'session=tok-hostile-redis');
    is($r->{status}, 200, "Redis answers $name: 200 through Postgres");
    is($r->{headers}{'x-session-status'}, 'BYPASS', "$name: BYPASS");
    cmp_ok($r->{ms}, '<', 1500, sprintf("$name: without waiting for the 2s timeout (%.0f ms)", $r->{ms}));
    like($nginx->error_log, $cause, "$name: the error log names the cause");
    is(get('/public.html')->{status}, 200, "$name: nginx still serves");
    # the largest of the workers: either may have served the request
    my ($rss) = sort { $b <=> $a } map {
        (SessionCache::Test::_slurp("/proc/$_/status") // '') =~ /VmRSS:\s+(\d+)/
    } $nginx->worker_pids;
    cmp_ok($rss // 0, '<', 200_000, "$name: the worker holds " . ($rss // '?') . ' kB');
    no_alerts($nginx, "$name: no alerts");
    kill 'TERM', $pid;
    waitpid $pid, 0;
}

done_testing;
