# Passwords of every shape (issue 10 item 1): "true", "postgres", "0", "1",
# "redis", "ok", ":", '"' and a 64-byte random one, each with Redis and
# Postgres down, up, and refusing the password. The health document parses
# and is the same (timestamps, latencies, uptime and memory figures aside)
# as with a neutral password; the module's error log lines, the Prometheus
# text and nginx -t's output are the same too, and none holds the password
# more often than with the neutral one. A password is masked where the
# peer's words enter the module, never by searching what it renders.
#
# One Redis and one Postgres serve every case: the module logs in as
# "edge" (a Redis ACL user, a Postgres role with a SCRAM password), whose
# password each case sets.

use v5.36;
use Test::More;
use JSON::PP;
use File::Temp qw(tempdir);
use IO::Socket::INET;
use POSIX ();
use SessionCache::Test;

my $redis = start_redis();
my $pg    = start_postgres();
$pg->psql(q{CREATE ROLE edge LOGIN PASSWORD 'unset-7f3a'}, 'postgres');
$pg->psql('GRANT USAGE ON SCHEMA platform TO edge;'
          . ' GRANT SELECT ON platform.user_sessions TO edge');

my $NEUTRAL = 'Neutral-Pw-Zq8w';
my $SERVER  = 'Server-Only-Pw-Kx4v';    # the servers' own, when they refuse
my @chars   = map { chr } 0x21 .. 0x7e;
my $RANDOM  = join '', map { $chars[rand @chars] } 1 .. 64;
my @PASSWORDS = ('true', 'postgres', '0', '1', 'redis', 'ok', ':', '"',
                 $RANDOM);

my $dir = tempdir('sc-shapes-XXXXXX', TMPDIR => 1,
                  CLEANUP => !$ENV{TEST_KEEP});
chmod 0755, $dir;

sub write_file ($name, $content) {
    my $path = "$dir/$name";
    open my $fh, '>', $path or die "$path: $!";
    print {$fh} $content;
    close $fh;
    return $path;
}

# The servers' side: Redis's ACL user and Postgres's role take $pw.
sub server_password ($pw) {
    my $r = $redis->cli('ACL', 'SETUSER', 'edge', 'reset', 'on', ">$pw",
                        '~*', '+@all');
    die "ACL SETUSER: $r\n" unless $r eq 'OK';
    $pg->psql('ALTER ROLE edge PASSWORD ' . $pg->quote($pw), 'postgres');
}

# Ports nothing listens on, the same for every "down" case.
my ($DOWN_R, $DOWN_P) = (free_port(), free_port());

# The module's side: file= secrets, so that no password needs nginx's
# quoting.
sub site ($pw, $state) {
    my ($rp, $pp) = $state eq 'down' ? ($DOWN_R, $DOWN_P)
                                     : ($redis->port, $pg->port);
    (my $enc = $pw) =~ s/([^A-Za-z0-9_.~-])/sprintf '%%%02X', ord $1/ge;
    (my $quoted = $pw) =~ s/(['\\])/\\$1/g;
    my $rfile = write_file('redis.url',
                           "redis://edge:$enc\@127.0.0.1:$rp/0\n");
    my $pfile = write_file('pg.dsn', "host=127.0.0.1 port=$pp dbname=sessions"
                           . " user=edge password='$quoted'\n");
    return protected_site(
        redis    => "file=$rfile pool=1 connect_timeout=500ms timeout=500ms",
        postgres => "file=$pfile pool=1 connect_timeout=1s timeout=1s",
        http     => 'session_cache_breaker off;',
        server   => 'location = /health { session_cache_health '
                    . 'threshold=10s timeout=3s; }');
}

my $json = JSON::PP->new->canonical;

# The document without what changes from one run to the next.
sub steady ($d) {
    my $walk;
    $walk = sub ($v, $key) {
        if (ref $v eq 'HASH') {
            return { map { $_ => $walk->($v->{$_}, $_) } keys %$v };
        }
        if (ref $v eq 'ARRAY') {
            return [ map { $walk->($_, $key) } @$v ];
        }
        return 'VOLATILE'
            if $key =~ /time|_at$|^now|latency|_ms$|uptime|memory|rss|
                        version|^(ping|set|get|postgres)$|^p\d+$/xi
               && !ref $v;
        return $v;
    };
    return $walk->($d, '');
}

# The module's own log lines, with what changes from one run to the next
# (time, pids, connection numbers, figures) taken out.
sub module_lines ($log, $digits = 0) {
    my @lines;
    for (split /\n/, $log) {
        next unless /session_cache/;
        s/^\S+ \S+ \[(\w+)\] \d+#\d+: (\*\d+ )?/[$1] /;
        s/, client: .*//;
        s/\d+/N/g unless $digits;
        push @lines, $_;
    }
    return join "\n", sort @lines;
}

sub count ($text, $pw) {
    my $n = () = $text =~ /\Q$pw\E/g;
    return $n;
}

my $case = 0;

# One run: nginx -t, nginx started, one protected request, the health
# document in both formats, nginx stopped. Returns what it saw.
sub run ($pw, $state) {
    my $http = site($pw, $state);
    my (undef, $check) = check_config(http => $http);
    $check =~ s{/tmp/sc-nginx-\w+}{PREFIX}g;

    $redis->cli('FLUSHALL');
    # one worker: the request and the probes meet the same pools
    my $nginx = start_nginx(http => $http, workers => 1);
    my $tok = 'tok-shape-' . ++$case;
    $pg->add_session($tok, "user-$case", 3600);
    my $r = get('/', cookie => "session=$tok");
    # up: wait for the cache fill, so that the counters are settled
    $redis->wait_for_key("session:$tok", 3) if $state eq 'up';

    my $health = get('/health');
    my $prom = get('/health?format=prometheus')->{body};
    $nginx->stop;

    my $log = $nginx->error_log;
    my $doc = eval { $json->decode($health->{body}) };
    (my $steady_prom = $prom) =~ s/^(\S*(?:time|latency|uptime|memory|_ms|
                                        _seconds)\S*)[ ]\S+$/$1 VOLATILE/gmx;
    $steady_prom =~ s/(version="[^"]*")/version="VOLATILE"/g;
    return {
        status => $r->{status},
        body   => $health->{body},
        doc    => $doc,
        steady => defined $doc ? $json->encode(steady($doc)) : undef,
        prom   => $prom,
        steady_prom => $steady_prom,
        log    => $log,
        lines  => module_lines($log),
        digits => module_lines($log, 1),
        check  => $check,
        nginx  => $nginx,
    };
}

for my $state ('down', 'up', 'refused') {
    server_password($SERVER) if $state ne 'up';
    server_password($NEUTRAL) if $state eq 'up';
    my $base = run($NEUTRAL, $state);
    ok(defined $base->{doc}, "$state, neutral password: the document parses")
        or diag $base->{body};
    if ($state eq 'up') {
        is($base->{status}, 200, 'up, neutral password: the session passes');
    } else {
        is($base->{status}, 503, "$state, neutral password: 503");
    }
    diag "$state:\n$base->{body}\n$base->{lines}" if $ENV{TEST_SHOW_HEALTH};

    for my $pw (@PASSWORDS) {
        my $name = $pw eq $RANDOM ? 'a random 64-byte password'
                                  : "password '$pw'";
        server_password($pw) if $state eq 'up';
        my $got = run($pw, $state);

        is($got->{status}, $base->{status},
           "$state, $name: the request is answered as with a neutral one");
        ok(defined $got->{doc}, "$state, $name: the document parses")
            or diag $got->{body};
        is($got->{steady}, $base->{steady},
           "$state, $name: the document is the one a neutral password gives")
            or diag "neutral: $base->{body}\n   this: $got->{body}";
        is($got->{steady_prom}, $base->{steady_prom},
           "$state, $name: so is the Prometheus text")
            or diag "neutral: $base->{prom}\n   this: $got->{prom}";
        is($got->{lines}, $base->{lines},
           "$state, $name: the module's log lines are the neutral ones")
            or diag "neutral:\n$base->{lines}\nthis:\n$got->{lines}";
        is($got->{check}, $base->{check},
           "$state, $name: nginx -t says the same");

        # Digits are taken out of the log lines compared above: count the
        # password in what is steady from run to run, digits kept.
        for my $what ('steady', 'steady_prom', 'digits', 'check') {
            is(count($got->{$what}, $pw), count($base->{$what}, $pw),
               "$state, $name: the $what holds it as often as a neutral "
               . 'run does');
        }
        # And where a neutral run cannot hold it by chance, not at all.
        if (length $pw >= 5) {
            for my $what ('body', 'prom', 'log', 'check') {
                unlike($got->{$what}, qr/\Q$pw\E/,
                       "$state, $name: the $what does not hold it")
                    if count($base->{$what}, $pw) == 0;
            }
        }
        no_alerts($got->{nginx}, "$state, $name: no alerts");
    }
}

# ------------------------------------------------------------------------
# A server that was sent the password in clear text and repeats it: a
# stand-in for Postgres that asks for the password in clear
# (AuthenticationCleartextPassword) and refuses it, quoting it in its
# message, quoted and unquoted. The module repeats the server's refusal
# without the password.

sub fake_postgres ($port) {
    my $listen = IO::Socket::INET->new(LocalAddr => '127.0.0.1',
        LocalPort => $port, Listen => 16, ReuseAddr => 1)
        or die "listen on $port: $!";
    my $pid = fork // die "fork: $!";
    return $pid if $pid;
    while (my $c = $listen->accept) {
        binmode $c;
        my $ok = eval {
            for (;;) {    # SSLRequest and GSSENCRequest first: refused
                read($c, my $len, 4) == 4 or die;
                $len = unpack 'N', $len;
                read($c, my $body, $len - 4) == $len - 4 or die;
                my $code = unpack 'N', $body;
                if ($code == 80877103 || $code == 80877104) {
                    print {$c} 'N';
                    next;
                }
                last;
            }
            print {$c} pack('aNN', 'R', 8, 3);    # cleartext, please
            read($c, my $head, 5) == 5 or die;
            my ($type, $len) = unpack 'aN', $head;
            read($c, my $pw, $len - 4) == $len - 4 or die;
            $pw =~ s/\0$//;
            my $fields = join '', map { "$_\0" } 'SFATAL', 'VFATAL',
                'C28P01', qq{Mpassword "$pw" refused for user "edge": $pw};
            $fields .= "\0";
            print {$c} 'E' . pack('N', 4 + length $fields) . $fields;
            1;
        };
        close $c;
    }
    POSIX::_exit(0);
}

{
    my $port = free_port();
    my $fake = fake_postgres($port);
    (my $quoted = $RANDOM) =~ s/(['\\])/\\$1/g;
    my $pfile = write_file('echo.dsn', "host=127.0.0.1 port=$port "
                           . "dbname=sessions user=edge password='$quoted' "
                           . "sslmode=disable\n");
    my $nginx = start_nginx(http => protected_site(
        postgres => "file=$pfile pool=1 connect_timeout=1s timeout=1s",
        http     => 'session_cache_breaker off;',
        server   => 'location = /health { session_cache_health '
                    . 'timeout=2s; }'));
    is(get('/', cookie => 'session=tok-echo')->{status}, 503,
       'a server that repeats the password: 503');
    my $health = get('/health')->{body};
    my $prom = get('/health?format=prometheus')->{body};
    ok(wait_until(sub { $nginx->error_log =~ /message withheld/ }, 3),
       'a server that repeats the password: the log says its message was '
       . 'withheld') or diag $nginx->error_log;
    like($health, qr/postgres[^"]*: FATAL:  \(message withheld\)/,
         'a server that repeats the password: so does the document')
        or diag $health;
    for ([log => $nginx->error_log], [document => $health],
         [Prometheus => $prom])
    {
        unlike($_->[1], qr/\Q$RANDOM\E/,
               "a server that repeats the password: the $_->[0] does not "
               . 'hold it');
    }
    no_alerts($nginx, 'a server that repeats the password: no alerts');
    $nginx->stop;
    kill 'TERM', $fake;
    waitpid $fake, 0;
}

done_testing;
