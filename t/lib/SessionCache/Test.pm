package SessionCache::Test;

# The integration-test harness for ngx_session_cache: real nginx, Redis and
# Postgres on free 127.0.0.1 ports, one set per test file, and a small HTTP
# client. Tests read like sentences:
#
#   my $redis = start_redis();
#   my $pg    = start_postgres();
#   my $nginx = start_nginx(http => $config);
#   $pg->add_session('tok1', 'u1', 3600);
#   my $r = get('/', cookie => 'session=tok1');
#   is($r->{status}, 200, 'a valid session is let through');
#   no_alerts($nginx);
#
# Every process the harness starts is recorded and stopped by its pid at
# exit (END), nginx first so backends see their clients go away. Nothing is
# ever killed by name. Temporary directories go away at exit unless
# TEST_KEEP=1.
#
# Environment: SESSION_CACHE_MODULE (the .so; default build/...), NGINX_BIN
# (default /usr/sbin/nginx), NGINX_PRELOAD (LD_PRELOAD for nginx only, for
# a sanitizer build of the module), PG_BINDIR, TEST_KEEP=1.

use strict;
use warnings;
use v5.36;

use Cwd qw(abs_path);
use Exporter qw(import);
use File::Basename qw(dirname);
use File::Copy ();
use File::Spec;
use File::Temp qw(tempdir);
use IO::Select;
use IO::Socket::INET;
use JSON::PP ();
use POSIX qw(:sys_wait_h);
use Time::HiRes qw(time sleep);
use Test::More ();

our @EXPORT = qw(
    promtool_ok
    start_redis start_postgres start_nginx new_nginx check_config
    get get_many send_many collect
    no_alerts wait_until free_port repo_dir module_path
    protected_site session_headers
);

my $OWNER_PID = $$;       # only this process stops what it started
my @STARTED;              # every Redis, Postgres and nginx object, in order
our $NGINX;               # the last nginx started: get() talks to it

# A test that is interrupted must still stop its servers: turn the signals
# into a normal exit so END runs. SIGPIPE must not kill a test that writes
# to a socket nginx already closed.
for my $sig (qw(INT TERM HUP)) {
    $SIG{$sig} = sub { exit 128 + 2 } if !$SIG{$sig} || $SIG{$sig} eq 'DEFAULT';
}
$SIG{PIPE} = 'IGNORE';

END {
    local $?;    # do not let waitpid() clobber the test's exit status
    if ($$ == $OWNER_PID) {
        for my $kind ('SessionCache::Test::Nginx', 'SessionCache::Test::Redis',
                      'SessionCache::Test::Postgres') {
            for my $obj (reverse grep { ref $_ eq $kind } @STARTED) {
                eval { $obj->_cleanup; 1 } or warn "cleanup: $@";
            }
        }
        @STARTED = ();
    }
}

# ---------------------------------------------------------------- helpers

sub repo_dir {
    return abs_path(File::Spec->catdir(dirname(__FILE__), '..', '..', '..'));
}

sub module_path {
    return $ENV{SESSION_CACHE_MODULE}
        // File::Spec->catfile(repo_dir(), 'build',
                               'ngx_http_session_cache_module.so');
}

sub _tempdir ($what) {
    my $dir = tempdir("sc-$what-XXXXXX", TMPDIR => 1,
                      CLEANUP => !$ENV{TEST_KEEP});
    # nginx workers (user nobody) and postgres must be able to walk in.
    chmod 0755, $dir or die "chmod $dir: $!";
    Test::More::diag("$what files in $dir") if $ENV{TEST_KEEP};
    return $dir;
}

sub _write_file ($path, $content) {
    open my $fh, '>', $path or die "write $path: $!";
    print {$fh} $content;
    close $fh or die "close $path: $!";
    chmod 0644, $path;
}

sub _slurp ($path) {
    open my $fh, '<', $path or return '';
    local $/;
    my $text = <$fh>;
    return $text // '';
}

sub _need_binary ($path, $what) {
    die "$what not found at $path: install it (CI installs it via .ci/run)\n"
        unless -x $path;
    return $path;
}

sub _which ($name) {
    for my $dir (split /:/, $ENV{PATH} // '', -1) {
        my $p = File::Spec->catfile($dir eq '' ? '.' : $dir, $name);
        return $p if -x $p && !-d $p;
    }
    for my $dir (qw(/usr/sbin /usr/bin /sbin /bin)) {
        return "$dir/$name" if -x "$dir/$name";
    }
    return undef;
}

sub _need_in_path ($name) {
    my $p = _which($name);
    die "$name not found in PATH: install it (CI installs it via .ci/run)\n"
        unless $p;
    return $p;
}

my %PORT_USED;

# A port nothing listens on right now: bind port 0, read it, close. The
# harness never hands out the same port twice in one process.
# A port below the kernel's ephemeral range (ip_local_port_range), found
# free by binding it: a port from bind(0) comes from that range, where
# every outgoing connection (redis-cli, psql, nginx's own) takes its local
# port, and one could take it before the server that was to listen on it.
sub free_port {
    my ($low) = split ' ', (SessionCache::Test::_slurp('/proc/sys/net/ipv4/ip_local_port_range') // '');
    my $top = ($low // 0) > 11000 ? $low - 1 : undef;
    for (1 .. 200) {
        my $s = IO::Socket::INET->new(
            LocalAddr => '127.0.0.1', Proto => 'tcp', Listen => 1,
            ReuseAddr => 1,
            LocalPort => $top ? 10000 + int(rand($top - 10000)) : 0,
        ) or next;
        my $port = $s->sockport;
        close $s;
        next if $PORT_USED{$port}++;
        return $port;
    }
    die "no free port found";
}

sub _port_accepts ($port) {
    my $s = IO::Socket::INET->new(
        PeerAddr => '127.0.0.1', PeerPort => $port, Proto => 'tcp',
        Timeout => 0.5,
    );
    return 0 unless $s;
    close $s;
    return 1;
}

# Poll $cond every $step seconds (20 ms) until it returns true; returns the
# condition's last value. $timeout is only how long to wait before giving
# up on an event that should come: it never decides a test that passes,
# so it is generous (10 s by default, never less than 5 s, times
# TEST_TIMEOUT_SCALE for a slow machine). On giving up it says so, with
# the caller's line and $what (what was awaited), in a diagnostic.
our $MIN_WAIT = 5;

sub wait_until ($cond, $timeout = 10, $step = 0.02, $what = undef) {
    $timeout = $MIN_WAIT if $timeout < $MIN_WAIT;
    $timeout *= $ENV{TEST_TIMEOUT_SCALE} if ($ENV{TEST_TIMEOUT_SCALE} // 0) > 0;
    my $deadline = time + $timeout;
    while (1) {
        my $v = $cond->();
        return $v if $v;
        if (time >= $deadline) {
            my ($file, $line) = (caller)[1, 2];
            Test::More::diag(sprintf 'wait_until (%s line %d): gave up after '
                . '%.1f s%s', $file, $line, $timeout,
                defined $what ? " waiting for $what" : '');
            return $v;
        }
        sleep $step;
    }
}

sub _postgres_ids {
    my @pw = getpwnam('postgres');
    die "running as root, but there is no 'postgres' user to run "
        . "PostgreSQL as\n" unless @pw;
    return @pw[2, 3];
}

# fork + exec, no shell. %o: cmd => [...], stdout => file, stderr => file
# (appended), env => {NAME => value|undef}, as_postgres => 1 (drop root to
# the postgres user). The child gets its own process group, so a Ctrl-C on
# the terminal reaches only the test, which then stops everything in order.
sub _spawn (%o) {
    my @cmd = @{ $o{cmd} };
    my ($uid, $gid) = ($o{as_postgres} && $> == 0) ? _postgres_ids() : ();
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        eval {
            POSIX::setpgid(0, 0);
            open STDIN, '<', '/dev/null' or die "stdin: $!";
            if ($o{stdout}) {
                open STDOUT, '>>', $o{stdout} or die "$o{stdout}: $!";
            }
            if ($o{stderr}) {
                open STDERR, '>>', $o{stderr} or die "$o{stderr}: $!";
            }
            _become(\%o, $uid, $gid);
            exec { $cmd[0] } @cmd or die "exec $cmd[0]: $!";
        };
        print STDERR "spawn failed: $@";
        POSIX::_exit(127);
    }
    return $pid;
}

# In a child about to exec: its environment, and the postgres user when
# $uid is set (running as root).
sub _become ($o, $uid, $gid) {
    for my $k (keys %{ $o->{env} // {} }) {
        if (defined $o->{env}{$k}) { $ENV{$k} = $o->{env}{$k} }
        else                      { delete $ENV{$k} }
    }
    return unless defined $uid;
    POSIX::setgid($gid) or die "setgid: $!";
    $) = "$gid $gid";
    POSIX::setuid($uid) or die "setuid: $!";
    $ENV{HOME} = (getpwuid($uid))[7];
    $ENV{USER} = $ENV{LOGNAME} = 'postgres';
}

# Run a command to completion, no shell; stdout and stderr merged.
# Returns (exit code, output). %o as for _spawn, plus timeout (seconds).
sub _run (%o) {
    my @cmd = @{ $o{cmd} };
    my ($uid, $gid) = ($o{as_postgres} && $> == 0) ? _postgres_ids() : ();
    pipe(my $r, my $w) or die "pipe: $!";
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        eval {
            close $r;
            open STDIN, '<', '/dev/null' or die "stdin: $!";
            open STDOUT, '>&', $w or die "stdout: $!";
            open STDERR, '>&', $w or die "stderr: $!";
            _become(\%o, $uid, $gid);
            exec { $cmd[0] } @cmd or die "exec $cmd[0]: $!";
        };
        print STDERR "run failed: $@";
        POSIX::_exit(127);
    }
    close $w;
    my $out = '';
    my $deadline = time + ($o{timeout} // 60);
    my $sel = IO::Select->new($r);
    while (1) {
        my $left = $deadline - time;
        if ($left <= 0) {
            kill 'KILL', $pid;
            waitpid $pid, 0;
            die "timed out after " . ($o{timeout} // 60) . "s: @cmd\n";
        }
        next unless $sel->can_read($left);
        my $n = sysread $r, my $buf, 65536;
        last unless $n;
        $out .= $buf;
    }
    close $r;
    waitpid $pid, 0;
    my $rc = $? & 127 ? 128 + ($? & 127) : $? >> 8;
    return ($rc, $out);
}

# Wait up to $timeout seconds for child $pid to exit; true if it did.
sub _reap ($pid, $timeout) {
    my $deadline = time + $timeout;
    while (1) {
        my $r = waitpid $pid, WNOHANG;
        return 1 if $r == $pid || $r == -1;
        return 0 if time >= $deadline;
        sleep 0.01;
    }
}

sub _alive ($pid) {
    return 0 unless $pid;
    my $r = waitpid $pid, WNOHANG;
    return 0 if $r == $pid || $r == -1;
    return 1;
}

# ------------------------------------------------------------ constructors

sub start_redis (%opt)    { SessionCache::Test::Redis->_new(%opt) }
sub start_postgres (%opt) { SessionCache::Test::Postgres->_new(%opt) }

sub new_nginx (%opt) { SessionCache::Test::Nginx->_new(%opt) }

sub start_nginx (%opt) {
    my $n = SessionCache::Test::Nginx->_new(%opt);
    $n->start(%opt);
    return $n;
}

# check_config(http => ..., main => ..., env => {...}): nginx -t in a
# throwaway prefix; returns (exit code, output).
sub check_config (%opt) {
    return SessionCache::Test::Nginx->_new(%opt)->check_config(%opt);
}

# ------------------------------------------------------- nginx configs

# The add_header lines that expose the module's variables.
sub session_headers {
    return join '',
        "add_header X-Session-Status \$session_cache_status always;\n",
        "add_header X-Session-User \$session_user_id always;\n",
        "add_header X-Session-Expires \$session_expires_at always;\n";
}

# The http{} text most tests use: the backends, a protected location /
# serving %%HTML%% with the variables as headers, and an unprotected
# /public.html.
#   redis    => 'redis://127.0.0.1:P/0 pool=2 timeout=200ms' (omitted if undef)
#   postgres => '"host=..." pool=2'                           (omitted if undef)
#   http     => more http-level directives
#   protect  => more lines inside location /
#   server   => more server-level lines (extra locations)
sub protected_site (%o) {
    my $h = session_headers();
    my $t = '';
    $t .= "session_cache_redis $o{redis};\n" if defined $o{redis};
    $t .= "session_cache_postgres $o{postgres};\n" if defined $o{postgres};
    $t .= ($o{http} // '') . "\n";
    $t .= <<~"NGX";
        server {
            listen 127.0.0.1:%%PORT%%;
            location / {
                root %%HTML%%;
                auth_session \$cookie_session;
                $h
                @{[ $o{protect} // '' ]}
            }
            location = /public.html {
                root %%HTML%%;
            }
            @{[ $o{server} // '' ]}
        }
        NGX
    return $t;
}

# ---------------------------------------------------------------- HTTP

# get($path, cookie => 'session=abc', headers => {...}, port => P,
#     method => 'GET', timeout => 10)
# -> {status, headers => {lowercased => value}, body, ms}
sub get ($path, %opt) {
    my ($res) = collect(_send($path, %opt));
    return $res;
}

# get_many(N, sub { my $i = shift; return ($path, %opts) }): N requests at
# once (all connected and written before any is read); list of responses.
sub get_many ($n, $gen) {
    return collect(send_many($n, $gen));
}

# send_many(N, $gen): the first half of get_many. The requests are written
# and left waiting; collect(@pending) reads them.
sub send_many ($n, $gen) {
    return map { _send($gen->($_)) } 0 .. $n - 1;
}

sub _send ($path, %opt) {
    my $port = $opt{port} // ($NGINX ? $NGINX->port : undef)
        // die "get(): no nginx started and no port given";
    my $method = $opt{method} // 'GET';
    my $req = "$method $path HTTP/1.1\r\n"
            . "Host: 127.0.0.1:$port\r\n"
            . "Connection: close\r\n";
    $req .= "Cookie: $opt{cookie}\r\n" if defined $opt{cookie};
    my $h = $opt{headers} // {};
    $req .= "$_: $h->{$_}\r\n" for sort keys %$h;
    $req .= "\r\n";

    my $t0 = time;
    my $sock = IO::Socket::INET->new(
        PeerAddr => '127.0.0.1', PeerPort => $port, Proto => 'tcp',
        Timeout => $opt{timeout} // 10,
    ) or return { t0 => $t0, error => "connect to $port: $!" };
    $sock->autoflush(1);
    my $off = 0;
    while ($off < length $req) {
        my $n = syswrite $sock, $req, length($req) - $off, $off;
        return { t0 => $t0, error => "write: $!" } unless defined $n;
        $off += $n;
    }
    $sock->blocking(0);
    return { sock => $sock, t0 => $t0, buf => '',
             timeout => $opt{timeout} // 10 };
}

# Read every pending request to EOF (each with its own timeout, 10 s by
# default). A request that failed or timed out comes back with status 0
# and an `error`.
sub collect (@pending) {
    my %active = map { ("$_->{sock}" => $_) } grep { $_->{sock} } @pending;
    my $sel = IO::Select->new(map { $_->{sock} } values %active);
    my $done = sub ($p, $error = undef) {
        $p->{t1} = time;
        $p->{error} = $error if $error;
        $sel->remove($p->{sock});
        delete $active{"$p->{sock}"};
        close $p->{sock};
    };
    while (%active) {
        my $now = time;
        my $next;
        for my $p (values %active) {
            my $deadline = $p->{t0} + $p->{timeout};
            if ($deadline <= $now) {
                $done->($p, "timed out after $p->{timeout}s");
                next;
            }
            $next = $deadline if !defined $next || $deadline < $next;
        }
        last unless %active;
        for my $s ($sel->can_read($next - $now)) {
            my $p = $active{"$s"} or next;
            my $n = sysread $s, my $buf, 65536;
            if (!defined $n) {
                next if $!{EAGAIN} || $!{EINTR};
                $done->($p, "read: $!");
            } elsif ($n == 0) {
                $done->($p);
            } else {
                $p->{buf} .= $buf;
            }
        }
    }
    return map { _response($_) } @pending;
}

sub _response ($p) {
    my $ms = (($p->{t1} // time) - $p->{t0}) * 1000;
    my %res = (status => 0, headers => {}, body => '', ms => $ms,
               t0 => $p->{t0}, t1 => $p->{t1} // time,
               raw => $p->{buf} // '');
    my $buf = $p->{buf} // '';
    my ($head, $body) = split /\r\n\r\n/, $buf, 2;
    if (defined $head && $head =~ m{^HTTP/\d\.\d (\d{3})[^\r\n]*}) {
        $res{status} = $1;
        ($res{status_line}) = $head =~ /^([^\r\n]*)/;
        for my $line (split /\r\n/, $head) {
            next unless $line =~ /^([^:\s]+):\s*(.*?)\s*$/;
            my $name = lc $1;
            $res{headers}{$name} = exists $res{headers}{$name}
                ? "$res{headers}{$name}, $2" : $2;
        }
        $body //= '';
        $body = _dechunk($body)
            if ($res{headers}{'transfer-encoding'} // '') =~ /chunked/i;
        $res{body} = $body;
    } elsif (!$p->{error}) {
        $p->{error} = 'no HTTP response';
    }
    $res{error} = $p->{error} if $p->{error};
    return \%res;
}

sub _dechunk ($b) {
    my $out = '';
    while ($b =~ s/^([0-9a-fA-F]+)[^\r\n]*\r\n//) {
        my $len = hex $1;
        last if $len == 0;
        $out .= substr($b, 0, $len, '');
        $b =~ s/^\r\n//;
    }
    return $out;
}

# ----------------------------------------------------------- assertions

# Stops $nginx gracefully (so shutdown-time alerts such as "open socket
# left in connection" are caught), then checks its error log for alerts,
# emergencies, critical errors and sanitizer reports.
sub no_alerts ($nginx, $name = 'no alerts, crits or sanitizer reports in the error log') {
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    return _alerts($nginx, undef, $name);
}

# no_alerts for a test that provokes alerts on purpose: every [alert],
# [emerg] or [crit] line must match $expected, at least one must, and no
# sanitizer report may appear. Call it as
# SessionCache::Test::only_alerts($nginx, qr/.../).
sub only_alerts ($nginx, $expected, $name = 'only the expected alerts, no sanitizer reports') {
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    return _alerts($nginx, $expected, $name);
}

# promtool check metrics accepts a Prometheus exposition, silently.
sub promtool_ok ($body, $what) {
    my $dir = tempdir(CLEANUP => 1, TMPDIR => 1);
    open my $fh, '>', "$dir/metrics" or die $!;
    print {$fh} $body;
    close $fh;
    my $rc = system('sh', '-c', 'promtool check metrics < "$1" > "$2" 2>&1',
                    'sh', "$dir/metrics", "$dir/out");
    my $out = do { local (@ARGV, $/) = "$dir/out"; <> } // '';
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    Test::More::ok($rc == 0 && $out !~ /\S/, "$what: promtool check metrics accepts it")
        or Test::More::diag "rc=$rc: $out";
}

sub _alerts ($nginx, $expected, $name) {
    my @problems;
    if ($nginx->running) {
        push @problems, 'nginx did not exit within 10s of SIGQUIT'
            unless $nginx->stop;
    }
    my $seen = 0;
    for my $line (split /\n/, $nginx->error_log) {
        if ($line =~ /\[(?:alert|emerg|crit)\]/) {
            if (defined $expected && $line =~ $expected) { $seen++ }
            else { push @problems, $line }
        }
        push @problems, $line
            if $line =~ /AddressSanitizer|LeakSanitizer|runtime error:/;
    }
    push @problems, "no alert matching $expected"
        if defined $expected && !$seen;
    # Sanitizer reports may also land on nginx's stderr.
    my $stderr = _slurp($nginx->dir . '/nginx.stderr');
    push @problems, grep { /AddressSanitizer|LeakSanitizer|runtime error:/ }
        split /\n/, $stderr;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my $ok = Test::More::ok(!@problems, $name);
    Test::More::diag(join "\n", @problems[0 .. ($#problems < 19 ? $#problems : 19)])
        if @problems;
    return $ok;
}

# "STATUS X-Session-Status X-Session-User" of a response (a missing header
# as ''); check_session(TOKEN): that of GET / with the cookie session=TOKEN.
push @EXPORT, qw(session_answer check_session);
sub session_answer ($r) {
    return join ' ', $r->{status}, $r->{headers}{'x-session-status'} // '',
                     $r->{headers}{'x-session-user'} // '';
}
sub check_session ($token) {
    return session_answer(get('/', cookie => "session=$token"));
}

# start_redis_cluster(masters => 3, requirepass => PW): a Redis Cluster of
# masters without replicas on loopback (redis-cli --cluster create), ready
# when every node says cluster_state:ok. See SessionCache::Test::RedisCluster.
sub start_redis_cluster (%opt) { SessionCache::Test::RedisCluster->_new(%opt) }

# ------------------------------------------------- revocation (t/48, t/51-54)

# protected_site() for revocation's tests: L1 (tracking=on by default) of
# l1 => SIZE (ttl 60s), session_cache_revocation on channel
# session_cache_revoke unless revocation => 0, the layer in
# X-Session-Layer, /health. redis => $redis, pg => $pg with
# redis_opts => and pg_opts => (pool, timeouts) after their URL.
sub revocation_site (%o) {
    return protected_site(
        redis    => $o{redis}->url . " $o{redis_opts}",
        postgres => '"' . $o{pg}->dsn . "\" $o{pg_opts}",
        http     => "session_cache_l1 size=$o{l1} ttl=60s;"
                  . (($o{revocation} // 1)
                     ? "\nsession_cache_revocation channel=session_cache_revoke;"
                     : '') . ($o{http} // ''),
        protect  => 'add_header X-Session-Layer $session_cache_layer always;',
        server   => 'location = /health { session_cache_health; }');
}

# Both listeners up, as $nginx's health document says: L1 armed and the
# revocation listener listening.
sub revocation_listening ($nginx) {
    my $d = ($nginx->health)[1] // {};
    return $d->{l1}{armed} && $d->{revocation}{listening};
}

# One request for token $t on $NGINX, its answer recorded in
# $answers->{$t}: {t0, t1, status, layer (X-Session-Layer), by => 'test'}.
sub probe_layer ($answers, $t) {
    my $r = get('/', cookie => "session=$t");
    my $a = { t0 => $r->{t0}, t1 => $r->{t1}, status => $r->{status},
              layer => $r->{headers}{'x-session-layer'} // '-', by => 'test' };
    push @{ $answers->{$t} }, $a;
    return $a;
}

# Revocation's promises, token by token, over the answers recorded for
# @tokens (probe_layer's, and the load's with by => 'load'), $revoked->{$t}
# the time its revocation was sent: only 200 or 401; refused only once
# revoked (a request sent before and answered after may be answered
# either way); never served after its first 401. Returns the broken
# promises (lines for diag), the answers checked after a first 401 and
# those before a revocation.
sub revocation_promises ($answers, $revoked, @tokens) {
    my (@failed, $after_401, $before_revocation);
    ($after_401, $before_revocation) = (0, 0);
    for my $t (@tokens) {
        my @a = @{ $answers->{$t} // [] };
        my $rev = $revoked->{$t};
        for my $a (grep { $_->{status} != 200 && $_->{status} != 401 } @a) {
            push @failed, "$t: status $a->{status} ($a->{by})";
        }
        for my $a (grep { $_->{t1} < ($rev // 9e9) } @a) {
            $before_revocation++;
            push @failed, sprintf "%s: %d before its revocation (%s, layer %s)",
                $t, $a->{status}, $a->{by}, $a->{layer} if $a->{status} != 200;
        }
        my ($first) = sort { $a <=> $b } map { $_->{t1} }
                      grep { $_->{status} == 401 } @a;
        next unless defined $first;
        for my $a (grep { $_->{t0} > $first } @a) {
            $after_401++;
            push @failed, sprintf "%s: %d (%s, layer %s) %.1f ms after its "
                . "first 401", $t, $a->{status}, $a->{by}, $a->{layer},
                ($a->{t0} - $first) * 1000
                if $a->{status} != 401;
        }
    }
    return (\@failed, $after_401, $before_revocation);
}


# l1_settled($nginx, $redis, prefix => 'session:'): a barrier for the L1
# listener of $nginx (tracking=on). Once it returns true, every
# invalidation Redis sent before the call has been processed. It
# overwrites 2,000 keys <prefix>l1-barrier-N in one command (their
# invalidations follow every earlier one on the listener's connection)
# and waits until the health document's l1.invalidations grew by 2,000:
# the health probes' own keys add one or two per document, far fewer
# meanwhile, so that count is only reached once the barrier itself has
# been read, hence everything before it. For a test that needs an L1
# entry to stay: the module's own cache fill (SET after a Postgres
# answer) is broadcast and drops the entry it filled, possibly after a
# request was already answered from that entry.
sub l1_settled ($nginx, $redis, %o) {
    my $prefix = $o{prefix} // 'session:';
    my $n = 2000;
    my $count = sub { ($nginx->health)[1]{l1}{invalidations} // 0 };
    my $before = $count->();
    $redis->cli('EVAL', "for i=1,$n do redis.call('SET',ARGV[1]..i,'x') end",
                0, "${prefix}l1-barrier-");
    return wait_until(sub { $count->() >= $before + $n }, 10, 0.02,
                      'the L1 listener to read the barrier\'s invalidations');
}

# ====================================================================
package SessionCache::Test::Redis;

use v5.36;
use POSIX ();
use Time::HiRes qw(time);
use IO::Socket::INET;

sub _new ($class, %opt) {
    my $self = bless {
        server   => SessionCache::Test::_need_in_path('redis-server'),
        cli_bin  => SessionCache::Test::_need_in_path('redis-cli'),
        port     => SessionCache::Test::free_port(),
        dir      => SessionCache::Test::_tempdir('redis'),
        password => $opt{requirepass},
        tls      => $opt{tls},    # {cert, key, ca}: TLS only, no plain port
        unix     => $opt{unixsocket}, # also listen on dir/redis.sock
        args     => $opt{args},   # more redis-server arguments
        owner    => $$,
    }, $class;
    push @STARTED, $self;
    $self->start;
    return $self;
}

sub port     ($self) { $self->{port} }
sub pid      ($self) { $self->{pid} }
sub password ($self) { $self->{password} }
sub dir      ($self) { $self->{dir} }
sub socket   ($self) { "$self->{dir}/redis.sock" }

# redis://[:password@]127.0.0.1:PORT/0, for session_cache_redis
sub url ($self, %opt) {
    my $pw = exists $opt{password} ? $opt{password} : $self->{password};
    my $auth = defined $pw ? ":$pw\@" : '';
    my $scheme = $self->{tls} ? 'rediss' : 'redis';
    my $host = $opt{host} // '127.0.0.1';
    return "$scheme://${auth}$host:$self->{port}/" . ($opt{db} // 0);
}

sub start ($self) {
    die "redis on port $self->{port} already running\n" if $self->running;
    my @cmd = ($self->{server},
        '--port', $self->{port}, '--bind', '127.0.0.1',
        '--save', '', '--appendonly', 'no', '--dir', $self->{dir},
        '--daemonize', 'no', '--logfile', '');
    push @cmd, '--requirepass', $self->{password}
        if defined $self->{password};
    push @cmd, '--unixsocket', $self->socket, '--unixsocketperm', '777'
        if $self->{unix};
    push @cmd, @{ $self->{args} // [] };
    if (my $t = $self->{tls}) {
        $cmd[2] = 0;    # --port 0: no plain TCP
        push @cmd, '--tls-port', $self->{port},
            '--tls-cert-file', $t->{cert}, '--tls-key-file', $t->{key},
            '--tls-ca-cert-file', $t->{ca}, '--tls-auth-clients', 'no';
    }
    my $log = "$self->{dir}/redis.log";
    $self->{pid} = SessionCache::Test::_spawn(
        cmd => \@cmd, stdout => $log, stderr => $log);
    my $up = SessionCache::Test::wait_until(sub {
        die "redis-server exited at start:\n"
            . SessionCache::Test::_slurp($log) . "\n"
            unless SessionCache::Test::_alive($self->{pid});
        $self->_ping;
    }, 10);
    die "redis on port $self->{port} did not answer PING within 10s\n"
        unless $up;
    return $self;
}

# Raw RESP PING: +PONG, or -NOAUTH when a password is required; both mean
# the server is up.
sub _ping ($self) {
    return $self->cli('PING') =~ /PONG|NOAUTH/ ? 1 : 0 if $self->{tls};
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
        PeerPort => $self->{port}, Proto => 'tcp', Timeout => 0.5)
        or return 0;
    print {$s} "PING\r\n";
    my $line = '';
    my $sel = IO::Select->new($s);
    return 0 unless $sel->can_read(0.5);
    sysread $s, $line, 256;
    close $s;
    return $line =~ /^(\+PONG|-NOAUTH)/ ? 1 : 0;
}

sub running ($self) { SessionCache::Test::_alive($self->{pid}) }

# redis-cli -p PORT [-a PASS --no-auth-warning] @args; trimmed output.
sub cli ($self, @args) {
    my @cmd = ($self->{cli_bin}, '-h', '127.0.0.1', '-p', $self->{port});
    push @cmd, '-a', $self->{password}, '--no-auth-warning'
        if defined $self->{password};
    push @cmd, '--tls', '--cacert', $self->{tls}{ca} if $self->{tls};
    my ($rc, $out) = SessionCache::Test::_run(cmd => [@cmd, @args],
                                              timeout => 10);
    $out =~ s/^\s+|\s+$//g;
    return $out;
}

# {command => calls} from INFO commandstats, leaving out the commands the
# harness itself sends (info, ping, client, config): if nginx talked to
# Redis, this changes.
sub commandstats ($self) {
    my %calls;
    for (split /\n/, $self->cli('INFO', 'commandstats')) {
        next unless /^cmdstat_([^:]+):calls=(\d+)/;
        next if $1 =~ /^(info|ping|client|config)/;
        $calls{$1} = $2;
    }
    return \%calls;
}

# Connections to the server other than the one this call uses.
sub client_count ($self) {
    my @lines = grep { /\S/ } split /\n/, $self->cli('CLIENT', 'LIST');
    return @lines - 1;
}

# GET key ('' when absent).
sub get_key ($self, $key) { $self->cli('GET', $key) }
sub ttl ($self, $key)     { $self->cli('TTL', $key) }
sub key_exists ($self, $key){ $self->cli('EXISTS', $key) }

# How many times Redis ran $command (lower case, e.g. 'get', 'set'),
# from INFO commandstats.
sub calls ($self, $command) { $self->commandstats->{lc $command} // 0 }

# Poll until $key exists (giving up after $timeout s); its value, or undef.
sub wait_for_key ($self, $key, $timeout = 10) {
    return SessionCache::Test::wait_until(
        sub { $self->key_exists($key) ? 1 : 0 }, $timeout, 0.02,
        "Redis key $key") ? $self->get_key($key) : undef;
}

sub stop ($self) {
    return 1 unless $self->running;
    CORE::kill 'CONT', $self->{pid};    # a paused server cannot shut down
    CORE::kill 'TERM', $self->{pid};
    return 1 if SessionCache::Test::_reap($self->{pid}, 10);
    CORE::kill 'KILL', $self->{pid};
    SessionCache::Test::_reap($self->{pid}, 5);
    return 0;
}

sub kill ($self) {
    return unless $self->running;
    CORE::kill 'KILL', $self->{pid};
    SessionCache::Test::_reap($self->{pid}, 5);
}

sub pause  ($self) { CORE::kill 'STOP', $self->{pid} }
sub resume ($self) { CORE::kill 'CONT', $self->{pid} }

sub _cleanup ($self) {
    return unless $self->{owner} == $$;
    $self->stop;
}

sub DESTROY ($self) {
    local ($@, $!, $?);
    $self->_cleanup if ${^GLOBAL_PHASE} ne 'DESTRUCT';
}

# ====================================================================
package SessionCache::Test::Postgres;

use v5.36;
use POSIX ();
use Time::HiRes qw(time);

our $PASSWORD = 'pg-S3cret-pw';

sub _bindir {
    return $ENV{PG_BINDIR} if $ENV{PG_BINDIR};
    my @dirs = sort { ($b =~ /(\d+)/)[0] <=> ($a =~ /(\d+)/)[0] }
               grep { -x "$_/postgres" } glob '/usr/lib/postgresql/*/bin';
    return $dirs[0] if @dirs;
    my $pgc = SessionCache::Test::_which('pg_config');
    if ($pgc) {
        my ($rc, $out) = SessionCache::Test::_run(cmd => [$pgc, '--bindir']);
        chomp $out;
        return $out if $rc == 0 && -x "$out/postgres";
    }
    die "PostgreSQL server binaries (initdb, postgres, pg_ctl) not found "
        . "under /usr/lib/postgresql/*/bin: install postgresql (CI installs "
        . "it via .ci/run) or set PG_BINDIR\n";
}

sub _new ($class, %opt) {
    my $bin = _bindir();
    my $self = bless {
        bin   => $bin,
        psql  => SessionCache::Test::_need_in_path('psql'),
        port  => SessionCache::Test::free_port(),
        dir   => SessionCache::Test::_tempdir('pg'),
        owner => $$,
    }, $class;
    SessionCache::Test::_need_binary("$bin/$_", "PostgreSQL $_")
        for qw(initdb postgres pg_ctl pg_isready);
    $self->_make_dirs;

    my ($rc, $out) = SessionCache::Test::_run(as_postgres => 1, timeout => 60,
        cmd => ["$bin/initdb", '-D', $self->{data}, '-U', 'postgres',
                '--auth-local=trust', '--auth-host=scram-sha-256',
                '--no-locale', '-E', 'UTF8', '--no-sync']);
    die "initdb failed ($rc):\n$out\n" if $rc;

    $self->start;
    $self->psql("CREATE DATABASE sessions", 'postgres');
    $self->psql("CREATE ROLE nginx LOGIN PASSWORD '$PASSWORD'", 'postgres');
    $self->psql(<<~'SQL');
        CREATE SCHEMA platform;
        CREATE TABLE platform.user_sessions (
          token      text PRIMARY KEY,
          user_id    text NOT NULL,
          expires_at timestamptz NOT NULL,
          revoked_at timestamptz
        );
        GRANT USAGE ON SCHEMA platform TO nginx;
        GRANT SELECT ON platform.user_sessions TO nginx;
        SQL
    return $self;
}

sub port     ($self) { $self->{port} }
sub pid      ($self) { $self->{pid} }
sub dir      ($self) { $self->{dir} }
sub password ($self) { $PASSWORD }

sub dsn ($self) {
    return "host=127.0.0.1 port=$self->{port} dbname=sessions "
         . "user=nginx password=$PASSWORD";
}

sub running ($self) { SessionCache::Test::_alive($self->{pid}) }

sub start ($self) {
    die "postgres on port $self->{port} already running\n" if $self->running;
    $self->{pid} = SessionCache::Test::_spawn(
        as_postgres => 1,
        stdout => $self->{logfile}, stderr => $self->{logfile},
        cmd => ["$self->{bin}/postgres", '-D', $self->{data},
                '-p', $self->{port}, '-k', $self->{sock},
                '-c', 'listen_addresses=127.0.0.1',
                '-c', 'fsync=off',
                '-c', 'log_statement=all',
                '-c', 'logging_collector=off',
                '-c', 'shared_buffers=16MB',
                # user@db on every line, so query_count() can tell the
                # module's queries from the harness's own.
                '-c', 'log_line_prefix=%m [%p] %u@%d ']);
    my $isready = "$self->{bin}/pg_isready";
    my $up = SessionCache::Test::wait_until(sub {
        die "postgres exited at start:\n" . $self->log . "\n"
            unless SessionCache::Test::_alive($self->{pid});
        my ($rc) = SessionCache::Test::_run(cmd => [$isready, '-q',
            '-h', '127.0.0.1', '-p', $self->{port}, '-t', '1']);
        $rc == 0;
    }, 20, 0.1);
    die "postgres on port $self->{port} not ready within 20s:\n"
        . $self->log . "\n" unless $up;
    return $self;
}

# The postmaster and its children (the backends serving connections).
sub _family ($self) {
    my $master = $self->{pid} or return ();
    my @pids = ($master);
    opendir my $dh, '/proc' or die "/proc: $!";
    for my $pid (grep { /^\d+$/ } readdir $dh) {
        my $stat = SessionCache::Test::_slurp("/proc/$pid/stat") or next;
        push @pids, $pid if $stat =~ /\)\s+\S+\s+(\d+)/ && $1 == $master;
    }
    return @pids;
}

# Hang the whole server (SIGSTOP to the postmaster and every backend, by
# pid): connections stay open, nothing answers.
sub pause ($self) {
    $self->{paused} = [ $self->_family ];
    kill 'STOP', @{ $self->{paused} };
}

sub resume ($self) {
    kill 'CONT', @{ delete $self->{paused} // [] };
}

# pg_ctl stop -m fast, as the postgres user.
sub stop ($self) {
    return 1 unless $self->running;
    $self->resume;
    my ($rc, $out) = SessionCache::Test::_run(as_postgres => 1, timeout => 30,
        cmd => ["$self->{bin}/pg_ctl", 'stop', '-D', $self->{data},
                '-m', 'fast', '-w', '-t', '20']);
    return 1 if SessionCache::Test::_reap($self->{pid}, 10);
    warn "pg_ctl stop ($rc): $out";
    kill 'QUIT', $self->{pid};    # immediate shutdown
    SessionCache::Test::_reap($self->{pid}, 5) and return 0;
    kill 'KILL', $self->{pid};
    SessionCache::Test::_reap($self->{pid}, 5);
    return 0;
}

# psql as the superuser over the unix socket; trimmed output (unaligned,
# tuples only, fields separated by '|'); dies on error.
sub psql ($self, $sql, $db = 'sessions') {
    my ($rc, $out) = SessionCache::Test::_run(timeout => 30,
        cmd => [$self->{psql}, '-X', '-q', '-A', '-t',
                '-v', 'ON_ERROR_STOP=1',
                '-h', $self->{sock}, '-p', $self->{port},
                '-U', 'postgres', '-d', $db, '-c', $sql]);
    die "psql failed ($rc): $out\nSQL: $sql\n" if $rc;
    $out =~ s/^\s+|\s+$//g;
    return $out;
}

sub quote ($self, $s) {
    $s =~ s/'/''/g;
    return "'$s'";
}

# add_session(token, user_id, expires_in_seconds, revoked => 0/1): insert
# or replace a row; returns expires_at as unix seconds.
sub add_session ($self, $token, $user, $expires_in, %opt) {
    my ($t, $u) = ($self->quote($token), $self->quote($user));
    my $secs = int $expires_in;
    my $revoked = $opt{revoked} ? 'now()' : 'NULL';
    return $self->psql(<<~"SQL");
        INSERT INTO platform.user_sessions AS s
               (token, user_id, expires_at, revoked_at)
        VALUES ($t, $u, now() + interval '$secs seconds', $revoked)
        ON CONFLICT (token) DO UPDATE
           SET user_id = EXCLUDED.user_id, expires_at = EXCLUDED.expires_at,
               revoked_at = EXCLUDED.revoked_at
        RETURNING extract(epoch FROM expires_at)::bigint
        SQL
}

sub revoke_session ($self, $token) {
    $self->psql("UPDATE platform.user_sessions SET revoked_at = now() "
              . "WHERE token = " . $self->quote($token));
}

sub log ($self) { SessionCache::Test::_slurp($self->{logfile}) }

# The server log split into entries (a statement may span lines).
sub _log_entries ($self) {
    my @entries;
    for my $line (split /\n/, $self->log) {
        if ($line =~ /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? \S+ \[\d+\] /
            || !@entries) {
            push @entries, $line;
        } else {
            $entries[-1] .= "\n$line";
        }
    }
    return @entries;
}

# How many times the nginx role executed a statement matching $pattern
# (default: the session table). Counts `execute <name>: ...` (extended
# protocol, prepared or unnamed) and `statement: ...` (simple protocol).
sub query_count ($self, $pattern = qr/user_sessions/) {
    return scalar grep {
        /^\S+ \S+ \S+ \[\d+\] nginx@\S* LOG:\s+(?:execute [^:]*|statement): (.*)/s
            && $1 =~ $pattern
    } $self->_log_entries;
}

# How many times the nginx role executed a statement for $token: an
# `execute` whose parameters (the DETAIL entry that follows it from the
# same backend) hold $1 = '$token', or a simple-protocol statement that
# quotes it. Postgres writes the entry before it runs the statement, so a
# query whose answer nginx has is already counted.
sub queries_for ($self, $token) {
    my $quoted = $self->quote($token);
    my (%execute, $n);
    for ($self->_log_entries) {
        my ($pid, $who, $msg) =
            /^\S+ \S+ \S+ \[(\d+)\] (\S*) (?:LOG|DETAIL):\s+(.*)/s or next;
        if ($who !~ /^nginx@/) {
            next;
        } elsif ($msg =~ /^execute [^:]*:/) {
            $execute{$pid} = 1;
        } elsif ($msg =~ /^parameters: \$1 = \Q$quoted\E(?:,|$)/
                 && delete $execute{$pid}) {
            $n++;
        } elsif ($msg =~ /^statement: .*\Q$quoted\E/s) {
            $n++;
        } else {
            delete $execute{$pid} unless $msg =~ /^parameters:/;
        }
    }
    return $n // 0;
}

sub _cleanup ($self) {
    return unless $self->{owner} == $$;
    return unless $self->running;
    $self->resume;
    # Fast shutdown straight from the pid: SIGINT. (SIGTERM would wait for
    # clients to leave.)
    kill 'INT', $self->{pid};
    return if SessionCache::Test::_reap($self->{pid}, 15);
    kill 'QUIT', $self->{pid};
    return if SessionCache::Test::_reap($self->{pid}, 5);
    kill 'KILL', $self->{pid};
    SessionCache::Test::_reap($self->{pid}, 5);
}

sub DESTROY ($self) {
    local ($@, $!, $?);
    $self->_cleanup if ${^GLOBAL_PHASE} ne 'DESTRUCT';
}

# ---- primary and standbys (issue 15) ---------------------------------

# The data and socket directories under dir (owned by the postgres user
# when running as root) and the log file's name; the server recorded to be
# stopped at exit.
sub _make_dirs ($self) {
    $self->{data} = "$self->{dir}/data";
    $self->{sock} = "$self->{dir}/sock";
    $self->{logfile} = "$self->{dir}/postgres.log";
    mkdir $self->{data}, 0700 or die "mkdir: $!";
    mkdir $self->{sock}, 0755 or die "mkdir: $!";
    if ($> == 0) {
        my ($uid, $gid) = SessionCache::Test::_postgres_ids();
        chown $uid, $gid, $self->{data}, $self->{sock}
            or die "chown to postgres: $!";
    }
    push @STARTED, $self;
}

# A streaming standby of this server: pg_basebackup -R over the unix
# socket, started on its own port, returned once the primary sees it
# streaming. conf => {name => value} goes to its postgresql.auto.conf
# (e.g. recovery_min_apply_delay => '2s').
sub start_standby ($self, %opt) {
    my $sb = bless {
        bin   => $self->{bin},
        psql  => $self->{psql},
        port  => SessionCache::Test::free_port(),
        dir   => SessionCache::Test::_tempdir('pg-standby'),
        owner => $$,
    }, ref $self;
    $sb->_make_dirs;
    my ($rc, $out) = SessionCache::Test::_run(as_postgres => 1, timeout => 60,
        cmd => ["$self->{bin}/pg_basebackup", '-h', $self->{sock},
                '-p', $self->{port}, '-U', 'postgres', '-D', $sb->{data},
                '-R', '-X', 'stream', '-c', 'fast', '--no-sync']);
    die "pg_basebackup failed ($rc):\n$out\n" if $rc;
    my %conf = %{ $opt{conf} // {} };
    if (%conf) {
        open my $fh, '>>', "$sb->{data}/postgresql.auto.conf"
            or die "postgresql.auto.conf: $!";
        print {$fh} "$_ = '$conf{$_}'\n" for sort keys %conf;
        close $fh;
    }
    $sb->start;
    $self->wait_streaming($sb);
    return $sb;
}

# Wait until $standby streams from this server (pg_stat_replication).
sub wait_streaming ($self, $standby, $timeout = 20) {
    SessionCache::Test::wait_until(sub {
        $self->psql("SELECT count(*) FROM pg_stat_replication "
                  . "WHERE state = 'streaming'", 'postgres') >= 1
    }, $timeout, 0.05) or die "standby on port $standby->{port} never "
                            . "streamed from port $self->{port}\n";
}

# 1 while the server replays as a standby (pg_is_in_recovery()).
sub in_recovery ($self) {
    return $self->psql('SELECT pg_is_in_recovery()', 'postgres') eq 't';
}

# Wait until this standby replayed everything $primary wrote so far.
sub wait_replayed ($self, $primary, $timeout = 20) {
    my $lsn = $primary->psql('SELECT pg_current_wal_lsn()', 'postgres');
    SessionCache::Test::wait_until(sub {
        $self->psql("SELECT pg_last_wal_replay_lsn() >= '$lsn'::pg_lsn",
                    'postgres') eq 't'
    }, $timeout, 0.02) or die "port $self->{port} did not replay $lsn\n";
}

# pg_ctl promote -w: returns once the server accepts writes.
sub promote ($self) {
    my ($rc, $out) = SessionCache::Test::_run(as_postgres => 1, timeout => 60,
        cmd => ["$self->{bin}/pg_ctl", 'promote', '-D', $self->{data},
                '-w', '-t', '30']);
    die "pg_ctl promote failed ($rc): $out\n" if $rc;
    return $self;
}

# ssl = on with a server certificate: cert and key files (PEM) copied into
# the data directory (the key kept private, as postgres requires), then
# the configuration reloaded; returns once a TLS connection works.
sub enable_ssl ($self, $cert, $key) {
    for (['server.crt', $cert, 0644], ['server.key', $key, 0600]) {
        my ($name, $from, $mode) = @$_;
        my $to = "$self->{data}/$name";
        File::Copy::copy($from, $to) or die "copy $from: $!";
        chmod $mode, $to;
        if ($> == 0) {
            my ($uid, $gid) = SessionCache::Test::_postgres_ids();
            chown $uid, $gid, $to or die "chown $to: $!";
        }
    }
    $self->psql("ALTER SYSTEM SET ssl = on", 'postgres');
    $self->psql("SELECT pg_reload_conf()", 'postgres');
    SessionCache::Test::wait_until(sub {
        $self->psql('SHOW ssl', 'postgres') eq 'on'
    }, 10, 0.05) or die "ssl did not come on\n";
    return $self;
}

# contrib/revocation.sql installed: the trigger that sends revoked tokens.
sub install_revocation ($self) {
    $self->psql(SessionCache::Test::_slurp(
        SessionCache::Test::repo_dir() . '/contrib/revocation.sql'));
    return $self;
}

# A conninfo naming several servers in order (Postgres objects or bare
# ports, all on 127.0.0.1) with the test's database, user and password,
# then `name=value` for each %param (e.g. target_session_attrs => 'any').
sub hosts_dsn ($self, $servers, %param) {
    my @ports = map { ref $_ ? $_->port : $_ } @$servers;
    return 'host=' . join(',', ('127.0.0.1') x @ports)
         . ' port=' . join(',', @ports)
         . " dbname=sessions user=nginx password=$PASSWORD"
         . join('', map { " $_=$param{$_}" } sort keys %param);
}

# ====================================================================
package SessionCache::Test::Nginx;

use v5.36;
use POSIX ();
use Time::HiRes qw(time);

sub _new ($class, %opt) {
    my $bin = $ENV{NGINX_BIN} // '/usr/sbin/nginx';
    SessionCache::Test::_need_binary($bin, 'nginx');
    my $self = bless {
        bin     => $bin,
        port    => SessionCache::Test::free_port(),
        dir     => SessionCache::Test::_tempdir('nginx'),
        workers => $opt{workers} // 2,
        owner   => $$,
        checks  => 0,
    }, $class;
    my $module = exists $opt{module} ? $opt{module}
                                     : SessionCache::Test::module_path();
    if ($module) {
        die "module not built: $module does not exist "
          . "(build it, or set SESSION_CACHE_MODULE)\n" unless -f $module;
        # nginx maps the .so: load a private copy, so a rebuild that
        # rewrites build/*.so in place cannot crash a running test.
        my $copy = "$self->{dir}/" . File::Basename::basename($module);
        File::Copy::copy($module, $copy) or die "copy $module: $!";
        chmod 0755, $copy;
        $self->{module} = $copy;
        $self->{module_src} = Cwd::abs_path($module);
    }
    my $html = "$self->{dir}/html";
    mkdir $html, 0755 or die "mkdir $html: $!";
    SessionCache::Test::_write_file("$html/index.html", "ok\n");
    SessionCache::Test::_write_file("$html/public.html", "public\n");
    push @STARTED, $self;
    return $self;
}

sub port       ($self) { $self->{port} }
sub dir        ($self) { $self->{dir} }
sub html_dir   ($self) { "$self->{dir}/html" }
sub master_pid ($self) { $self->{pid} }
sub workers    ($self) { $self->{workers} }

# Add a file under the html root (directories created as needed).
sub write_html ($self, $rel, $content) {
    my $path = $self->html_dir;
    my @parts = split m{/}, $rel;
    my $file = pop @parts;
    for (@parts) {
        $path .= "/$_";
        -d $path or mkdir $path, 0755 or die "mkdir $path: $!";
    }
    SessionCache::Test::_write_file("$path/$file", $content);
}

sub _config ($self, %opt) {
    my $d = $self->{dir};
    my $subst = sub ($t) {
        $t //= '';
        $t =~ s/%%PORT%%/$self->{port}/g;
        $t =~ s/%%HTML%%/$d\/html/g;
        $t =~ s/%%TMP%%/$d/g;
        return $t;
    };
    my $conf = '';
    $conf .= "load_module $self->{module};\n" if $self->{module};
    # daemon off: the harness forks the master itself, so it knows its pid
    # and reaps it.
    $conf .= "daemon off;\n"
          .  "worker_processes " . ($opt{workers} // $self->{workers}) . ";\n"
          .  "error_log $d/error.log info;\n"
          .  "pid $d/nginx.pid;\n"
          .  $subst->($opt{main}) . "\n"
          .  "events { worker_connections 1024; }\n"
          .  "http {\n"
          .  "    access_log $d/access.log;\n"
          .  "    client_body_temp_path $d/body;\n"
          .  "    proxy_temp_path $d/proxy;\n"
          .  "    fastcgi_temp_path $d/fastcgi;\n"
          .  "    uwsgi_temp_path $d/uwsgi;\n"
          .  "    scgi_temp_path $d/scgi;\n"
          .  $subst->($opt{http}) . "\n"
          .  "}\n";
    return $conf;
}

# The environment nginx runs with: the caller's additions, plus
# LD_PRELOAD=$NGINX_PRELOAD when set (e.g. libasan for a module built with
# -fsanitize=address, loaded into an uninstrumented nginx).
sub _env ($self, $env) {
    my %env = %{ $env // {} };
    $env{LD_PRELOAD} = $ENV{NGINX_PRELOAD} if $ENV{NGINX_PRELOAD};
    return \%env;
}

sub start ($self, %opt) {
    die "nginx already running\n" if $self->running;
    $self->{workers} = $opt{workers} if $opt{workers};
    $self->{env} = $opt{env} if $opt{env};
    $self->{http} = $opt{http} if exists $opt{http};
    $self->{main} = $opt{main} if exists $opt{main};
    my $conf = "$self->{dir}/nginx.conf";
    SessionCache::Test::_write_file($conf,
        $self->_config(http => $self->{http}, main => $self->{main}));
    $self->{pid} = SessionCache::Test::_spawn(
        cmd => [$self->{bin}, '-p', "$self->{dir}/", '-c', $conf,
                '-e', "$self->{dir}/error.log"],
        env => $self->_env($self->{env}),
        stdout => "$self->{dir}/nginx.stderr",
        stderr => "$self->{dir}/nginx.stderr");
    my $up = SessionCache::Test::wait_until(sub {
        unless (SessionCache::Test::_alive($self->{pid})) {
            die "nginx exited at start:\n" . $self->error_log
                . SessionCache::Test::_slurp("$self->{dir}/nginx.stderr")
                . "\nconfig:\n" . SessionCache::Test::_slurp($conf) . "\n";
        }
        SessionCache::Test::_port_accepts($self->{port})
            && $self->worker_pids >= $self->{workers};
    }, 10);
    die "nginx did not accept on port $self->{port} within 10s:\n"
        . $self->error_log unless $up;
    $SessionCache::Test::NGINX = $self;
    return $self;
}

sub running ($self) { SessionCache::Test::_alive($self->{pid}) }

# Children of the master, from /proc/*/stat.
sub worker_pids ($self) {
    my $master = $self->{pid} or return ();
    my @pids;
    opendir my $dh, '/proc' or die "/proc: $!";
    for my $pid (grep { /^\d+$/ } readdir $dh) {
        my $stat = SessionCache::Test::_slurp("/proc/$pid/stat") or next;
        # pid (comm) state ppid ...; comm may hold spaces and parentheses
        next unless $stat =~ /\)\s+\S+\s+(\d+)/;
        push @pids, $pid if $1 == $master;
    }
    @pids = sort { $a <=> $b } @pids;
    return @pids;    # in scalar context: how many
}

# Entries in /proc/PID/fd; undef if the process is gone.
sub fd_count ($self, $pid) {
    opendir my $dh, "/proc/$pid/fd" or return undef;
    return scalar grep { !/^\.\.?$/ } readdir $dh;
}

# SIGHUP; returns once every old worker is gone and the new ones are up.
# reload(http => $text) first rewrites the configuration with a new http{}.
sub reload ($self, %opt) {
    if (defined $opt{http}) {
        $self->{http} = $opt{http};
        SessionCache::Test::_write_file("$self->{dir}/nginx.conf",
            $self->_config(http => $self->{http}, main => $self->{main}));
    }
    my %old = map { $_ => 1 } $self->worker_pids;
    kill 'HUP', $self->{pid};
    my $ok = SessionCache::Test::wait_until(sub {
        my @now = $self->worker_pids;
        !grep({ $old{$_} } @now) && @now >= $self->{workers};
    }, 10);
    die "nginx reload: workers did not change within 10s\n" unless $ok;
    return $self;
}

# Graceful stop (SIGQUIT). Returns false if nginx had to be forced.
sub stop ($self) {
    return 1 unless $self->running;
    kill 'QUIT', $self->{pid};
    return 1 if SessionCache::Test::_reap($self->{pid}, 10);
    my @workers = $self->worker_pids;
    kill 'TERM', $self->{pid};
    SessionCache::Test::_reap($self->{pid}, 5) or do {
        kill 'KILL', $self->{pid}, @workers;
        SessionCache::Test::_reap($self->{pid}, 5);
    };
    return 0;
}

sub error_log ($self) { SessionCache::Test::_slurp("$self->{dir}/error.log") }

# The error log from byte $offset on (an earlier log_size()): what was
# logged since then.
sub log_size ($self) { -s "$self->{dir}/error.log" // 0 }
sub log_since ($self, $offset) { substr $self->error_log, $offset }

# How many lines of the error log (from byte $since) match $re.
sub log_count ($self, $re, $since = 0) {
    return scalar grep { $_ =~ $re } split /\n/, $self->log_since($since);
}

# Wait until at least $n lines of the error log (from byte $since) match
# $re; that count, or 0 after a diagnostic when it never came.
sub wait_for_log ($self, $re, $n = 1, $since = 0, $timeout = 10) {
    my $count = 0;
    SessionCache::Test::wait_until(sub {
        ($count = $self->log_count($re, $since)) >= $n;
    }, $timeout, 0.02, "$n error log line(s) matching $re") or return 0;
    return $count;
}

# GET $path (a session_cache_health location) and decode its JSON:
# (response, document); the document is {} when the body is not JSON.
sub health ($self, $path = '/health') {
    my $r = $self->get($path);
    my $d = eval { JSON::PP::decode_json($r->{body}) };
    return ($r, ref $d eq 'HASH' ? $d : {});
}

# nginx -t on a config built like start()'s; returns (exit code, output).
sub check_config ($self, %opt) {
    my $file = "$self->{dir}/check-" . ++$self->{checks} . ".conf";
    SessionCache::Test::_write_file($file,
        $self->_config(http => $opt{http}, main => $opt{main}));
    return SessionCache::Test::_run(timeout => 30,
        cmd => [$self->{bin}, '-t', '-p', "$self->{dir}/", '-c', $file,
                '-e', "$self->{dir}/check.log"],
        env => $self->_env($opt{env}));
}

sub get ($self, $path, %opt) {
    return SessionCache::Test::get($path, port => $self->{port}, %opt);
}

sub get_many ($self, $n, $gen) {
    return SessionCache::Test::get_many($n, sub ($i) {
        my ($path, %o) = $gen->($i);
        return ($path, port => $self->{port}, %o);
    });
}

sub _cleanup ($self) {
    return unless $self->{owner} == $$;
    $self->stop;
    $SessionCache::Test::NGINX = undef
        if ($SessionCache::Test::NGINX // 0) == $self;
}

sub DESTROY ($self) {
    local ($@, $!, $?);
    $self->_cleanup if ${^GLOBAL_PHASE} ne 'DESTRUCT';
}

# ====================================================================
# A Redis Cluster for the tests (SPEC §10): masters only, each node a
# SessionCache::Test::Redis (stop, kill, pause, start, cli work on it) started
# with cluster-enabled yes, its nodes.conf in its own temp dir, and
# cluster-require-full-coverage no (a lost master costs its slots only).
package SessionCache::Test::RedisCluster;

use v5.36;
use Time::HiRes qw(time);

# tls => {cert, key, ca}: TLS only, the cluster bus and replication too
# (each node a TLS-only SessionCache::Test::Redis; url() says
# rediss-cluster://).
sub _new ($class, %opt) {
    my $n = $opt{masters} // 3;
    my $self = bless { nodes => [], password => $opt{requirepass} }, $class;
    $self->{tls} = $opt{tls} if $opt{tls};
    for (1 .. $n) {
        # nodes.conf in the node's own --dir
        my $node = SessionCache::Test::start_redis(
            requirepass => $opt{requirepass},
            ($opt{tls} ? (tls => $opt{tls}) : ()),
            # the bus on a port of its own (free_port's): by default it
            # is the port + 10000, which may be taken, or past 65535
            args => ['--cluster-enabled', 'yes',
                     '--cluster-port', SessionCache::Test::free_port(),
                     '--cluster-config-file', 'nodes.conf',
                     '--cluster-require-full-coverage', 'no',
                     '--cluster-node-timeout', '2000',
                     (defined $opt{requirepass}
                         ? ('--masterauth', $opt{requirepass}) : ()),
                     ($opt{tls} ? ('--tls-cluster', 'yes',
                                   '--tls-replication', 'yes') : ())]);
        push @{ $self->{nodes} }, $node;
    }
    my @cmd = ($self->{nodes}[0]{cli_bin}, '--cluster', 'create',
               (map { "127.0.0.1:$_->{port}" } @{ $self->{nodes} }),
               '--cluster-replicas', '0', '--cluster-yes');
    push @cmd, '-a', $opt{requirepass}, '--no-auth-warning'
        if defined $opt{requirepass};
    push @cmd, '--tls', '--cacert', $opt{tls}{ca} if $opt{tls};
    my ($rc, $out) = SessionCache::Test::_run(cmd => \@cmd, timeout => 60);
    die "redis-cli --cluster create failed ($rc):\n$out\n" if $rc;
    $self->wait_ok or die "the cluster did not reach cluster_state:ok\n";
    return $self;
}

sub nodes ($self) { @{ $self->{nodes} } }

# redis-cluster://[:pw@]127.0.0.1:P1,127.0.0.1:P2,... (all nodes, or @seeds;
# rediss-cluster:// for a TLS cluster, host => 'localhost' to name the
# seeds so)
sub url ($self, %opt) {
    my $pw = exists $opt{password} ? $opt{password} : $self->{password};
    my $auth = defined $pw ? ":$pw\@" : '';
    my @seeds = @{ $opt{seeds} // $self->{nodes} };
    my $scheme = $self->{tls} ? 'rediss-cluster' : 'redis-cluster';
    my $host = $opt{host} // '127.0.0.1';
    return "$scheme://$auth" . join ',', map { "$host:$_->{port}" } @seeds;
}

# Every node that is running says cluster_state:ok and sees every slot
# assigned (an event: CLUSTER INFO, polled).
sub wait_ok ($self, $timeout = 20) {
    return SessionCache::Test::wait_until(sub {
        for my $node (grep { $_->running } $self->nodes) {
            my $info = $node->cli('CLUSTER', 'INFO');
            return 0 unless $info =~ /cluster_state:ok/
                         && $info =~ /cluster_slots_assigned:16384/;
        }
        1;
    }, $timeout, 0.05, 'cluster_state:ok on every node');
}

# The slot of a key, as Redis computes it.
sub keyslot ($self, $key) {
    my ($node) = grep { $_->running } $self->nodes;
    return 0 + $node->cli('CLUSTER', 'KEYSLOT', $key);
}

# The node that owns a slot, by its own word (CLUSTER NODES of a live node).
sub owner ($self, $slot) {
    my ($ask) = grep { $_->running } $self->nodes;
    for my $line (split /\n/, $ask->cli('CLUSTER', 'NODES')) {
        my @f = split ' ', $line;
        next unless $f[2] =~ /master/;
        my ($port) = $f[1] =~ /:(\d+)/;
        for my $range (@f[8 .. $#f]) {
            next if $range =~ /^\[/;    # migrating / importing markers
            my ($a, $b) = split /-/, $range;
            $b //= $a;
            if ($slot >= $a && $slot <= $b) {
                my ($node) = grep { $_->{port} == $port } $self->nodes;
                return $node;
            }
        }
    }
    return undef;
}

sub owner_of_key ($self, $key) { $self->owner($self->keyslot($key)) }

# The master that owns each token's key (session:TOKEN): ({token => node},
# {port => how many of the tokens it owns}).
sub token_owners ($self, @tokens) {
    my (%owner, %on);
    for my $t (@tokens) {
        $owner{$t} = $self->owner_of_key("session:$t");
        $on{ $owner{$t}->port }++;
    }
    return (\%owner, \%on);
}

# Every token of $owner (token_owners()'s; each a session of user-TOKEN
# in Postgres, not cached yet) answered from the master that owns its
# key: first MISS, from Postgres; the cache fill on that master; then
# HIT, each master's GET count moved by exactly the tokens it owns.
# $check->($token) answers "STATUS CACHE USER"; $what prefixes the test
# names. Test::More assertions.
sub answers_from_owners ($self, $check, $owner, $what = '') {
    my @tokens = sort keys %$owner;
    my %on;
    $on{ $owner->{$_}->port }++ for @tokens;
    Test::More::is(scalar(keys %on), scalar($self->nodes),
                   "${what}the tokens fall on every master");
    Test::More::is($check->($_), "200 MISS user-$_",
                   "$what$_: first request, MISS from Postgres") for @tokens;
    Test::More::ok(defined $owner->{$_}->wait_for_key("session:$_"),
                   "$what$_: the cache fill is on the master that owns its slot")
        for @tokens;
    my %gets = map { ($_->port => $_->calls('get')) } $self->nodes;
    Test::More::is($check->($_), "200 HIT user-$_", "$what$_: second request, HIT")
        for @tokens;
    for my $node ($self->nodes) {
        Test::More::is($node->calls('get') - $gets{ $node->port }, $on{ $node->port } // 0,
                       "${what}node " . $node->port
                       . ": one GET per token it owns, none for the others'");
    }
}

# An nginx checking sessions on this cluster and $pg, with /health:
# start_nginx($pg, redis => 'URL params', postgres => 'conninfo params',
# workers => 1, http => ..., protect => ... as for protected_site);
# returned once it loaded the slot map (every worker loads its own, and
# one without answers BYPASS: each worker's line is awaited).
sub start_nginx ($self, $pg, %o) {
    my $nginx = SessionCache::Test::start_nginx(workers => $o{workers} // 1,
        http => SessionCache::Test::protected_site(
            redis    => $self->url . " $o{redis}",
            postgres => '"' . $pg->dsn . "\" $o{postgres}",
            http     => $o{http}, protect => $o{protect},
            server   => 'location = /health { session_cache_health; }'));
    my $n = $self->nodes;
    $nginx->wait_for_log(qr/redis cluster: slot map loaded: $n masters/,
                         $nginx->workers);
    return $nginx;
}

# The node id of a node.
sub id_of ($self, $node) { $node->cli('CLUSTER', 'MYID') }

# redis-cli --cluster reshard: move $slots slots from one node to another;
# returns (exit code, output). Blocks until the move is over.
sub reshard ($self, $from, $to, $slots, %opt) {
    my @cmd = ($from->{cli_bin}, '--cluster', 'reshard',
               "127.0.0.1:$from->{port}",
               '--cluster-from', $self->id_of($from),
               '--cluster-to', $self->id_of($to),
               '--cluster-slots', $slots, '--cluster-yes',
               '--cluster-pipeline', $opt{pipeline} // 10);
    push @cmd, '-a', $self->{password}, '--no-auth-warning'
        if defined $self->{password};
    push @cmd, '--tls', '--cacert', $self->{tls}{ca} if $self->{tls};
    return SessionCache::Test::_run(cmd => \@cmd, timeout => 120);
}

# ====================================================================
# Redis Sentinel (SPEC §10, t/55-t/58): sentinels on loopback
# (redis-server --sentinel) and a fake one that names what it is told to.
#
#   my $s = start_sentinel(master => $redis, requirepass => 'pw',
#                          down_after => 1000, failover_timeout => 3000,
#                          tls => {cert, key, ca});
#                              (tls: TLS only, tls-port and port 0, and
#                              tls-replication yes: TLS to the servers
#                              and the other sentinels)
#   $s->master_addr            "127.0.0.1:PORT", as the sentinel says
#   $s->cli(@args)             redis-cli against the sentinel
#   my $f = start_fake_sentinel(address => ['127.0.0.1', $port]);
#                              (address => undef: it knows no master)
#   replicate($replica, $master)   REPLICAOF, waiting for the link
#
# A sentinel is a redis-server process as SessionCache::Test::Redis is:
# port, pid, password, cli, running, pause, resume, stop and the cleanup
# are that class's; only how it starts differs.
package SessionCache::Test::Sentinel;

use v5.36;
use parent -norequire, 'SessionCache::Test::Redis';
use List::Util ();
use Time::HiRes qw(time);

push @SessionCache::Test::EXPORT,
    qw(start_sentinel start_fake_sentinel replicate);

my @SENTINELS;    # stopped before the servers they watch

END {
    local $?;
    for my $s (reverse @SENTINELS) {
        eval { $s->_cleanup; 1 } or warn "cleanup: $@";
    }
    @SENTINELS = ();
}

sub SessionCache::Test::start_sentinel (%opt) { __PACKAGE__->_new(%opt) }

sub SessionCache::Test::start_fake_sentinel (%opt) {
    SessionCache::Test::FakeSentinel->_new(%opt);
}

# REPLICAOF master, with its password; returns once the link is up.
sub SessionCache::Test::replicate ($replica, $master) {
    $replica->cli('CONFIG', 'SET', 'masterauth', $master->password)
        if defined $master->password;
    $replica->cli('REPLICAOF', '127.0.0.1', $master->port);
    SessionCache::Test::wait_until(sub {
        $replica->cli('INFO', 'replication') =~ /master_link_status:up/;
    }, 10, 0.05, 'the replica to sync') or die "replica did not sync\n";
}

sub _new ($class, %opt) {
    my $self = bless {
        server   => SessionCache::Test::_need_in_path('redis-server'),
        cli_bin  => SessionCache::Test::_need_in_path('redis-cli'),
        port     => SessionCache::Test::free_port(),
        dir      => SessionCache::Test::_tempdir('sentinel'),
        password => $opt{requirepass},
        name     => $opt{name} // 'mymaster',
        master   => $opt{master},
        quorum   => $opt{quorum} // 2,
        down     => $opt{down_after} // 1000,
        failover => $opt{failover_timeout} // 3000,
        tls      => $opt{tls},    # {cert, key, ca}: TLS only
        owner    => $$,
    }, $class;
    push @SENTINELS, $self;
    $self->start;
    return $self;
}

sub log ($self) { SessionCache::Test::_slurp("$self->{dir}/sentinel.log") }

sub start ($self) {
    my ($n, $m) = ($self->{name}, $self->{master});
    my $port = "port $self->{port}\n";
    if (my $t = $self->{tls}) {
        # Redis's TLS set-up for Sentinel: tls-replication yes makes it
        # speak TLS to the servers and serve its peers on tls-port
        $port = "port 0\ntls-port $self->{port}\n"
            . "tls-cert-file $t->{cert}\ntls-key-file $t->{key}\n"
            . "tls-ca-cert-file $t->{ca}\ntls-auth-clients no\n"
            . "tls-replication yes\n";
    }
    my $conf = "${port}bind 127.0.0.1\ndir $self->{dir}\n"
        . "sentinel monitor $n 127.0.0.1 " . $m->port . " $self->{quorum}\n"
        . "sentinel down-after-milliseconds $n $self->{down}\n"
        . "sentinel failover-timeout $n $self->{failover}\n"
        . "sentinel parallel-syncs $n 1\n";
    $conf .= "sentinel auth-pass $n " . $m->password . "\n"
        if defined $m->password;
    $conf .= "requirepass $self->{password}\n"
           . "sentinel sentinel-pass $self->{password}\n"
        if defined $self->{password};
    SessionCache::Test::_write_file("$self->{dir}/sentinel.conf", $conf);
    my $log = "$self->{dir}/sentinel.log";
    $self->{pid} = SessionCache::Test::_spawn(
        cmd => [$self->{server}, "$self->{dir}/sentinel.conf", '--sentinel'],
        stdout => $log, stderr => $log);
    SessionCache::Test::wait_until(sub {
        die "redis-server --sentinel exited at start:\n"
            . SessionCache::Test::_slurp($log) . "\n"
            unless SessionCache::Test::_alive($self->{pid});
        $self->cli('PING') eq 'PONG';
    }, 10, 0.05, 'the sentinel to answer')
        or die "sentinel on port $self->{port} did not start\n";
    return $self;
}

# "ip:port" of the master as this sentinel names it ('' if none)
sub master_addr ($self) {
    my @l = split /\n/,
        $self->cli('SENTINEL', 'get-master-addr-by-name', $self->{name});
    return @l == 2 ? "$l[0]:$l[1]" : '';
}

# SENTINEL MASTER's fields: num-slaves, num-other-sentinels, flags, ...
sub master_info ($self) {
    my @l = split /\n/, $self->cli('SENTINEL', 'MASTER', $self->{name});
    my %h;
    while (@l >= 2) { my ($k, $v) = splice @l, 0, 2; $h{$k} = $v }
    return \%h;
}

# --------------------------------------------------------------------
# Set-ups shared by the sentinel tests (t/56-t/58).
#
#   my ($master, $replica, @sentinels) = start_sentinel_set(requirepass => PW);
#       (tls => {cert, key, ca}: every server and sentinel TLS only, with
#       tls-replication yes)
#   cache_sessions($pg, $master, @tokens);
#   sentinel_url(\@sentinels, password => PW)   sentinel://:PW@.../mymaster
#       (tls => 1: rediss-sentinel://...)
#   my $f = sentinel_failover_setup();           t/56, t/57: see below
#   sentinel_failover_followed($f, trigger => sub { ... }, ...);

push @SessionCache::Test::EXPORT,
    qw(start_sentinel_set cache_sessions sentinel_url
       sentinel_failover_setup sentinel_failover_followed);

# A master and its replica (both requirepass => PW) watched by three
# sentinels; returns ($master, $replica, @sentinels) once the sentinels
# know the replica and each other, so that a failover can proceed (a test
# point).
sub SessionCache::Test::start_sentinel_set (%opt) {
    my @tls = $opt{tls}
        ? (tls => $opt{tls}, args => ['--tls-replication', 'yes']) : ();
    my ($master, $replica) = map {
        SessionCache::Test::start_redis(requirepass => $opt{requirepass}, @tls)
    } 1 .. 2;
    SessionCache::Test::replicate($replica, $master);
    @tls = $opt{tls} ? (tls => $opt{tls}) : ();
    my @sentinels = map { __PACKAGE__->_new(master => $master, @tls) } 1 .. 3;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    Test::More::ok(SessionCache::Test::wait_until(sub {
        !grep {
            my $i = $_->master_info;
            ($i->{'num-slaves'} // 0) < 1
                || ($i->{'num-other-sentinels'} // 0) < 2
        } @sentinels;
    }, 20, 0.1, 'the sentinels to know the replica and each other'),
       'three sentinels watch a master and its replica');
    return ($master, $replica, @sentinels);
}

# Each token a session of user-I (I its index) in Postgres and cached in
# Redis on $master (EX 300); returns once a replica has the keys too.
sub SessionCache::Test::cache_sessions ($pg, $master, @tokens) {
    my $exp = int(time + 3600);
    for my $i (0 .. $#tokens) {
        $pg->add_session($tokens[$i], "user-$i", 3600);
        $master->cli('SET', "session:$tokens[$i]",
                     qq({"user_id":"user-$i","expires_at":$exp}), 'EX', 300);
    }
    # WAIT answers how many replicas acknowledged every write so far:
    # asked again until one has (a slow replica is waited for, not missed)
    SessionCache::Test::wait_until(sub { ($master->cli('WAIT', 1, 1000) // 0) >= 1 },
                                   20, 0.01, 'a replica to acknowledge the sessions')
        or die "cache_sessions: no replica acknowledged the sessions\n";
}

# sentinel://[:PW@]127.0.0.1:P1,127.0.0.1:P2,.../NAME (NAME: mymaster)
sub SessionCache::Test::sentinel_url ($sentinels, %o) {
    my $auth = defined $o{password} ? ":$o{password}\@" : '';
    return ($o{tls} ? 'rediss-sentinel://' : 'sentinel://') . $auth
         . join(',', map { '127.0.0.1:' . $_->port } @$sentinels)
         . '/' . ($o{name} // 'mymaster');
}

# t/56, t/57: a failover under load. A sentinel set (password
# redis-S3cret-pw), Postgres, 40 sessions in both, an nginx (2 workers)
# and a second one with L1 (tracking on) on the sentinels; the master
# discovered, L1 armed on it and a load answered from Redis (test
# points). Returns {master, replica, sentinels, pg, nginx, l1, load, old,
# new} (old, new: the master's and the replica's "127.0.0.1:PORT").
sub SessionCache::Test::sentinel_failover_setup () {
    require SessionCache::Load;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my $PW = 'redis-S3cret-pw';
    my %f;
    $f{pg} = SessionCache::Test::start_postgres();
    my ($master, $replica, @sentinels)
        = SessionCache::Test::start_sentinel_set(requirepass => $PW);
    @f{qw(master replica sentinels)} = ($master, $replica, \@sentinels);
    my @valid = map { "tok-fo-$_-a1" } 1 .. 40;
    SessionCache::Test::cache_sessions($f{pg}, $f{master}, @valid);

    my $URL = SessionCache::Test::sentinel_url($f{sentinels}, password => $PW)
            . ' pool=4 connect_timeout=300ms timeout=300ms';
    my $PG  = '"' . $f{pg}->dsn . '" pool=4 connect_timeout=1s timeout=1s';
    my $site = sub ($http) {
        SessionCache::Test::protected_site(redis => $URL, postgres => $PG,
            http => $http,
            server => 'location = /health { session_cache_health; }');
    };
    # each worker discovers the master for itself, and one that has not
    # yet answers BYPASS: the load starts once both know it, so that its
    # BYPASS answers are the switch's
    my $hp = SessionCache::Test::free_port();
    $f{nginx} = SessionCache::Test::start_nginx(workers => 2,
        http => $site->(SessionCache::Test::worker_health($hp)));
    $f{l1} = SessionCache::Test::new_nginx();
    $f{l1}->start(workers => 1, http => $site->('session_cache_l1 size=1m;'));

    $f{old} = '127.0.0.1:' . $f{master}->port;
    $f{new} = '127.0.0.1:' . $f{replica}->port;

    Test::More::ok(SessionCache::Test::wait_every_worker($f{nginx}, $hp,
        sub ($d) { ($d->{redis}{sentinel}{address} // '') eq $f{old} },
        'the master discovered'), 'the master discovered');
    Test::More::ok(SessionCache::Test::wait_until(sub {
        _doc($f{l1})->{l1}{armed}
    }, 10, 0.05, 'l1 armed'), 'L1 armed on the master');

    $f{load} = SessionCache::Load::start_load(
        tokens => { valid => \@valid, invalid => ['tok-fo-unknown-a1'] },
        public => '/public.html', port => $f{nginx}->port, rate => 200);
    Test::More::ok($f{load}->wait_for(40, sub ($r) { $r->{sstatus} eq 'HIT' },
                                      '40 HITs'),
                   'the load is answered from Redis');
    return \%f;
}

# The health document of an nginx.
sub _doc ($nginx) { my (undef, $d) = $nginx->health; return $d }

# After sentinel_failover_setup: trigger->() breaks the master; then the
# sentinels name the replica (within name_timeout s), nginx follows (one
# switch), the load is answered from the new master again (HIT, its GETs
# count up); every answer was right (no valid session refused, no 503);
# no BYPASS once the switch is over and the BYPASS window (printed with
# label `what`) under window_ms; the switch in the health document,
# Prometheus and the log; the L1 nginx dropped L1 (topology) and armed its
# listener on the new master; no password in the logs, no alerts (both
# nginx stopped). Returns the BYPASS answers.
sub SessionCache::Test::sentinel_failover_followed ($f, %o) {
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my ($nginx, $l1, $replica, $load, $old, $new)
        = @$f{qw(nginx l1 replica load old new)};

    my $gets_before = $replica->calls('get');
    my $t_fail = time;
    $o{trigger}->();

    Test::More::ok(SessionCache::Test::wait_until(sub {
        $f->{sentinels}[0]->master_addr eq $new
    }, $o{name_timeout}, 0.05, 'the sentinel to name the replica'),
       'the sentinels name the former replica');
    my $t_named = time;

    Test::More::ok(SessionCache::Test::wait_until(sub {
        my $d = _doc($nginx);
        ($d->{redis}{sentinel}{address} // '') eq $new
            && $d->{redis}{sentinel}{switches} == 1;
    }, 10, 0.05, 'nginx to follow'), 'nginx follows the new master');
    my $t_seen = time;

    # HIT again, from the new master
    Test::More::ok($load->wait_for(40, sub ($r) {
        $r->{t0} > $t_seen && $r->{kind} eq 'valid' && $r->{sstatus} eq 'HIT'
    }, '40 HITs after'), 'HIT again after the switch');
    Test::More::ok($replica->calls('get') > $gets_before,
                   '... from the new master');

    my @r = $load->stop;
    my @bad = SessionCache::Load::unexpected(\@r);
    Test::More::ok(!@bad, 'no valid session refused, no 503, no wrong answer')
        or Test::More::diag SessionCache::Load::summarize(\@bad);

    my @bypass = grep { $_->{sstatus} eq 'BYPASS' } @r;
    my $window = @bypass ? (List::Util::max(map { $_->{t1} } @bypass)
                            - List::Util::min(map { $_->{t0} } @bypass)) * 1000
                         : 0;
    my @after = grep { $_->{t0} > $t_seen + 1 } @bypass;
    Test::More::ok(!@after, 'no BYPASS once the switch is over')
        or Test::More::diag SessionCache::Load::summarize(\@after);
    Test::More::diag sprintf '%s: %d of %d answers BYPASS, window %.0f ms '
        . '(target 2000 ms); sentinels named the new master after %.0f ms, '
        . 'nginx showed it after %.0f ms', $o{what}, scalar @bypass,
        scalar @r, $window, ($t_named - $t_fail) * 1000,
        ($t_seen - $t_fail) * 1000;
    Test::More::ok($window < $o{window_ms}, 'the BYPASS window stays short')
        or Test::More::diag SessionCache::Load::summarize(\@r);

    my $d = _doc($nginx);
    Test::More::is($d->{redis}{sentinel}{switches}, 1, 'health: one switch');
    Test::More::ok(defined $d->{redis}{sentinel}{lastSwitch},
                   'health: its time')
        and Test::More::like($d->{redis}{sentinel}{lastSwitch},
                             qr/^\d{4}-\d\d-\d\dT/, '... ISO 8601');
    my $p = $nginx->get('/health?format=prometheus');
    Test::More::like($p->{body},
        qr/^nginx_session_cache_redis_sentinel_switches_total 1$/m,
        'prometheus: one switch');
    Test::More::like($nginx->error_log,
        qr/\[warn\].*redis sentinel: master "mymaster" is now \Q$new\E \(was \Q$old\E\)/,
        'the switch logged at warn');

    # the second nginx: L1 dropped, its listener on the new master
    Test::More::ok(SessionCache::Test::wait_until(sub {
        my $d = _doc($l1);
        ($d->{redis}{sentinel}{address} // '') eq $new
            && ($d->{l1}{flushes}{topology} // 0) >= 1 && $d->{l1}{armed};
    }, 10, 0.05, 'L1 dropped and armed again'),
       'L1 dropped (topology) and its listener armed again')
        or Test::More::diag Test::More::explain _doc($l1)->{l1};
    Test::More::ok(SessionCache::Test::wait_until(sub {
        $replica->cli('CLIENT', 'LIST') =~ /flags=P\b.*cmd=(ping|subscribe)/
            || $replica->cli('CLIENT', 'LIST') =~ /sub=1/;
    }, 10, 0.05, 'the listener on the new master'),
       'the listener subscribes on the new master');

    Test::More::unlike($nginx->error_log . $l1->error_log, qr/S3cret/,
                       'no password in the logs');
    SessionCache::Test::no_alerts($nginx);
    SessionCache::Test::no_alerts($l1, 'the L1 nginx: no alerts');
    return @bypass;
}

# --------------------------------------------------------------------
# A fake sentinel: answers AUTH (+OK, or -WRONGPASS if `password` is set
# and another is given), SENTINEL get-master-addr-by-name with `address`
# ([host, port]; undef: nil), SUBSCRIBE and PING as a sentinel does, and
# counts the SENTINEL commands it was sent (asked()). A forked child of
# the test, stopped as a Redis server is (port, running, stop and the
# cleanup are SessionCache::Test::Redis's).
package SessionCache::Test::FakeSentinel;

use v5.36;
use parent -norequire, 'SessionCache::Test::Redis';
use IO::Select;
use IO::Socket::INET;
use POSIX ();

sub _new ($class, %opt) {
    my $port = SessionCache::Test::free_port();
    my $dir  = SessionCache::Test::_tempdir('fake-sentinel');
    my $listen = IO::Socket::INET->new(LocalAddr => '127.0.0.1',
        LocalPort => $port, Listen => 16, ReuseAddr => 1, Proto => 'tcp')
        or die "fake sentinel: listen: $!\n";
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        _serve($listen, $opt{address}, $opt{password}, "$dir/asked");
        POSIX::_exit(0);
    }
    close $listen;
    my $self = bless { pid => $pid, port => $port, dir => $dir,
                       owner => $$ }, $class;
    push @SENTINELS, $self;
    return $self;
}

sub asked ($self) {
    my $t = eval { SessionCache::Test::_slurp("$self->{dir}/asked") } // '';
    return scalar(() = $t =~ /\n/g);
}

sub _bulk ($s) { '$' . length($s) . "\r\n$s\r\n" }

sub _serve ($listen, $address, $password, $asked) {
    $SIG{TERM} = sub { POSIX::_exit(0) };
    my $sel = IO::Select->new($listen);
    my %buf;
    while (1) {
        for my $fh ($sel->can_read(1)) {
            if ($fh == $listen) {
                my $c = $listen->accept or next;
                $sel->add($c);
                $buf{"$c"} = '';
                next;
            }
            my $n = sysread $fh, my $chunk, 4096;
            if (!$n) { $sel->remove($fh); delete $buf{"$fh"}; close $fh; next }
            $buf{"$fh"} .= $chunk;
            while ($buf{"$fh"} =~ /\A\*(\d+)\r\n/) {
                my ($argc, $pos, @args) = ($1, length($&));
                my $whole = 1;
                for (1 .. $argc) {
                    my $rest = substr $buf{"$fh"}, $pos;
                    if ($rest =~ /\A\$(\d+)\r\n/ && length($rest) >= length($&) + $1 + 2) {
                        push @args, substr($rest, length($&), $1);
                        $pos += length($&) + $1 + 2;
                    } else { $whole = 0; last }
                }
                last unless $whole;
                substr($buf{"$fh"}, 0, $pos) = '';
                my $cmd = uc($args[0] // '');
                my $out;
                if ($cmd eq 'AUTH') {
                    $out = !defined $password || $args[-1] eq $password
                        ? "+OK\r\n"
                        : "-WRONGPASS invalid username-password pair\r\n";
                } elsif ($cmd eq 'SENTINEL') {
                    if (open my $a, '>>', $asked) { print {$a} "asked\n"; close $a }
                    $out = $address
                        ? "*2\r\n" . _bulk($address->[0]) . _bulk($address->[1])
                        : "*-1\r\n";
                } elsif ($cmd eq 'SUBSCRIBE') {
                    $out = "*3\r\n" . _bulk('subscribe') . _bulk($args[1]) . ":1\r\n";
                } elsif ($cmd eq 'PING') {
                    $out = "*2\r\n" . _bulk('pong') . _bulk('');
                } else {
                    $out = "-ERR unknown command\r\n";
                }
                syswrite $fh, $out;
            }
        }
    }
}

# ------------------------------------------------------------------ TLS

# A test CA and what it signs, made with openssl in a directory of its
# own (EC keys: quick). Returns {dir, ca, ca_key, cert, key, other_ca}:
# ca signs cert (for the names in san, default DNS:localhost and
# IP:127.0.0.1); other_ca is an unrelated CA, for "untrusted" cases.
# make_cert($ca, $name, $san) adds another certificate the CA signs.
sub SessionCache::Test::make_ca (%o) {
    my $openssl = SessionCache::Test::_need_in_path('openssl');
    my $dir = SessionCache::Test::_tempdir('tls');
    my $run = sub (@cmd) {
        my ($rc, $out) = SessionCache::Test::_run(cmd => [$openssl, @cmd], timeout => 30);
        die "openssl @cmd[0..1] failed: $out\n" if $rc;
    };
    for my $name (qw(ca other)) {
        $run->('req', '-x509', '-newkey', 'ec', '-pkeyopt',
               'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2',
               '-subj', "/CN=test $name", '-keyout', "$dir/$name.key",
               '-out', "$dir/$name.crt");
    }
    my $ca = { dir => $dir, ca => "$dir/ca.crt", ca_key => "$dir/ca.key",
               other_ca => "$dir/other.crt", run => $run };
    my ($cert, $key) = SessionCache::Test::make_cert(
        $ca, 'server', $o{san} // 'DNS:localhost,IP:127.0.0.1');
    @$ca{qw(cert key)} = ($cert, $key);
    chmod 0755, $dir;
    chmod 0644, glob("$dir/*");
    return $ca;
}

sub SessionCache::Test::make_cert ($ca, $name, $san) {
    my $dir = $ca->{dir};
    $ca->{run}->('req', '-newkey', 'ec', '-pkeyopt',
                 'ec_paramgen_curve:prime256v1', '-nodes', '-subj',
                 "/CN=$name", '-keyout', "$dir/$name.key",
                 '-out', "$dir/$name.csr");
    SessionCache::Test::_write_file("$dir/$name.ext", "subjectAltName=$san\n");
    $ca->{run}->('x509', '-req', '-in', "$dir/$name.csr", '-CA', $ca->{ca},
                 '-CAkey', $ca->{ca_key}, '-CAcreateserial', '-days', '2',
                 '-extfile', "$dir/$name.ext", '-out', "$dir/$name.crt");
    chmod 0644, "$dir/$name.crt", "$dir/$name.key";
    return ("$dir/$name.crt", "$dir/$name.key");
}

# ------------------------------------------------------------------ DNS

# A DNS server of the test's own on loopback (UDP), for names learned at
# run time (nginx's "resolver"): an A question for a name that
# $o{resolve} (a sub: name => 1 or 0; default every name) accepts is
# answered 127.0.0.1, any other name NXDOMAIN, any other type with no
# record. ->answer($name, $ip): from now on $name is $ip (IPv4), not
# 127.0.0.1. ->hold: no answer until ->release (questions wait, then are
# answered in turn: a DNS that is slow for as long as the test says).
# ->port; ->asked($name): how many A questions for that name it
# has answered so far (a count kept in a file: the server is a child
# process). Stopped when the object goes.
sub SessionCache::Test::start_fake_dns (%o) {
    require IO::Socket::INET;
    require POSIX;
    my $resolve = $o{resolve} // sub { 1 };
    my $dir = SessionCache::Test::_tempdir('dns');
    my $sock = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                     Proto => 'udp') or die "dns: $!";
    my $port = $sock->sockport;
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        $SIG{TERM} = sub { POSIX::_exit(0) };
        alarm 900;    # never outlive a forgotten test by long
        while (1) {
            my $peer = $sock->recv(my $q, 512) // next;
            next if length $q < 17;
            my ($end, @labels) = (12);
            while (my $n = ord substr $q, $end, 1) {
                push @labels, substr $q, $end + 1, $n;
                $end += 1 + $n;
            }
            my $name = lc join '.', @labels;
            my $question = substr $q, 12, $end + 5 - 12;
            my $type = unpack 'n', substr $q, $end + 1, 2;
            my $known = $resolve->($name);
            select undef, undef, undef, 0.01 while -e "$dir/hold";
            my @ip = (127, 0, 0, 1);
            if (open my $fh, '<', "$dir/answer-$name") {
                @ip = split /\./, scalar <$fh>;
            }
            my $a = $type == 1 && $known
                ? pack('n n n N n C4', 0xc00c, 1, 1, 60, 4, @ip) : '';
            my $flags = $known ? 0x8180 : 0x8183;    # NOERROR : NXDOMAIN
            $sock->send(substr($q, 0, 2) . pack('n n n n n', $flags, 1,
                        $a ? 1 : 0, 0, 0) . $question . $a, 0, $peer);
            if ($type == 1 && open my $fh, '>>', "$dir/asked") {
                print $fh "$name\n";
                close $fh;
            }
        }
    }
    close $sock;
    return bless { pid => $pid, port => $port, dir => $dir },
        'SessionCache::Test::FakeDNS';
}

package SessionCache::Test::FakeDNS {
    sub port ($self) { $self->{port} }
    sub answer ($self, $name, $ip) {
        SessionCache::Test::_write_file("$self->{dir}/answer-$name.new", $ip);
        rename "$self->{dir}/answer-$name.new", "$self->{dir}/answer-$name";
    }
    sub hold ($self) { SessionCache::Test::_write_file("$self->{dir}/hold", '') }
    sub release ($self) { unlink "$self->{dir}/hold" }
    sub asked ($self, $name) {
        open my $fh, '<', "$self->{dir}/asked" or return 0;
        return scalar grep { $_ eq "$name\n" } <$fh>;
    }
    sub stop ($self) {
        return unless $self->{pid};
        kill 'TERM', $self->{pid};
        waitpid $self->{pid}, 0;
        delete $self->{pid};
    }
    sub DESTROY ($self) {
        local ($@, $!, $?);
        $self->stop;
    }
}

# ---------------------------------------------------- per-worker views

# What a worker learns on its own (the master a sentinel named, a cluster's
# slot map) shows in that worker's health document only, and an idle nginx
# may hand every connection to the same worker, so that polling /health
# can go on seeing one worker. worker_health($port): a server{} for
# http => on 127.0.0.1:$port with reuseport (a listening socket per
# worker: the kernel spreads connections over them by their source port)
# whose /health says which worker answered (X-Worker: its pid).
# wait_every_worker($nginx, $port, $cond, $what): polls that /health until
# $cond->($doc) has held in a document from each of $nginx's workers;
# true once it has (false after a diagnostic, as wait_until).
sub SessionCache::Test::worker_health ($port) {
    return "server {\n"
         . "    listen 127.0.0.1:$port reuseport;\n"
         . "    location = /health {\n"
         . "        session_cache_health;\n"
         . "        add_header X-Worker \$pid always;\n"
         . "    }\n"
         . "}\n";
}

sub SessionCache::Test::wait_every_worker ($nginx, $port, $cond, $what,
                                           $timeout = 10) {
    my %held;
    return SessionCache::Test::wait_until(sub {
        my $r = SessionCache::Test::get('/health', port => $port);
        my $pid = $r->{headers}{'x-worker'} or return 0;
        my $d = eval { JSON::PP::decode_json($r->{body}) };
        $held{$pid} = 1 if ref $d eq 'HASH' && $cond->($d);
        my @workers = $nginx->worker_pids;
        return @workers && !grep { !$held{$_} } @workers;
    }, $timeout, 0.02, "$what, in every worker");
}

1;
