# Postgres over TLS (SPEC §11, issue 15): ssl = on with a server
# certificate made here by openssl (a CA of our own, the name localhost).
#   - sslmode=verify-full with the right CA and name: sessions checked,
#     over TLS (pg_stat_ssl);
#   - a wrong CA, a wrong name: each fails with libpq's reason in the
#     error log and the health document, no password anywhere;
#   - 1,000 lookups over TLS, 50 at a time, timeout 2 s: every one
#     answered, none anywhere near its timeout (no answer left waiting in
#     libpq's buffers for a socket event that does not come); so are large
#     answers, and answers a proxy packs into full TLS records.

use v5.36;
use Test::More;
use Time::HiRes qw(time);
use List::Util qw(max sum);
use IO::Select;
use IO::Socket::INET;
use IO::Socket::SSL;
use POSIX ();
use SessionCache::Test;

# a CA, a server certificate it signs for localhost only (so that
# 127.0.0.1 is a wrong name), and an unrelated CA
my $tls   = SessionCache::Test::make_ca(san => 'DNS:localhost');
my $dir   = $tls->{dir};
my $ca    = $tls->{ca};
my $other = $tls->{other_ca};

my $proxy_pid;
END { kill 'TERM', $proxy_pid if $proxy_pid }

# The proxy: one child per connection. It answers libpq's SSLRequest
# itself, terminates TLS with the server's certificate, talks plain TCP to
# Postgres, and writes what Postgres sends once it has been quiet for
# 5 ms: the odd bytes first, then full 16 kB records.
sub tls_proxy ($to, $cert, $key) {
    my $listen = IO::Socket::INET->new(LocalAddr => '127.0.0.1',
        LocalPort => 0, Listen => 64, ReuseAddr => 1) or die "listen: $!";
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        $SIG{CHLD} = 'IGNORE';
        my @kids;
        $SIG{TERM} = sub { kill 'TERM', @kids; POSIX::_exit(0) };
        while (1) {
            my $c = $listen->accept or next;
            my $kid = fork // next;
            if ($kid) { push @kids, $kid; close $c; next }
            $SIG{TERM} = 'DEFAULT';
            close $listen;
            relay($c, $to, $cert, $key);
            POSIX::_exit(0);
        }
    }
    my $port = $listen->sockport;
    close $listen;
    return ($pid, $port);
}

sub relay ($c, $to, $cert, $key) {
    sysread($c, my $req, 8) == 8 or return;    # SSLRequest
    syswrite($c, 'S') == 1 or return;
    IO::Socket::SSL->start_SSL($c, SSL_server => 1, SSL_cert_file => $cert,
                               SSL_key_file => $key) or return;
    my $up = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                   PeerPort => $to) or return;
    my $sel = IO::Select->new($c, $up);
    my $out = '';
    while (1) {
        my @ready = $c->pending ? ($c)
                  : $sel->can_read(length $out ? 0.005 : undef);
        if (!@ready) {
            my $odd = length($out) % 16384;
            my @chunks = $odd ? (substr $out, 0, $odd, '') : ();
            push @chunks, substr $out, 0, 16384, '' while length $out;
            for (@chunks) { $c->syswrite($_) == length or return }
            next;
        }
        for my $s (@ready) {
            my $got = $s->sysread(my $buf, 65536);
            return unless $got;
            if ($s == $up) { $out .= $buf }
            else { syswrite($up, $buf) == $got or return }
        }
    }
}

my $pg = start_postgres();
$pg->enable_ssl("$dir/server.crt", "$dir/server.key");
my $PW = $pg->password;

my @tokens = map { "tok-tls-$_" } 1 .. 100;
$pg->psql('INSERT INTO platform.user_sessions (token, user_id, expires_at) '
        . "SELECT 'tok-tls-' || i, 'user-' || i, now() + interval '1 hour' "
        . 'FROM generate_series(1, 100) i');

sub site ($host, $root, $port = $pg->port) {
    my $dsn = "host=$host port=$port dbname=sessions user=nginx "
            . "password=$PW sslmode=verify-full sslrootcert=$root";
    return protected_site(
        postgres => qq{"$dsn" pool=4 connect_timeout=1s timeout=2s},
        server   => 'location = /health { session_cache_health '
                  . 'threshold=5s timeout=3s; }');
}

# ---------------------------------------------------------- verify-full
my $nginx = start_nginx(workers => 2, http => site('localhost', $ca));
my $r = get('/', cookie => "session=$tokens[0]");
is($r->{status}, 200, 'verify-full, the right CA and name: 200');
ok($pg->psql('SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity '
           . "USING (pid) WHERE ssl AND usename = 'nginx'") >= 1,
   '... over TLS (pg_stat_ssl)');
my ($h, $doc) = $nginx->health;
ok($doc->{postgres}{connected}, 'health: connected') or diag $h->{body};

# ---------------------------------------------------------- 1,000 lookups
# Every worker already connected? Not needed: a connection being set up
# counts against the same 2 s.
my @all;
for my $batch (1 .. 20) {
    push @all, get_many(50, sub ($i) {
        ('/', cookie => "session=$tokens[($batch * 50 + $i) % 100]") });
}
my @ok = grep { $_->{status} == 200 } @all;
is(scalar @ok, 1000, '1,000 lookups over TLS: all 200');
my $slowest = max(map { $_->{ms} // ($_->{t1} - $_->{t0}) * 1000 } @all);
# the figure protects: an answer libpq had already decrypted and held would
# wait for the 2 s timeout (and then fail); every answer comes well before
ok($slowest < 1000, sprintf('... the slowest in %.0f ms (timeout 2 s)',
                            $slowest));
diag sprintf('TLS: 1,000 lookups, 50 at a time, 2 workers: slowest %.0f ms, '
           . 'mean %.1f ms', $slowest,
             sum(map { $_->{ms} // 0 } @all) / @all);

# ---------------------------------------------------------- big answers
# An answer larger than libpq's free buffer arrives in 16 kB TLS records;
# libpq reads part of the last one and OpenSSL keeps the rest, decrypted:
# the socket has nothing more to say. The user id here is 20-60 kB (too
# long: 401, with an error line), so that every answer ends that way now
# and then.
my $big = q{SELECT repeat('x', split_part($1, '-', 3)::int), NULL::bigint};
$nginx->reload(http => site('localhost', $ca)
               . qq{session_cache_query "$big";\n});
my @big;
for my $batch (0 .. 3) {
    push @big, get_many(25, sub ($i) {
        ('/', cookie => 'session=tok-big-' . (20000 + 397 * ($batch * 25 + $i)))
    });
}
is(scalar(grep { $_->{status} == 401 } @big), 100,
   '100 answers of 20-60 kB over TLS: all read (401: the user id is too long)');
my $slowest_big = max(map { $_->{ms} // 0 } @big);
# the figure protects: as above, no answer waits for the 2 s timeout
ok($slowest_big < 1000,
   sprintf('... the slowest in %.0f ms (timeout 2 s)', $slowest_big));

# ---------------------------------------------------------- full records
# Between libpq and Postgres, a TLS proxy that packs what the server says
# into full 16 kB records, the last one full too (as poolers and proxies
# in front of managed Postgres do). libpq reads into what is free of its
# 16 kB buffer, less the piece of a row it holds: part of the last record
# stays in OpenSSL, decrypted, with nothing more to come on the socket.
# Without the read event posted again, each such answer waits for its
# timeout (503 after 2 s).
($proxy_pid, my $proxy_port) = tls_proxy($pg->port, "$dir/server.crt",
                                         "$dir/server.key");
my $rows = q{SELECT repeat('u', 100), NULL::bigint FROM }
         . q{generate_series(1, split_part($1, '-', 3)::int)};
$nginx->reload(http => site('localhost', $ca, $proxy_port)
               . qq{session_cache_query "$rows";\n});
my @rows;
for my $batch (0 .. 3) {
    push @rows, get_many(25, sub ($i) {
        ('/', cookie => 'session=tok-rows-' . (200 + 7 * ($batch * 25 + $i)))
    });
}
is(scalar(grep { $_->{status} == 200 } @rows), 100,
   '100 answers of 24-100 kB through a proxy sending full TLS records: all 200');
my $slowest_rows = max(map { $_->{ms} // 0 } @rows);
# the figure protects: as above, no answer waits for the 2 s timeout
ok($slowest_rows < 1000,
   sprintf('... the slowest in %.0f ms (timeout 2 s)', $slowest_rows));
kill 'TERM', $proxy_pid;
waitpid $proxy_pid, 0;
$proxy_pid = undef;

# ---------------------------------------------------------- a wrong CA
my $since = $nginx->log_size;
$nginx->reload(http => site('localhost', $other));
$r = get('/', cookie => "session=$tokens[1]");
is($r->{status}, 503, 'a wrong CA: the session cannot be checked');
ok($nginx->wait_for_log(qr/certificate verify failed/, 1, $since),
   '... the log says the certificate did not verify');
($h, $doc) = $nginx->health;
like("@{ $doc->{errors} // [] }", qr/certificate verify failed/,
     '... and so does the health document') or diag $h->{body};
unlike($h->{body}, qr/\Q$PW\E/, '... no password in it');

# ---------------------------------------------------------- a wrong name
$since = $nginx->log_size;
$nginx->reload(http => site('127.0.0.1', $ca));
$r = get('/', cookie => "session=$tokens[2]");
is($r->{status}, 503, 'a wrong name: the session cannot be checked');
ok($nginx->wait_for_log(qr/server certificate for "localhost" (?:\(and 1 other name\) )?does not match host name "127\.0\.0\.1"/, 1, $since),
   '... the log says the name does not match');
($h, $doc) = $nginx->health;
like("@{ $doc->{errors} // [] }", qr/does not match host name/,
     '... and so does the health document') or diag $h->{body};
unlike($h->{body}, qr/\Q$PW\E/, '... no password in it');

unlike($nginx->error_log, qr/\Q$PW\E/, 'no password in the error log');
no_alerts($nginx);
done_testing;
