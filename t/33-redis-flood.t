# A Redis that floods the module (issue 10, item 3): it answers GET with
# nested 64-wide arrays of small integers (*64 of *64 of ... of :1), and
# keeps sending. Each one is within the 64-element cap of the first
# hostile-Redis fix, yet hiredis built an object per element: a worker
# peaked at 0.9 GB, an unrelated location on it waited up to 570 ms, and
# the lookup ended well past its timeout because the read loop kept
# reading while bytes arrived.
#
# Now a GET expects a bulk string or nil and an array is refused at its
# first byte; reads yield to the event loop after a budget. On one worker:
# its peak RSS stays under 20 MB above its baseline, a static location
# answers at once throughout, and the lookup ends within its timeout
# (then Postgres answers: BYPASS).

use v5.36;
use Test::More;
use IO::Select;
use IO::Socket::INET;
use POSIX ();
use Time::HiRes qw(time);
use SessionCache::Test;

my $pg = start_postgres();
$pg->add_session('tok-flood', 'user-flood', 3600);

# The fake Redis: reads a command, then sends one endless reply for up to
# 5 s or until the module hangs up: arrays of 64 arrays, five levels
# deep, of 64 integers each (64^5 integers in all, a gigabyte of RESP
# that hiredis would have turned into a billion objects).
my $port = free_port();
my $l = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => $port,
                              Listen => 16, ReuseAddr => 1)
    or die "listen: $!";
my $server = fork // die "fork: $!";
if ($server == 0) {
    $SIG{PIPE} = 'IGNORE';
    # two levels: *64 of *64 of :1 (16 kB)
    my $block = "*64\r\n" . ("*64\r\n" . (":1\r\n" x 64)) x 64;
    while (my $c = $l->accept) {
        sysread $c, my $in, 65536;
        my $until = time + 5;
        my $send = sub ($bytes) {
            return 0 if time > $until;
            return defined syswrite $c, $bytes;
        };
      OUTER:
        for my $top ($send->("*64\r\n")) {
            for (1 .. 64) {
                $send->("*64\r\n") or last OUTER;
                for (1 .. 64) {
                    $send->("*64\r\n") or last OUTER;
                    for (1 .. 64) { $send->($block) or last OUTER }
                }
            }
        }
        close $c;
    }
    POSIX::_exit(0);
}
close $l;

my $timeout_ms = 500;
my $nginx = start_nginx(workers => 1, http => protected_site(
    redis    => "redis://127.0.0.1:$port/0 pool=1 timeout=${timeout_ms}ms",
    postgres => '"' . $pg->dsn . '" pool=1'));
my ($worker) = $nginx->worker_pids;

sub status_kb ($field) {
    my ($kb) = (SessionCache::Test::_slurp("/proc/$worker/status") // '')
        =~ /^$field:\s+(\d+)/m;
    return $kb // 0;
}

is(get('/public.html')->{status}, 200, 'the static location answers');
my $baseline = status_kb('VmRSS');

my ($lookup) = SessionCache::Test::_send('/', cookie => 'session=tok-flood');
my $sel = IO::Select->new($lookup->{sock});
my ($probes, $slowest, $res) = (0, 0);

# The static location, again and again while the lookup runs (and a
# little after): each answer is timed. A static file takes about 1 ms
# here; the limit, 100 ms, is a wide margin for a loaded machine and
# still far below the 570 ms stalls it guards against.
while ($probes < 20 || !$res) {
    my $r = get('/public.html');
    $probes++;
    $slowest = $r->{ms} if $r->{ms} > $slowest;
    is($r->{status}, 200, "static location, probe $probes") if $r->{status} != 200;
    if (!$res && $sel->can_read(0)) {
        ($res) = SessionCache::Test::collect($lookup);
    }
    last if $probes > 2000;
}

is($res->{status}, 200, 'the lookup is answered (through Postgres)');
is($res->{headers}{'x-session-status'}, 'BYPASS', 'BYPASS: Redis did not answer');
# the lookup's own limit: its timeout, plus the issue's 50 ms
cmp_ok($res->{ms}, '<', $timeout_ms + 50,
       sprintf('the lookup ended within its %d ms timeout + 50 ms (%.0f ms)',
               $timeout_ms, $res->{ms}));
cmp_ok($slowest, '<', 100,
       sprintf('the static location answered within 100 ms throughout '
               . '(%d probes, slowest %.1f ms)', $probes, $slowest));

my $peak = status_kb('VmHWM');
cmp_ok($peak - $baseline, '<', 20_000,
       "the worker's peak RSS stayed under 20 MB above its baseline "
       . "($baseline kB, peak $peak kB)");
like($nginx->error_log, qr/redis: unexpected reply: an array to GET/,
     'the error log names the cause');
is(scalar($nginx->worker_pids), 1, 'the worker is the same one');
is(($nginx->worker_pids)[0], $worker, 'no worker was replaced');

no_alerts($nginx);
kill 'TERM', $server;
waitpid $server, 0;

done_testing;
